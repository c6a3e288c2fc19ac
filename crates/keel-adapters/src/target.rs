//! Which modules an [`AdapterConfig`] adapts, and with which rank and alpha,
//! by HF PEFT's rules (`peft.tuners.tuners_utils.check_target_module_exists`
//! and `get_pattern_key`), so a config means the same here and in PEFT.

use regex::Regex;

use crate::error::Error;
use keel_adapter_config::{AdapterConfig, TargetModules};

/// One module to adapt.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleSpec {
    pub name: String,
    pub r: usize,
    pub alpha: f64,
    /// The factor on `B(A(x))`.
    pub scale: f64,
}

/// The decoder layer a module belongs to: the number in `….layers.7.…`.
pub fn layer_index(name: &str) -> Option<usize> {
    let re = Regex::new(r"^.*?\.[^.]*\.(\d+)\.").expect("valid regex");
    re.captures(name)?.get(1)?.as_str().parse().ok()
}

/// PEFT's pattern rule: `key` matches the end of `name` at a dot boundary.
fn pattern_matches(key: &str, name: &str) -> bool {
    Regex::new(&format!(r"^(.*\.)?({key})$")).is_ok_and(|re| re.is_match(name))
}

fn is_target(cfg: &AdapterConfig, name: &str) -> bool {
    match &cfg.targets {
        TargetModules::Regex(re) => {
            Regex::new(&format!("^(?:{re})$")).is_ok_and(|re| re.is_match(name))
        }
        // As in PEFT, a full module name is taken as is; a suffix match is
        // then filtered by `layers_to_transform`.
        TargetModules::Names(names) => {
            names.iter().any(|t| name == t)
                || (names.iter().any(|t| name.ends_with(&format!(".{t}")))
                    && cfg.layers.as_ref().is_none_or(|layers| {
                        layer_index(name).is_some_and(|i| layers.contains(&i))
                    }))
        }
    }
}

/// Resolves `cfg` against the model's linear module names. A target that
/// matches nothing is an error listing what exists.
pub fn resolve_targets(
    module_names: &[String],
    cfg: &AdapterConfig,
) -> Result<Vec<ModuleSpec>, Error> {
    cfg.validate("adapter config")?;
    if !cfg.has_lora() {
        return Ok(Vec::new());
    }
    let specs: Vec<ModuleSpec> = module_names
        .iter()
        .filter(|name| is_target(cfg, name))
        .map(|name| {
            let r = cfg
                .rank_pattern
                .iter()
                .find(|(k, _)| pattern_matches(k, name))
                .map_or(cfg.r, |(_, r)| *r);
            let alpha = cfg
                .alpha_pattern
                .iter()
                .find(|(k, _)| pattern_matches(k, name))
                .map_or(cfg.alpha, |(_, a)| *a);
            ModuleSpec {
                name: name.clone(),
                r,
                alpha,
                scale: cfg.scaling.factor(alpha, r),
            }
        })
        .collect();
    let leaves = || {
        let mut leaves: Vec<&str> = module_names
            .iter()
            .filter_map(|n| n.rsplit('.').next())
            .collect();
        leaves.sort_unstable();
        leaves.dedup();
        leaves.join(", ")
    };
    if specs.is_empty() {
        let target = match &cfg.targets {
            TargetModules::Names(n) => n.join(", "),
            TargetModules::Regex(r) => r.clone(),
        };
        return Err(Error::NoMatch {
            target,
            available: leaves(),
        });
    }
    // Each listed name must match something: a typo beside a valid name
    // would otherwise go unnoticed.
    if let TargetModules::Names(names) = &cfg.targets
        && let Some(unused) = names.iter().find(|t| {
            !module_names
                .iter()
                .any(|n| n == *t || n.ends_with(&format!(".{t}")))
        })
    {
        return Err(Error::NoMatch {
            target: unused.clone(),
            available: leaves(),
        });
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_adapter_config::Scaling;

    fn names() -> Vec<String> {
        let mut v = Vec::new();
        for i in 0..3 {
            for m in ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"] {
                v.push(format!("model.layers.{i}.{m}"));
            }
        }
        v
    }

    #[test]
    fn leaf_names_layers_and_patterns() {
        let mut cfg = AdapterConfig::lora(4, 8.0, &["q_proj", "down_proj"]);
        cfg.layers = Some(vec![0, 2]);
        cfg.rank_pattern = vec![("down_proj".into(), 8)];
        cfg.alpha_pattern = vec![("layers.2.self_attn.q_proj".into(), 32.0)];
        let specs = resolve_targets(&names(), &cfg).unwrap();
        let got: Vec<(&str, usize, f64)> = specs
            .iter()
            .map(|s| (s.name.as_str(), s.r, s.scale))
            .collect();
        assert_eq!(
            got,
            [
                ("model.layers.0.self_attn.q_proj", 4, 2.0),
                ("model.layers.0.mlp.down_proj", 8, 1.0),
                ("model.layers.2.self_attn.q_proj", 4, 8.0),
                ("model.layers.2.mlp.down_proj", 8, 1.0),
            ]
        );
    }

    #[test]
    fn regex_must_match_the_whole_name() {
        let mut cfg = AdapterConfig::lora(8, 16.0, &[]);
        cfg.targets = TargetModules::Regex(r".*\.(q_proj|v_proj)".into());
        cfg.scaling = Scaling::Rs;
        let specs = resolve_targets(&names(), &cfg).unwrap();
        assert_eq!(specs.len(), 6);
        assert!((specs[0].scale - 16.0 / 8f64.sqrt()).abs() < 1e-12);
        cfg.targets = TargetModules::Regex("q_proj".into());
        assert!(resolve_targets(&names(), &cfg).is_err());
    }

    #[test]
    fn unknown_target_lists_what_exists() {
        let cfg = AdapterConfig::lora(4, 8.0, &["q_proj", "qproj"]);
        let err = resolve_targets(&names(), &cfg).unwrap_err().to_string();
        assert!(
            err.contains("`qproj`") && err.contains("down_proj, q_proj, v_proj"),
            "{err}"
        );
    }

    #[test]
    fn rank_zero_is_refused() {
        let cfg = AdapterConfig::lora(0, 8.0, &["q_proj"]);
        let err = resolve_targets(&names(), &cfg).unwrap_err().to_string();
        assert!(err.contains("`r`") && err.contains("at least 1"), "{err}");
    }
}
