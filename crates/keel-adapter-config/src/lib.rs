//! What to adapt and how: keel's adapter configuration, with HF PEFT's
//! meaning for every field it shares with `LoraConfig`. Its own crate, free
//! of any tensor library, so that the recipe can be parsed straight into
//! it and keel-adapters can build and write adapters from it.

/// A value no adapter can have: the file, the key and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}: key `{key}`: {reason}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub reason: String,
}

/// LoRA computes `s·B(A(x))`; DoRA also learns a per-output magnitude and
/// rescales the adapted weight's column norms to it (Liu et al. 2024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Variant {
    #[default]
    Lora,
    Dora,
}

/// The factor `s` on the low-rank update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scaling {
    /// `alpha / r` (Hu et al. 2021).
    #[default]
    Standard,
    /// `alpha / sqrt(r)`: rank-stabilised LoRA (Kalajdzievski 2023).
    Rs,
}

impl Scaling {
    pub fn factor(self, alpha: f64, r: usize) -> f64 {
        match self {
            Scaling::Standard => alpha / r as f64,
            Scaling::Rs => alpha / (r as f64).sqrt(),
        }
    }
}

/// How A and B start.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Init {
    /// PEFT's default: A kaiming-uniform, B zero (a fresh adapter is a no-op).
    #[default]
    Kaiming,
    /// A ~ N(0, 1/r), B zero.
    Gaussian,
    /// Principal singular vectors of W in A and B, the residual left in the
    /// base (Meng et al. 2024). `niter` subspace iterations.
    Pissa { niter: usize },
    /// Orthonormal init from W's QR factors, the residual left in the base
    /// (Büyükakyüz 2024).
    Olora,
}

/// Which modules: HF leaf names (`q_proj`, or a dotted suffix such as
/// `self_attn.q_proj`), or one regex that must match a whole module name.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetModules {
    Names(Vec<String>),
    Regex(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    pub variant: Variant,
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub scaling: Scaling,
    pub init: Init,
    pub targets: TargetModules,
    /// Only these decoder layers (PEFT `layers_to_transform`).
    pub layers: Option<Vec<usize>>,
    /// Per-module rank overrides, pattern → r, tried in order as PEFT does
    /// (the first pattern matching the end of a module name wins).
    pub rank_pattern: Vec<(String, usize)>,
    pub alpha_pattern: Vec<(String, f64)>,
    /// Modules trained in full beside the low-rank update (PEFT's
    /// `modules_to_save`): a module whose name ends with an entry.
    pub modules_to_save: Vec<String>,
}

impl AdapterConfig {
    /// A LoRA on the given leaf modules with PEFT's defaults otherwise.
    pub fn lora(r: usize, alpha: f64, targets: &[&str]) -> Self {
        AdapterConfig {
            variant: Variant::Lora,
            r,
            alpha,
            dropout: 0.0,
            scaling: Scaling::Standard,
            init: Init::Kaiming,
            targets: TargetModules::Names(targets.iter().map(|s| s.to_string()).collect()),
            layers: None,
            rank_pattern: Vec::new(),
            alpha_pattern: Vec::new(),
            modules_to_save: Vec::new(),
        }
    }

    /// Whether there is a low-rank part: a selective-layer adapter may
    /// only train modules in full (no target modules, rank 0).
    pub fn has_lora(&self) -> bool {
        !matches!(&self.targets, TargetModules::Names(n) if n.is_empty())
    }

    /// PiSSA and OLoRA take their starting update out of the base weights.
    pub fn moves_base(&self) -> bool {
        matches!(self.init, Init::Pissa { .. } | Init::Olora)
    }

    /// The configuration of the same adapter written onto the original
    /// base, as PEFT's `path_initial_model_for_weight_conversion` writes
    /// it: for PiSSA and OLoRA, twice the rank (`[A | A₀]`, `[B ; -B₀]`)
    /// with the scale kept, a plain init; others unchanged.
    pub fn on_original_base(&self) -> AdapterConfig {
        if !self.moves_base() {
            return self.clone();
        }
        // Keeps s: alpha/r doubles with r; alpha/sqrt(r) needs sqrt(2).
        let grow = match self.scaling {
            Scaling::Standard => 2.0,
            Scaling::Rs => std::f64::consts::SQRT_2,
        };
        AdapterConfig {
            r: 2 * self.r,
            alpha: self.alpha * grow,
            init: Init::Kaiming,
            rank_pattern: self
                .rank_pattern
                .iter()
                .map(|(k, r)| (k.clone(), 2 * r))
                .collect(),
            alpha_pattern: self
                .alpha_pattern
                .iter()
                .map(|(k, a)| (k.clone(), a * grow))
                .collect(),
            ..self.clone()
        }
    }

    /// Checks values no adapter can have; `source` names the file in errors.
    pub fn validate(&self, source: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: String| ConfigError {
            file: source.to_string(),
            key: key.to_string(),
            reason,
        };
        if !self.has_lora() {
            // Only modules trained in full; which ones, the trainer or the
            // adapter file says.
            return Ok(());
        }
        if self.r == 0 {
            return Err(bad("r", "the rank must be at least 1".into()));
        }
        if let Some((k, _)) = self.rank_pattern.iter().find(|(_, r)| *r == 0) {
            return Err(bad(
                &format!("rank_pattern.{k}"),
                "the rank must be at least 1".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(bad(
                "lora_dropout",
                format!("{} is not in [0, 1)", self.dropout),
            ));
        }
        if !self.alpha.is_finite() {
            return Err(bad(
                "lora_alpha",
                format!("{} is not a finite number", self.alpha),
            ));
        }
        if self.variant == Variant::Dora && self.moves_base() {
            return Err(bad(
                "init_lora_weights",
                "PiSSA and OLoRA cannot start a DoRA adapter: its magnitude would not survive the export onto the original base".into(),
            ));
        }
        if let TargetModules::Regex(re) = &self.targets {
            regex::Regex::new(re)
                .map_err(|e| bad("target_modules", format!("invalid regex: {e}")))?;
            if self.layers.is_some() {
                return Err(bad(
                    "layers_to_transform",
                    "needs target_modules as a list of names, not a regex (as in PEFT)".into(),
                ));
            }
        }
        let patterns = self.rank_pattern.iter().map(|p| &p.0);
        for key in patterns.chain(self.alpha_pattern.iter().map(|p| &p.0)) {
            regex::Regex::new(key).map_err(|e| bad(key, format!("invalid pattern: {e}")))?;
        }
        Ok(())
    }
}
