//! Selective-layer adapters: modules trained in full instead of through a
//! low-rank update (PEFT's `modules_to_save`; norms-only tuning, the top
//! layers, LISA's sampled layers are all sets of such modules). Which
//! modules, by PEFT's rule; what is stored for each, in HF's layout.

use crate::error::Error;

/// A module trained in full, as stored: its weight in HF's layout
/// (`[out, in]` for a projection, `[hidden]` for a norm) and its bias.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedModule {
    pub shape: Vec<usize>,
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
}

/// PEFT's `modules_to_save` rule (`_set_trainable`): a module is saved when
/// its name ends with an entry. Each entry must match some module of
/// `names` (otherwise the error lists what exists); returns the matches in
/// `names` order.
pub fn resolve_saved(names: &[String], entries: &[String]) -> Result<Vec<String>, Error> {
    if let Some(unused) = entries
        .iter()
        .find(|e| !names.iter().any(|n| n.ends_with(e.as_str())))
    {
        let mut leaves: Vec<&str> = names
            .iter()
            .map(|n| {
                n.trim_start_matches("model.layers.")
                    .trim_start_matches(|c: char| c.is_ascii_digit() || c == '.')
            })
            .collect();
        leaves.sort_unstable();
        leaves.dedup();
        return Err(Error::NoMatch {
            target: unused.clone(),
            available: format!(
                "{} (or a full name such as {})",
                leaves.join(", "),
                names[0]
            ),
        });
    }
    Ok(names
        .iter()
        .filter(|n| entries.iter().any(|e| n.ends_with(e.as_str())))
        .cloned()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_name_ends_and_typos_list_the_modules() {
        let names: Vec<String> = [
            "model.layers.0.input_layernorm",
            "model.layers.0.mlp.down_proj",
            "model.layers.1.input_layernorm",
            "model.layers.1.mlp.down_proj",
            "model.norm",
        ]
        .map(String::from)
        .to_vec();
        let got = resolve_saved(
            &names,
            &[
                "input_layernorm".into(),
                "model.layers.1.mlp.down_proj".into(),
            ],
        )
        .unwrap();
        assert_eq!(got, [names[0].clone(), names[2].clone(), names[3].clone()]);
        let err = resolve_saved(&names, &["input_layernorn".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("input_layernorn")
                && err.contains("mlp.down_proj")
                && err.contains("norm"),
            "{err}"
        );
    }
}
