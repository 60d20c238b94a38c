//! Routing rules: tag-path globs (`*` within a level, `**` across levels) to Kafka topics.

use super::config::RouteConfig;

/// Why `pattern` is not a usable glob, or None.
pub fn pattern_problem(pattern: &str) -> Option<String> {
    if pattern.is_empty() {
        return Some("empty pattern".into());
    }
    for level in pattern.split('/') {
        if level.contains("**") && level != "**" {
            return Some(format!("`{pattern}`: `**` must be a whole level"));
        }
    }
    None
}

/// Whether `path` matches the glob `pattern`.
pub fn matches(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').collect();
    let s: Vec<&str> = path.split('/').collect();
    match_levels(&p, &s)
}

fn match_levels(p: &[&str], s: &[&str]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((&"**", rest)) => (0..=s.len()).any(|k| match_levels(rest, &s[k..])),
        Some((first, rest)) => match s.split_first() {
            Some((level, srest)) => {
                match_level(first.as_bytes(), level.as_bytes()) && match_levels(rest, srest)
            }
            None => false,
        },
    }
}

/// `*` matches any run of characters within one level.
fn match_level(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|k| match_level(rest, &s[k..])),
        Some((c, rest)) => s.first() == Some(c) && match_level(rest, &s[1..]),
    }
}

/// The topics of every route `path` matches, each once, in route order.
pub fn topics_for(routes: &[RouteConfig], path: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in routes.iter().filter(|r| matches(&r.pattern, path)) {
        for t in &r.topics {
            if !out.contains(t) {
                out.push(t.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_levels() {
        let p = "plant/site1/area1/line1/press1/pressure";
        for yes in [
            "**",
            "plant/**",
            "plant/site1/**",
            "plant/*/*/*/*/pressure",
            "plant/**/pressure",
            "plant/**/press*/**",
            "plant/site1/area1/line1/press1/pressure/**",
            "plant/s*1/**",
        ] {
            assert!(matches(yes, p), "{yes}");
        }
        for no in [
            "plant/site2/**",
            "plant/*/pressure",
            "plant/**/alarm",
            "plant/site1",
            "*",
            "plant/site1/area1/line1/press1/pressure/x",
        ] {
            assert!(!matches(no, p), "{no}");
        }
        assert!(pattern_problem("plant/a**").is_some());
        assert!(pattern_problem("").is_some());
        assert!(pattern_problem("plant/**/x*").is_none());
    }

    #[test]
    fn a_path_gets_every_matching_routes_topics_once() {
        let routes = vec![
            RouteConfig {
                pattern: "plant/**".into(),
                topics: vec!["plant.telemetry".into()],
            },
            RouteConfig {
                pattern: "plant/**/alarm_*".into(),
                topics: vec!["plant.alarms".into(), "plant.telemetry".into()],
            },
            RouteConfig {
                pattern: "plant/site2/**".into(),
                topics: vec!["site2".into()],
            },
        ];
        assert_eq!(
            topics_for(&routes, "plant/site2/a/l/d/alarm_high"),
            ["plant.telemetry", "plant.alarms", "site2"]
        );
        assert_eq!(
            topics_for(&routes, "plant/site1/a/l/d/temp"),
            ["plant.telemetry"]
        );
        assert!(topics_for(&routes, "other/x").is_empty());
    }
}
