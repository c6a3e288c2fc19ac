//! Safety-layer detection: the decoder layers whose residual stream best
//! separates harmful from harmless prompts, by the held-out AUROC of the
//! refusal direction (the probe suite's judge; Arditi et al. 2024), are
//! where the aligned model decides to refuse (cf. Li et al. 2024, "Safety
//! Layers in Aligned Large Language Models"). Keeping adapters off them is
//! a selective-layer adapter chosen by alignment evidence.

use keel_model::LoadedModel;
use keel_probes::{Expect, Suite};

use crate::Error;

/// One layer's separation of harmful from harmless prompts.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LayerSeparation {
    pub layer: usize,
    pub auroc: f64,
}

/// The `k` layers with the highest held-out AUROC (ties: the lower layer),
/// from the built-in suite's `refuse` and `answer` sets, `per_set` prompts
/// each, prefill only.
pub fn safety_layers(
    loaded: &LoadedModel,
    k: usize,
    per_set: usize,
) -> Result<Vec<LayerSeparation>, Error> {
    let mut suite = Suite::builtin();
    suite.generation = None;
    suite.margin = None;
    suite.kl = None;
    suite.sets.retain(|s| s.expect != Expect::Correct);
    for s in &mut suite.sets {
        s.limit = Some(per_set);
    }
    let sets = suite.read_sets()?;
    let side = keel_probes::probe(loaded, &suite, &sets, ("base", None), &mut |_, _| {})?;
    let mut layers: Vec<LayerSeparation> = side
        .report
        .direction_auroc
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(layer, auroc)| LayerSeparation { layer, auroc })
        .collect();
    layers.sort_by(|a, b| b.auroc.total_cmp(&a.auroc).then(a.layer.cmp(&b.layer)));
    layers.truncate(k);
    Ok(layers)
}
