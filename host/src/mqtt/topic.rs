//! The topic spec of the reference architecture: `plant/<site>/<area>/<line>/<device>/<metric>`,
//! six levels, lowercase, never a wildcard.

/// Why a path is not a valid telemetry topic, or None when it is.
pub fn spec_violation(path: &str) -> Option<String> {
    let levels: Vec<&str> = path.split('/').collect();
    if levels.len() != 6 {
        return Some(format!(
            "`{path}` has {} levels; the spec is plant/<site>/<area>/<line>/<device>/<metric>",
            levels.len()
        ));
    }
    if levels[0] != "plant" {
        return Some(format!("`{path}` does not start with `plant/`"));
    }
    for (i, level) in levels.iter().enumerate() {
        let name = ["root", "site", "area", "line", "device", "metric"][i];
        if level.is_empty() {
            return Some(format!("`{path}`: the {name} level is empty"));
        }
        if let Some(c) = level
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-')))
        {
            let what = match c {
                '+' | '#' => "a wildcard",
                c if c.is_ascii_uppercase() => "an uppercase letter",
                _ => "a character outside [a-z0-9_-]",
            };
            return Some(format!(
                "`{path}`: the {name} level `{level}` has {what} ({c:?})"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::spec_violation;

    #[test]
    fn accepts_the_spec_and_names_what_is_wrong() {
        assert_eq!(
            spec_violation("plant/site1/area2/line3/press1/pressure"),
            None
        );
        assert_eq!(spec_violation("plant/s-1/a_2/l/d/m"), None);
        for (bad, says) in [
            ("plant/site1/area2/line3/press1", "5 levels"),
            ("plant/site1/area2/line3/press1/pressure/x", "7 levels"),
            ("site/site1/area2/line3/press1/pressure", "does not start"),
            ("plant/site1/Area2/line3/press1/pressure", "uppercase"),
            ("plant/site1/+/line3/press1/pressure", "wildcard"),
            ("plant/site1/#/line3/press1/pressure", "wildcard"),
            ("plant/site1//line3/press1/pressure", "area level is empty"),
            ("plant/site1/area 2/line3/press1/pressure", "outside"),
            ("Site1.Area1.Line1.Press1.Pressure", "1 levels"),
        ] {
            let v = spec_violation(bad).unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(v.contains(says), "{bad}: {v}");
        }
    }
}
