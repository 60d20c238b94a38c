//! Path globs of the allow-list: `*` any characters but `/`, `**` any characters (also `/`),
//! `?` one character but `/`; everything else literal.

/// Checks a glob; the message says what is wrong.
pub fn check(glob: &str) -> Result<(), String> {
    if glob.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if glob.contains("***") {
        return Err(format!("`{glob}`: `***` means nothing; use `**`"));
    }
    Ok(())
}

/// Whether `path` matches `glob`.
pub fn matches(glob: &str, path: &str) -> bool {
    fn m(g: &[u8], p: &[u8]) -> bool {
        match g.first() {
            None => p.is_empty(),
            Some(b'*') if g.get(1) == Some(&b'*') => {
                let rest = &g[2..];
                (0..=p.len()).any(|i| m(rest, &p[i..]))
            }
            Some(b'*') => {
                let rest = &g[1..];
                for i in 0..=p.len() {
                    if m(rest, &p[i..]) {
                        return true;
                    }
                    if i < p.len() && p[i] == b'/' {
                        return false;
                    }
                }
                false
            }
            Some(b'?') => !p.is_empty() && p[0] != b'/' && m(&g[1..], &p[1..]),
            Some(c) => p.first() == Some(c) && m(&g[1..], &p[1..]),
        }
    }
    m(glob.as_bytes(), path.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_stay_within_a_level_and_double_stars_cross() {
        let p = "plant/s1/a1/l1/press1/setpoint";
        assert!(matches(p, p));
        assert!(matches("plant/s1/*/l1/press*/setpoint", p));
        assert!(matches("plant/**/setpoint", p));
        assert!(matches("plant/**", p));
        assert!(matches("plant/s1/a1/l1/press?/setpoint", p));
        assert!(!matches("plant/*/setpoint", p));
        assert!(!matches("plant/s1/a1/l1/press1/setpoint2", p));
        assert!(!matches("plant/s1/a1/l1/press1", p));
        assert!(!matches("plant/s1/a1/l1/press1/*/x", p));
        assert!(!matches("plant/s1/a1/l1/press??/setpoint", p));
        assert!(check("").is_err() && check("a/***").is_err() && check("a/**").is_ok());
    }
}
