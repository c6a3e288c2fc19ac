//! Where a key is written in a TOML text, from the TOML parser's spans: the
//! line an error points at, and the key written on a line.

use toml::de::{DeTable, DeValue};

/// 1-based line of byte offset `at` in `text`.
pub(crate) fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// Every key of `text`, dotted (`adapter.r`; a `[section]` header is the
/// section's key), with the line it is written on, parents before their
/// children. Empty when the text does not parse.
fn keys(text: &str) -> Vec<(String, usize)> {
    fn walk(table: &DeTable, prefix: &str, text: &str, out: &mut Vec<(String, usize)>) {
        for (key, value) in table.iter() {
            let name = match prefix {
                "" => key.get_ref().to_string(),
                p => format!("{p}.{}", key.get_ref()),
            };
            out.push((name.clone(), line_of(text, key.span().start)));
            if let DeValue::Table(t) = value.get_ref() {
                walk(t, &name, text, out);
            }
        }
    }
    let mut out = Vec::new();
    if let Ok(root) = DeTable::parse(text) {
        walk(root.get_ref(), "", text, &mut out);
    }
    out
}

/// The dotted key written at 1-based `line` (the outermost, where an
/// inline table puts several on one line).
pub(crate) fn key_at_line(text: &str, line: usize) -> Option<String> {
    keys(text)
        .into_iter()
        .find(|(_, l)| *l == line)
        .map(|(k, _)| k)
}

/// The line where the dotted key is written, if it is.
pub(crate) fn line_of_key(text: &str, dotted: &str) -> Option<usize> {
    keys(text)
        .into_iter()
        .find(|(k, _)| k == dotted)
        .map(|(_, l)| l)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Comments, quoted and dotted keys, and inline tables do not move a
    /// key off its line (a text scan took `[adapter] # note` for a section
    /// named "adapter] # note").
    #[test]
    fn keys_are_found_where_the_parser_sees_them() {
        let text = "top = 1\n[adapter] # note\nr = 8 # rank\n\"alpha\" = 16\nx.y = 2\n[data]\nt = { a = 1 }\n";
        assert_eq!(line_of_key(text, "adapter.r"), Some(3));
        assert_eq!(line_of_key(text, "adapter.alpha"), Some(4));
        assert_eq!(line_of_key(text, "adapter.x.y"), Some(5));
        assert_eq!(line_of_key(text, "data.t.a"), Some(7));
        assert_eq!(line_of_key(text, "data.nope"), None);
        assert_eq!(key_at_line(text, 2).as_deref(), Some("adapter"));
        assert_eq!(key_at_line(text, 3).as_deref(), Some("adapter.r"));
        assert_eq!(key_at_line(text, 7).as_deref(), Some("data.t"));
        assert_eq!(key_at_line(text, 1).as_deref(), Some("top"));
    }
}
