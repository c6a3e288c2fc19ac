//! Reading a recipe: TOML with file, line, key and did-you-mean in every
//! error, `--set` overrides, the checks, then the typed values and resolved
//! paths.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Problem};
use crate::locate::{KeyLines, line_of};
use crate::overrides::apply;
use crate::schema::*;

/// Adds a did-you-mean to serde's "unknown field `x`, expected one of ..."
/// and "unknown variant" messages.
fn with_suggestion(message: &str) -> String {
    let ticked: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    match ticked.split_first() {
        Some((unknown, expected)) if message.starts_with("unknown") && !expected.is_empty() => {
            let best = expected
                .iter()
                .min_by_key(|e| strsim::levenshtein(unknown, e))
                .expect("non-empty");
            if strsim::levenshtein(unknown, best) <= (best.len() / 2).max(2) {
                format!("{message}; did you mean `{best}`?")
            } else {
                message.to_string()
            }
        }
        _ => message.to_string(),
    }
}

/// A recipe path: `~/` is the home folder, a relative path is relative to
/// the recipe's folder.
fn resolve(recipe_dir: &Path, p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => recipe_dir.join(p),
    }
}

/// Deserializes TOML `text` (the contents of `path`) into any keel schema,
/// with recipe-grade errors: line, dotted key, did-you-mean.
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T, Error> {
    toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        let key = line
            .and_then(|l| KeyLines::of(text).key_at(l).map(str::to_string))
            .unwrap_or_else(|| "-".into());
        Error {
            file: path.to_path_buf(),
            problems: vec![Problem {
                line,
                key,
                message: with_suggestion(e.message().trim()),
            }],
        }
    })
}

impl Recipe {
    /// Reads, overrides (`section.key=value`), checks and resolves a recipe.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Recipe, Error> {
        let fail = |problems: Vec<Problem>| Error {
            file: path.to_path_buf(),
            problems,
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            fail(vec![Problem {
                line: None,
                key: "-".into(),
                message: e.to_string(),
            }])
        })?;
        Self::parse(&text, path, overrides)
    }

    /// As [`Recipe::load`], from text; `path` names the file and anchors relative paths.
    pub fn parse(text: &str, path: &Path, overrides: &[String]) -> Result<Recipe, Error> {
        let fail = |problems: Vec<Problem>| Error {
            file: path.to_path_buf(),
            problems,
        };
        // Parsed from the text first, so errors carry lines.
        let parsed: Recipe = parse_toml(text, path)?;
        let mut recipe = match overrides.is_empty() {
            true => parsed,
            false => {
                let mut table: toml::Table = toml::from_str(text).expect("parsed above");
                for o in overrides {
                    apply(&mut table, o).map_err(|message| {
                        fail(vec![Problem {
                            line: None,
                            key: format!("--set {o}"),
                            message,
                        }])
                    })?;
                }
                Recipe::deserialize(table).map_err(|e| {
                    let key = format!("--set {}", overrides.join(" --set "));
                    fail(vec![Problem {
                        line: None,
                        key,
                        message: with_suggestion(e.message().trim()),
                    }])
                })?
            }
        };
        let problems = recipe.problems();
        if !problems.is_empty() {
            let keys = KeyLines::of(text);
            let problems = problems
                .into_iter()
                .map(|(key, message)| Problem {
                    line: keys.line_of(&key),
                    key,
                    message,
                })
                .collect();
            return Err(fail(problems));
        }
        recipe.optim.length = match (recipe.optim.steps, recipe.optim.epochs) {
            (Some(steps), _) => Some(Length::Steps(steps)),
            (None, epochs) => epochs.map(Length::Epochs),
        };
        recipe.adapter.config = Some(recipe.adapter.to_config());
        let dir = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut recipe.model.path,
            &mut recipe.data.train,
            &mut recipe.output.dir,
        ] {
            *p = resolve(dir, p);
        }
        for p in [
            &mut recipe.data.eval,
            &mut recipe.alignment.reference,
            &mut recipe.alignment.safemerge_adapter,
            &mut recipe.alignment.replay,
            &mut recipe.alignment.anchors,
        ]
        .into_iter()
        .flatten()
        {
            *p = resolve(dir, p);
        }
        recipe.decide_alignment();
        Ok(recipe)
    }
}

impl Recipe {
    /// Decodes `[alignment]` into the methods the run applies: those named,
    /// none (`preset = "off"`), or the recommended preset's for this recipe.
    fn decide_alignment(&mut self) {
        let full = self.adapter.trains_full_modules();
        let low_rank = self.adapter.kind != AdapterKind::None;
        let al = &mut self.alignment;
        al.safe_lora = SafeLora::from_either(al.safe_lora_threshold, al.safe_lora_top_k);
        al.safemerge = al.safemerge_adapter.clone().map(|adapter| SafeMerge {
            adapter,
            threshold: al.safemerge_threshold.unwrap_or(SAFEMERGE_THRESHOLD),
            weight: al.safemerge_weight.unwrap_or(SAFEMERGE_WEIGHT),
        });
        al.anchor_set = al.anchors.clone().map(SafetySet::File);
        al.replay_set = al.replay.clone().map(SafetySet::File);
        al.applied = match (al.preset, al.named_methods().is_empty()) {
            (Some(Preset::Off), _) => Applied::Off,
            (_, false) => Applied::Named,
            (_, true) => Applied::Recommended,
        };
        if al.applied != Applied::Recommended {
            return;
        }
        // Anchors compare with the adapter switched off, which modules
        // trained in full cannot be: those replay keel's safety set instead.
        if full {
            al.replay_set = Some(SafetySet::Keel);
            al.replay_fraction = Some(RECOMMENDED_REPLAY_FRACTION);
        } else {
            al.anchor_set = Some(SafetySet::Keel);
            al.anchor_lambda = RECOMMENDED_ANCHOR_LAMBDA;
        }
        if al.reference.is_some() && low_rank {
            al.safe_lora = Some(SafeLora::Share(RECOMMENDED_SAFE_LORA_SHARE));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[model]
path = "model.gguf"

[adapter]
r = 8
alpha = 16
targets = ["q_proj", "v_proj"]

[data]
train = "train.jsonl"
format = "chat"
max_length = 256

[optim]
lr = 2e-4
epochs = 2
batch_size = 4

[output]
dir = "runs/x"
"#;

    fn err(text: &str, overrides: &[&str]) -> String {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        Recipe::parse(text, Path::new("recipes/r.toml"), &o)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn good_recipe_resolves_paths_and_defaults() {
        let r = Recipe::parse(GOOD, Path::new("recipes/r.toml"), &[]).unwrap();
        assert_eq!(r.model.path, Path::new("recipes/model.gguf"));
        assert_eq!(r.optim.schedule, Schedule::Cosine);
        assert_eq!((r.optim.grad_accum, r.optim.eps), (1, 1e-8));
    }

    #[test]
    fn adapter_keys_become_an_adapter_config() {
        use keel_adapter_config::{AdapterConfig, Init, Scaling, TargetModules, Variant};
        let o: Vec<String> = [
            "adapter.kind=\"dora\"",
            "adapter.scaling=\"rs\"",
            "adapter.init=\"gaussian\"",
            "adapter.dropout=0.05",
            "adapter.layers=[0, 2]",
            "adapter.rank_pattern={\"v_proj\" = 4, \"q_proj\" = 2}",
        ]
        .map(String::from)
        .to_vec();
        let r = Recipe::parse(GOOD, Path::new("r.toml"), &o).unwrap();
        let expected = AdapterConfig {
            variant: Variant::Dora,
            scaling: Scaling::Rs,
            init: Init::Gaussian,
            dropout: 0.05,
            layers: Some(vec![0, 2]),
            rank_pattern: vec![("q_proj".into(), 2), ("v_proj".into(), 4)],
            ..AdapterConfig::lora(8, 16.0, &["q_proj", "v_proj"])
        };
        assert_eq!(r.adapter.config(), &expected);

        let pissa = ["adapter.init=\"pissa\"", "adapter.pissa_niter=3"].map(String::from);
        let r = Recipe::parse(GOOD, Path::new("r.toml"), &pissa).unwrap();
        assert_eq!(r.adapter.config().init, Init::Pissa { niter: 3 });

        let regex = ["adapter.targets=[]", "adapter.target_regex=\".*proj\""].map(String::from);
        let r = Recipe::parse(GOOD, Path::new("r.toml"), &regex).unwrap();
        assert_eq!(
            r.adapter.config().targets,
            TargetModules::Regex(".*proj".into())
        );
    }

    /// `keep_dense` needs a base in blocks and names.
    #[test]
    fn keep_dense_needs_a_base_in_blocks() {
        let e = err(GOOD, &["model.keep_dense=[\"down_proj\"]"]);
        assert!(
            e.contains("model.keep_dense") && e.contains("dense already"),
            "{e}"
        );
        let e = err(
            GOOD,
            &["model.base_dtype=\"q4_k\"", "model.keep_dense=[\"\"]"],
        );
        assert!(
            e.contains("model.keep_dense") && e.contains("an empty module name"),
            "{e}"
        );
        let set = [
            "model.base_dtype=\"q4_k\"",
            "model.keep_dense=[\"down_proj\"]",
        ]
        .map(String::from);
        let r = Recipe::parse(GOOD, Path::new("r.toml"), &set).unwrap();
        assert_eq!(r.model.keep_dense, ["down_proj"]);
    }

    #[test]
    fn unknown_key_has_line_and_suggestion() {
        let text = GOOD.replace("lr = 2e-4", "lrr = 2e-4");
        let e = err(&text, &[]);
        assert!(
            e.contains("recipes/r.toml:16") && e.contains("did you mean `lr`?"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_names_the_key_and_line() {
        let e = err(&GOOD.replace("r = 8", "r = \"eight\""), &[]);
        assert!(e.contains(":6:") && e.contains("adapter.r"), "{e}");
    }

    /// `steps` or `epochs`, and a Safe LoRA threshold or top-k, come out
    /// of the parse as one typed value each.
    #[test]
    fn either_or_keys_are_decoded_once() {
        let parse = |text: &str, set: &[&str]| {
            let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
            Recipe::parse(text, Path::new("r.toml"), &set).unwrap()
        };
        let r = parse(GOOD, &[]);
        assert_eq!(
            (r.optim.length(), r.alignment.safe_lora),
            (Length::Epochs(2.0), None)
        );
        let r = parse(
            &GOOD.replace("epochs = 2", "steps = 7"),
            &["alignment.reference=ref", "alignment.safe_lora_top_k=3"],
        );
        assert_eq!(
            (r.optim.length(), r.alignment.safe_lora),
            (Length::Steps(7), Some(SafeLora::TopK(3)))
        );
    }

    /// No method named: the recommended preset, anchors on keel's set, and
    /// Safe LoRA too with a reference; `off` applies nothing; a method
    /// named applies just that.
    #[test]
    fn alignment_is_decided_once() {
        let parse = |set: &[&str]| {
            let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
            Recipe::parse(GOOD, Path::new("r.toml"), &set)
                .unwrap()
                .alignment
        };
        let al = parse(&[]);
        assert_eq!(
            (al.applied, al.anchor_set, al.anchor_lambda, al.safe_lora),
            (Applied::Recommended, Some(SafetySet::Keel), 1.0, None)
        );
        let al = parse(&["alignment.reference=ref"]);
        assert_eq!(al.safe_lora, Some(SafeLora::Share(0.2)));
        let al = parse(&["alignment.reference=ref", "alignment.preset=off"]);
        assert_eq!(
            (al.applied, al.anchor_set, al.safe_lora, al.replay_set),
            (Applied::Off, None, None, None)
        );
        let al = parse(&["alignment.constrained_sft=true"]);
        assert_eq!(
            (al.applied, al.anchor_set, al.constrained_sft),
            (Applied::Named, None, true)
        );
    }

    /// A comment after a section header leaves the keys under it found.
    #[test]
    fn keys_under_a_commented_header_keep_their_lines() {
        let text = GOOD.replace("[adapter]", "[adapter] # the LoRA");
        let e = err(&text.replace("r = 8", "r = \"eight\""), &[]);
        assert!(e.contains(":6:") && e.contains("adapter.r"), "{e}");
        let e = err(&text.replace("r = 8", "r = 0"), &[]);
        assert!(e.contains(":6:") && e.contains("adapter.r"), "{e}");
    }

    #[test]
    fn unknown_variant_is_suggested() {
        let e = err(&GOOD.replace("format = \"chat\"", "format = \"chta\""), &[]);
        assert!(e.contains("did you mean `chat`?"), "{e}");
    }

    #[test]
    fn impossible_values_are_all_reported_with_lines() {
        let e = err(
            &GOOD
                .replace("r = 8", "r = 0")
                .replace("lr = 2e-4", "lr = -1.0"),
            &[],
        );
        assert!(
            e.contains(":6: adapter.r: the rank must be at least 1"),
            "{e}"
        );
        assert!(e.contains(":16: optim.lr:"), "{e}");
    }

    #[test]
    fn overrides_apply_and_are_checked() {
        let o = vec!["optim.lr=1e-4".to_string(), "output.dir=runs/y".to_string()];
        let r = Recipe::parse(GOOD, Path::new("r.toml"), &o).unwrap();
        assert_eq!(
            (r.optim.lr, r.output.dir.as_path()),
            (1e-4, Path::new("runs/y"))
        );
        let e = err(GOOD, &["optim.lrr=1"]);
        assert!(
            e.contains("--set") && e.contains("did you mean `lr`?"),
            "{e}"
        );
        // One of two alternative keys replaces the other; in the file, both
        // are still an error.
        let o = ["optim.steps=16".to_string()];
        let r = Recipe::parse(GOOD, Path::new("r.toml"), &o).unwrap();
        assert_eq!(r.optim.length(), Length::Steps(16));
        let o = ["adapter.target_regex=\".*proj\"".to_string()];
        let r = Recipe::parse(GOOD, Path::new("r.toml"), &o).unwrap();
        assert!(r.adapter.target_regex.is_some() && r.adapter.targets.is_empty());
        let both = GOOD.replace("epochs = 2", "epochs = 2\nsteps = 16");
        assert!(err(&both, &[]).contains("give either `epochs` or `steps`"));
    }

    #[test]
    fn selective_keys_are_checked() {
        let e = err(GOOD, &["adapter.kind=\"none\""]);
        assert!(
            e.contains("adapter.kind") && e.contains("remove r, alpha and targets"),
            "{e}"
        );
        assert!(e.contains("needs modules to train in full"), "{e}");
        let e = err(GOOD, &["adapter.lisa_layers=2"]);
        assert!(
            e.contains("adapter.lisa_layers") && e.contains("kind = \"none\""),
            "{e}"
        );
        let e = err(
            GOOD,
            &["adapter.train_norms=true", "alignment.constrained_sft=true"],
        );
        assert!(e.contains("alignment.constrained_sft"), "{e}");
    }
}
