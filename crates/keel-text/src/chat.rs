use minijinja::value::Serde;
use minijinja::{Environment, ErrorKind, Value, context};
use serde::Serialize;

use crate::error::Error;

/// One chat turn, as HF chat templates expect it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// Bounds the work one render may do: templates come from model files made
/// by strangers, and a loop must not hang keel. minijinja 3 charges fuel per
/// instruction and per 64 bytes a value or the output grows by, so this also
/// bounds memory (a string doubling in a loop stops near 300 MB). Real
/// templates use a few thousand units per message.
const FUEL: u64 = 5_000_000;

/// A model's Jinja chat template with the special tokens it refers to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    pub source: String,
    pub bos_token: String,
    pub eos_token: String,
}

impl ChatTemplate {
    /// Gemma 3's template (`google/gemma-3-*-it`), for Gemma files that carry
    /// none: the pretrained models share the instruct models' vocabulary,
    /// turn markers included. A turn ends at `<end_of_turn>`.
    pub fn gemma3() -> Self {
        ChatTemplate {
            source: include_str!("templates/gemma3.jinja").into(),
            bos_token: "<bos>".into(),
            eos_token: "<end_of_turn>".into(),
        }
    }

    /// Renders `messages`; `add_generation_prompt` appends the assistant
    /// header so the model answers next.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, Error> {
        let mut env = Environment::new();
        env.set_fuel(Some(FUEL));
        // HF templates call Python string methods (`.strip()`, `.startswith()`).
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template("chat", &self.source)
            .map_err(|e| Error::Template(e.to_string()))?;
        let tmpl = env.get_template("chat").expect("template was just added");
        tmpl.render(context! {
            messages => Value::from(Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        })
        .map_err(|e| Error::Template(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(source: &str) -> ChatTemplate {
        ChatTemplate {
            source: source.into(),
            bos_token: "<s>".into(),
            eos_token: "</s>".into(),
        }
    }

    #[test]
    fn renders_messages_and_python_methods() {
        let t = template(
            "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m['content'].strip() }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}",
        );
        let out = t.render(&[Message::new("user", "  hi ")], true).unwrap();
        assert_eq!(out, "<s>[user]hi[assistant]");
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = template("{{ raise_exception('roles must alternate') }}");
        let err = t.render(&[], false).unwrap_err().to_string();
        assert!(err.contains("roles must alternate"), "{err}");
    }

    #[test]
    fn endless_work_is_stopped() {
        let t = template(
            "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}",
        );
        let err = t.render(&[], false).unwrap_err().to_string();
        assert!(err.contains("fuel"), "{err}");
    }

    /// Work that is cheap in instructions but huge in bytes: a string that
    /// doubles each turn (2^33 bytes here). minijinja 2 built all 8 GB.
    #[test]
    fn runaway_growth_is_stopped() {
        let t = template(
            "{% set ns = namespace(s='x') %}{% for i in range(33) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
        );
        let err = t.render(&[], false).unwrap_err().to_string();
        assert!(err.contains("fuel"), "{err}");
    }

    /// Found by fuzzing (fuzz/regressions/chat_template): constant
    /// expressions were folded while the template compiled, outside the fuel
    /// budget, and a 63 MB repetition under a chain of subtractions was
    /// rebuilt at every level (24 s). minijinja 3 folds only small values, so
    /// these repetitions are charged at render time instead of rendering.
    #[test]
    fn huge_constants_are_charged_fuel() {
        let t = template(&"{{ '<INNST{' * 9096948 <= 58 }}".repeat(7));
        let err = t.render(&[], false).unwrap_err().to_string();
        assert!(err.contains("fuel"), "{err}");
    }
}
