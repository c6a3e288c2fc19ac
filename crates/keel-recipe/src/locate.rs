//! Where a key is written in a TOML text, from the TOML parser's spans: the
//! line an error points at, and the key written on a line.

use toml::de::{DeTable, DeValue};

/// 1-based line of byte offset `at` in `text`.
pub(crate) fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// Every key of a TOML text, dotted (`adapter.r`; a `[section]` header is
/// the section's key), with the line it is written on, parents before their
/// children; empty when the text does not parse. Parsed once, asked often.
pub(crate) struct KeyLines(Vec<(String, usize)>);

impl KeyLines {
    pub(crate) fn of(text: &str) -> Self {
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
        KeyLines(out)
    }

    /// The dotted key written at 1-based `line` (the outermost, where an
    /// inline table puts several on one line).
    pub(crate) fn key_at(&self, line: usize) -> Option<&str> {
        self.0
            .iter()
            .find(|(_, l)| *l == line)
            .map(|(k, _)| k.as_str())
    }

    /// The line where the dotted key is written, if it is.
    pub(crate) fn line_of(&self, dotted: &str) -> Option<usize> {
        self.0.iter().find(|(k, _)| k == dotted).map(|(_, l)| *l)
    }
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
        let keys = KeyLines::of(text);
        assert_eq!(keys.line_of("adapter.r"), Some(3));
        assert_eq!(keys.line_of("adapter.alpha"), Some(4));
        assert_eq!(keys.line_of("adapter.x.y"), Some(5));
        assert_eq!(keys.line_of("data.t.a"), Some(7));
        assert_eq!(keys.line_of("data.nope"), None);
        assert_eq!(keys.key_at(2), Some("adapter"));
        assert_eq!(keys.key_at(3), Some("adapter.r"));
        assert_eq!(keys.key_at(7), Some("data.t"));
        assert_eq!(keys.key_at(1), Some("top"));
    }
}
