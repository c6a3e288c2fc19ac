//! The checks a recipe passes after it parses: every impossible value or
//! combination, reported all at once with its key.

use crate::schema::*;

impl Recipe {
    /// Every impossible value, as (dotted key, message).
    pub(crate) fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut check = |ok: bool, key: &str, message: String| {
            if !ok {
                out.push((key.to_string(), message));
            }
        };
        let m = &self.model;
        check(
            m.keep_dense.is_empty() || m.base_dtype.in_blocks(),
            "model.keep_dense",
            "names modules to keep dense beside a base in blocks (base_dtype gguf, q8_0, q4_k, ...); this base is dense already".into(),
        );
        check(
            m.keep_dense.iter().all(|n| !n.is_empty()),
            "model.keep_dense",
            "an empty module name".into(),
        );
        let a = &self.adapter;
        if a.kind == AdapterKind::None {
            check(
                a.r == 0 && a.alpha == 0.0 && a.targets.is_empty() && a.target_regex.is_none(),
                "adapter.kind",
                "\"none\" trains no low-rank adapter: remove r, alpha and targets".into(),
            );
            check(
                a.trains_full_modules(),
                "adapter.kind",
                "\"none\" needs modules to train in full: modules_to_save, train_norms, train_top_layers or lisa_layers".into(),
            );
        } else {
            check(a.r >= 1, "adapter.r", "the rank must be at least 1".into());
            check(
                a.alpha.is_finite() && a.alpha > 0.0,
                "adapter.alpha",
                format!("{} must be a positive number", a.alpha),
            );
            check(
                a.targets.is_empty() != a.target_regex.is_none(),
                "adapter.targets",
                "give either `targets` (module names) or `target_regex`, not both and not neither"
                    .into(),
            );
        }
        check(
            a.train_top_layers != Some(0),
            "adapter.train_top_layers",
            "must be at least 1".into(),
        );
        check(
            a.lisa_layers != Some(0),
            "adapter.lisa_layers",
            "must be at least 1".into(),
        );
        check(
            a.lisa_every >= 1,
            "adapter.lisa_every",
            "must be at least 1".into(),
        );
        check(
            a.lisa_layers.is_none() || a.kind == AdapterKind::None,
            "adapter.lisa_layers",
            "LISA trains whole layers: use it with kind = \"none\"".into(),
        );
        check(
            (0.0..1.0).contains(&a.dropout),
            "adapter.dropout",
            format!("{} is not in [0, 1)", a.dropout),
        );
        check(
            a.target_regex.is_none() || a.layers.is_none(),
            "adapter.layers",
            "needs `targets`, not `target_regex` (as in PEFT)".into(),
        );
        for (k, r) in &a.rank_pattern {
            check(
                *r >= 1,
                "adapter.rank_pattern",
                format!("`{k}` = {r}: the rank must be at least 1"),
            );
        }
        check(
            a.pissa_niter >= 1,
            "adapter.pissa_niter",
            "must be at least 1".into(),
        );
        let d = &self.data;
        check(
            d.max_length >= 2,
            "data.max_length",
            format!("{} is too short to train on (at least 2)", d.max_length),
        );
        check(
            !(d.eval.is_some() && d.eval_fraction.is_some()),
            "data.eval_fraction",
            "give `eval` or `eval_fraction`, not both".into(),
        );
        if let Some(f) = d.eval_fraction {
            check(
                f > 0.0 && f < 1.0,
                "data.eval_fraction",
                format!("{f} is not in (0, 1)"),
            );
        }
        let o = &self.optim;
        check(
            o.lr.is_finite() && o.lr > 0.0,
            "optim.lr",
            format!("{} must be a positive number", o.lr),
        );
        check(
            o.lora_plus_ratio.is_finite() && o.lora_plus_ratio > 0.0,
            "optim.lora_plus_ratio",
            format!("{} must be positive", o.lora_plus_ratio),
        );
        check(
            o.epochs.is_some() != o.steps.is_some(),
            "optim.epochs",
            "give either `epochs` or `steps`".into(),
        );
        if let Some(e) = o.epochs {
            check(
                e.is_finite() && e > 0.0,
                "optim.epochs",
                format!("{e} must be positive"),
            );
        }
        check(
            o.steps != Some(0),
            "optim.steps",
            "must be at least 1".into(),
        );
        check(
            o.batch_size >= 1,
            "optim.batch_size",
            "must be at least 1".into(),
        );
        check(
            o.grad_accum >= 1,
            "optim.grad_accum",
            "must be at least 1".into(),
        );
        if let Some(n) = o.max_grad_norm {
            check(
                n.is_finite() && n > 0.0,
                "optim.max_grad_norm",
                format!("{n} must be positive"),
            );
        }
        check(
            o.weight_decay >= 0.0,
            "optim.weight_decay",
            format!("{} must not be negative", o.weight_decay),
        );
        check(
            (0.0..1.0).contains(&o.beta1),
            "optim.beta1",
            format!("{} is not in [0, 1)", o.beta1),
        );
        check(
            (0.0..1.0).contains(&o.beta2),
            "optim.beta2",
            format!("{} is not in [0, 1)", o.beta2),
        );
        check(
            o.eps > 0.0,
            "optim.eps",
            format!("{} must be positive", o.eps),
        );
        check(
            self.eval.every != Some(0),
            "eval.every",
            "must be at least 1".into(),
        );
        check(
            self.output.save_every != Some(0),
            "output.save_every",
            "must be at least 1".into(),
        );
        let al = &self.alignment;
        let named = al.named_methods();
        check(
            al.preset.is_none() || named.is_empty(),
            "alignment.preset",
            match al.preset {
                Some(Preset::Off) => format!(
                    "\"off\" turns preservation off, but the recipe also names {}: remove one or the other",
                    named.join(", ")
                ),
                _ => format!(
                    "\"recommended\" chooses the methods itself, but the recipe also names {}: drop `preset` to apply only those",
                    named.join(", ")
                ),
            },
        );
        check(
            al.reference.is_some() || !al.needs_reference(),
            "alignment.reference",
            "Safe LoRA, SafeMERGE and AsFT need the adapter that aligned the base (`reference`)"
                .into(),
        );
        check(
            al.safemerge_adapter.is_some()
                || (al.safemerge_threshold.is_none() && al.safemerge_weight.is_none()),
            "alignment.safemerge_adapter",
            "`safemerge_threshold` and `safemerge_weight` tune SafeMERGE, which needs the safety LoRA to merge (`safemerge_adapter`)".into(),
        );
        check(
            al.safemerge_adapter.is_none()
                || (al.safe_lora_threshold.is_none() && al.safe_lora_top_k.is_none()),
            "alignment.safemerge_adapter",
            "Safe LoRA and SafeMERGE both rewrite the modules far from the alignment subspace: choose one".into(),
        );
        check(
            al.safemerge_threshold.is_none_or(SafeMerge::threshold_ok),
            "alignment.safemerge_threshold",
            "a cosine similarity: must be in [-1, 1]".into(),
        );
        check(
            al.safemerge_weight.is_none_or(SafeMerge::weight_ok),
            "alignment.safemerge_weight",
            "the safety LoRA's share of the merge: must be in (0, 1)".into(),
        );
        check(
            !(a.trains_full_modules() && (al.constrained_sft || al.anchors.is_some())),
            "alignment.constrained_sft",
            "constrained SFT and anchors compare with the model's adapter switched off, which modules trained in full cannot be: use a LoRA alone".into(),
        );
        check(
            !(a.kind == AdapterKind::None && (al.needs_reference() || al.exclude_safety_layers.is_some())),
            "alignment",
            "Safe LoRA, SafeMERGE, AsFT and safety-layer exclusion act on a low-rank adapter, and kind = \"none\" has none".into(),
        );
        check(
            al.safe_lora_threshold.is_none() || al.safe_lora_top_k.is_none(),
            "alignment.safe_lora_top_k",
            "give `safe_lora_threshold` or `safe_lora_top_k`, not both".into(),
        );
        check(
            al.safe_lora_threshold
                .is_none_or(|t| (-1.0..=1.0).contains(&t)),
            "alignment.safe_lora_threshold",
            "a cosine similarity: must be in [-1, 1]".into(),
        );
        check(
            al.asft_lambda.is_finite() && al.asft_lambda >= 0.0,
            "alignment.asft_lambda",
            format!("{} must be a number ≥ 0", al.asft_lambda),
        );
        check(
            al.anchor_lambda.is_finite() && al.anchor_lambda >= 0.0,
            "alignment.anchor_lambda",
            format!("{} must be a number ≥ 0", al.anchor_lambda),
        );
        check(
            al.anchors.is_some() == (al.anchor_lambda > 0.0),
            "alignment.anchor_lambda",
            "`anchors` and a positive `anchor_lambda` go together".into(),
        );
        check(
            al.replay.is_some() == al.replay_fraction.is_some(),
            "alignment.replay_fraction",
            "`replay` and `replay_fraction` go together".into(),
        );
        check(
            al.replay_fraction.is_none_or(|f| f > 0.0 && f < 1.0),
            "alignment.replay_fraction",
            "must be in (0, 1)".into(),
        );
        out
    }
}
