//! Environment-variable substitution in config text: `${NAME}`, `${NAME:-default}`, and
//! `$${` for a literal `${`. Secrets stay out of the file.

/// Substitutes variables; an unset variable without default is an error naming it and its line.
pub fn substitute(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, (usize, String)> {
    let mut out = String::with_capacity(text.len());
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos..];
            if let Some(stripped) = after.strip_prefix("$${") {
                out.push_str("${");
                rest = stripped;
            } else if let Some(inner) = after.strip_prefix("${") {
                let end = inner
                    .find('}')
                    .ok_or((n + 1, "unterminated `${` (no closing `}`)".to_string()))?;
                let expr = &inner[..end];
                let (name, default) = match expr.split_once(":-") {
                    Some((name, default)) => (name, Some(default)),
                    None => (expr, None),
                };
                let valid =
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err((
                        n + 1,
                        format!("`${{{expr}}}` is not a valid variable reference"),
                    ));
                }
                match (lookup(name), default) {
                    (Some(v), _) => out.push_str(&v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => {
                        return Err((
                            n + 1,
                            format!(
                                "environment variable `{name}` is not set (used as ${{{name}}})"
                            ),
                        ))
                    }
                }
                rest = &inner[end + 1..];
            } else {
                out.push('$');
                rest = &after[1..];
            }
        }
        out.push_str(rest);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::substitute;

    fn env(name: &str) -> Option<String> {
        (name == "PASS").then(|| "s3cret".to_string())
    }

    #[test]
    fn substitutes_defaults_and_escapes() {
        let text = "a = \"${PASS}\"\nb = \"${NOPE:-x}\"\nc = \"$${PASS} $5\"\n";
        assert_eq!(
            substitute(text, env).unwrap(),
            "a = \"s3cret\"\nb = \"x\"\nc = \"${PASS} $5\"\n"
        );
    }

    #[test]
    fn unset_variable_names_it_and_the_line() {
        let err = substitute("a = 1\nb = \"${DB_PASSWORD}\"\n", env).unwrap_err();
        assert_eq!(err.0, 2);
        assert!(err.1.contains("DB_PASSWORD"), "{}", err.1);
    }
}
