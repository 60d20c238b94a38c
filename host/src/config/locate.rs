//! Finds the line of a key path (`stages[1].limits.memory_mib`, `sources.plant.tags`) in TOML
//! text, so config errors found after parsing can still point at a line.

/// Line (1-based) where `path` is set, or where its nearest enclosing table starts.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let mut target = path.to_string();
    loop {
        if let Some(line) = exact_line(text, &target) {
            return Some(line);
        }
        let cut = target.rfind(['.', '['])?;
        target.truncate(cut);
        if target.is_empty() {
            return None;
        }
    }
}

fn exact_line(text: &str, target: &str) -> Option<usize> {
    let mut table = String::new();
    let mut array_counts: std::collections::HashMap<String, usize> = Default::default();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
            let name = name.trim();
            let name = match name.rsplit_once('.') {
                Some((parent, last)) => {
                    format!("{}.{}", resolve(parent, &array_counts), last.trim())
                }
                None => name.to_string(),
            };
            let count = array_counts.entry(name.clone()).or_insert(0);
            table = format!("{name}[{count}]");
            *count += 1;
            if table == target {
                return Some(n + 1);
            }
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            table = resolve(name.trim(), &array_counts);
            if table == target {
                return Some(n + 1);
            }
            continue;
        }
        if let Some((key, _)) = line.split_once('=') {
            let key = key.trim().trim_matches('"');
            let full = if table.is_empty() {
                key.to_string()
            } else {
                format!("{table}.{key}")
            };
            if full == target {
                return Some(n + 1);
            }
        }
    }
    None
}

/// `stages.limits` after two `[[stages]]` headers means `stages[1].limits`.
fn resolve(name: &str, arrays: &std::collections::HashMap<String, usize>) -> String {
    let mut out = String::new();
    for part in name.split('.') {
        let part = part.trim().trim_matches('"');
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(part);
        if let Some(count) = arrays.get(&out) {
            out.push_str(&format!("[{}]", count.saturating_sub(1)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::line_of;

    const TEXT: &str = "[engine]\ncpu_limit = \"epoch\"\n\n[sources.plant]\ntype = \"simulator\"\ntags = 0\n\n[[stages]]\nname = \"a\"\nplugin = \"a.wasm\"\n\n[[stages]]\nname = \"b\"\nplugin = \"b.wasm\"\n[stages.limits]\nmemory_mib = 0\n";

    #[test]
    fn finds_keys_in_tables_and_arrays_of_tables() {
        assert_eq!(line_of(TEXT, "engine.cpu_limit"), Some(2));
        assert_eq!(line_of(TEXT, "sources.plant.tags"), Some(6));
        assert_eq!(line_of(TEXT, "stages[1].plugin"), Some(14));
        assert_eq!(line_of(TEXT, "stages[1].limits.memory_mib"), Some(16));
        assert_eq!(line_of(TEXT, "stages[0].quarantine"), Some(8));
        assert_eq!(line_of(TEXT, "nothing.here"), None);
    }
}
