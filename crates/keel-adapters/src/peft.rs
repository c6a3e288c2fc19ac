//! HF PEFT's adapter folder: `adapter_config.json` + `adapter_model.safetensors`.
//!
//! Tensors are `base_model.model.<module>.lora_A.weight` `[r, in]`,
//! `….lora_B.weight` `[out, r]` and, for DoRA,
//! `….lora_magnitude_vector` `[out]`. Reading ignores keys PEFT writes
//! that do not change the computation; writing emits only keys PEFT's own
//! `LoraConfig` knows, so `PeftModel.from_pretrained` loads the folder with
//! no warning. keel's base-model fingerprint rides in the safetensors
//! metadata, which PEFT ignores.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::{Value, json};

use crate::error::Error;
use crate::host;
use crate::linear::Linear;
use crate::lora::Adapter;
use crate::selective::SavedModule;
use crate::target::resolve_targets;
use keel_adapter_config::{AdapterConfig, Init, Scaling, TargetModules, Variant};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const PREFIX: &str = "base_model.model.";
/// safetensors metadata key for the fingerprint of the base model.
pub const BASE_FINGERPRINT_KEY: &str = "keel.base_fingerprint";

/// A JSON object read as ordered pairs: PEFT tries `rank_pattern` keys in
/// file order, and serde_json's default map would sort them.
fn ordered_pairs<'de, D, V>(de: D) -> Result<Vec<(String, V)>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Pairs<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> Visitor<'de> for Pairs<V> {
        type Value = Vec<(String, V)>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object or null")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(pair) = map.next_entry()? {
                out.push(pair);
            }
            Ok(out)
        }
    }
    de.deserialize_any(Pairs(std::marker::PhantomData))
}

/// The keys of PEFT's `LoraConfig` that keel reads.
#[derive(Debug, Deserialize)]
struct RawConfig {
    peft_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    lora_dropout: f64,
    target_modules: Option<Value>,
    layers_to_transform: Option<Value>,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    modules_to_save: Option<Value>,
    init_lora_weights: Option<Value>,
    #[serde(default, deserialize_with = "ordered_pairs")]
    rank_pattern: Vec<(String, usize)>,
    #[serde(default, deserialize_with = "ordered_pairs")]
    alpha_pattern: Vec<(String, f64)>,
    base_model_name_or_path: Option<String>,
}

fn parse_config(path: &Path) -> Result<(AdapterConfig, Option<String>), Error> {
    let text = std::fs::read_to_string(path).map_err(keel_fs::io(path))?;
    let file = path.display().to_string();
    let bad = |key: &str, reason: String| Error::Config {
        file: file.clone(),
        key: key.into(),
        reason,
    };
    let raw: RawConfig = serde_json::from_str(&text)
        .map_err(|e| bad("-", format!("not a PEFT LoRA config: {e}")))?;
    if let Some(t) = &raw.peft_type
        && t != "LORA"
    {
        return Err(bad(
            "peft_type",
            format!("{t:?} is not supported (only LORA)"),
        ));
    }
    if raw.fan_in_fan_out {
        return Err(bad(
            "fan_in_fan_out",
            "true is for GPT-2-style Conv1D layers; Llama-family models use false".into(),
        ));
    }
    if let Some(b) = raw.bias.as_deref().filter(|b| *b != "none") {
        return Err(bad(
            "bias",
            format!("{b:?} is not supported (only \"none\")"),
        ));
    }
    // A JSON list of module names, for `key`.
    let names = |items: &[Value], key: &str| -> Result<Vec<String>, Error> {
        items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .ok_or_else(|| bad(key, format!("{v} is not a string")))
            })
            .collect()
    };
    let modules_to_save = match raw.modules_to_save {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => names(&items, "modules_to_save")?,
        Some(other) => {
            return Err(bad(
                "modules_to_save",
                format!("{other}: expected a list of module names"),
            ));
        }
    };
    let targets = match raw.target_modules {
        Some(Value::String(re)) => TargetModules::Regex(re),
        Some(Value::Array(items)) => TargetModules::Names(names(&items, "target_modules")?),
        other => {
            return Err(bad(
                "target_modules",
                format!("{other:?}: expected a list of names or a regex"),
            ));
        }
    };
    let layers = match raw.layers_to_transform {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(vec![
            n.as_u64()
                .ok_or_else(|| bad("layers_to_transform", format!("{n}")))? as usize,
        ]),
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|v| {
                    v.as_u64().map(|i| i as usize).ok_or_else(|| {
                        bad("layers_to_transform", format!("{v} is not a layer index"))
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
        Some(other) => {
            return Err(bad(
                "layers_to_transform",
                format!("{other}: expected a layer index or a list"),
            ));
        }
    };
    let init = match raw.init_lora_weights {
        None | Some(Value::Bool(_)) | Some(Value::Null) => Init::Kaiming,
        Some(Value::String(s)) => match s.as_str() {
            "gaussian" => Init::Gaussian,
            "olora" => Init::Olora,
            "pissa" => Init::Pissa { niter: 16 },
            other => match other
                .strip_prefix("pissa_niter_")
                .and_then(|n| n.parse().ok())
            {
                Some(niter) => Init::Pissa { niter },
                None => {
                    return Err(bad(
                        "init_lora_weights",
                        format!("{other:?} is not supported"),
                    ));
                }
            },
        },
        Some(other) => return Err(bad("init_lora_weights", format!("{other}"))),
    };
    let config = AdapterConfig {
        variant: if raw.use_dora {
            Variant::Dora
        } else {
            Variant::Lora
        },
        r: raw.r,
        alpha: raw.lora_alpha,
        dropout: raw.lora_dropout,
        scaling: if raw.use_rslora {
            Scaling::Rs
        } else {
            Scaling::Standard
        },
        init,
        targets,
        layers,
        rank_pattern: raw.rank_pattern,
        alpha_pattern: raw.alpha_pattern,
        modules_to_save,
    };
    config.validate(&file)?;
    if !config.has_lora() && config.modules_to_save.is_empty() {
        return Err(bad(
            "target_modules",
            "names no module, and modules_to_save is empty: the adapter holds nothing".into(),
        ));
    }
    Ok((config, raw.base_model_name_or_path))
}

/// A host matrix: its shape and row-major values.
pub type Matrix = (Vec<usize>, Vec<f32>);

/// Weights of one adapted module, in keel's layout.
#[derive(Debug, Clone)]
pub struct ModuleWeights {
    /// `[in, r]`.
    pub a: Matrix,
    /// `[r, out]`.
    pub b: Matrix,
    pub magnitude: Option<Vec<f32>>,
}

/// An adapter folder read from disk.
#[derive(Debug, Clone)]
pub struct AdapterFile {
    pub dir: PathBuf,
    pub config: AdapterConfig,
    pub base_model: Option<String>,
    pub base_fingerprint: Option<String>,
    /// Module name → weights, in name order.
    pub modules: BTreeMap<String, ModuleWeights>,
    /// Modules trained in full (`modules_to_save`), by name.
    pub saved: BTreeMap<String, SavedModule>,
}

fn transpose(shape: &[usize], data: &[f32]) -> Matrix {
    (
        vec![shape[1], shape[0]],
        host::transpose(shape[0], shape[1], data),
    )
}

impl AdapterFile {
    pub fn read(dir: &Path) -> Result<Self, Error> {
        let (config, base_model) = parse_config(&dir.join(CONFIG_FILE))?;
        let path = dir.join(WEIGHTS_FILE);
        let bytes = std::fs::read(&path).map_err(keel_fs::io(&path))?;
        let bad = |tensor: &str, reason: String| Error::Tensor {
            file: path.clone(),
            tensor: tensor.into(),
            reason,
        };
        let (_, metadata) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad("-", format!("not a valid safetensors file: {e}")))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| bad("-", format!("not a valid safetensors file: {e}")))?;
        let base_fingerprint = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get(BASE_FINGERPRINT_KEY).cloned());

        /// lora_A, lora_B and the DoRA magnitude of one module, as found.
        type Parts = (Option<Matrix>, Option<Matrix>, Option<Vec<f32>>);
        let mut parts: BTreeMap<String, Parts> = BTreeMap::new();
        let mut saved: BTreeMap<String, (Option<Matrix>, Option<Vec<f32>>)> = BTreeMap::new();
        for (name, view) in st.tensors() {
            let rest = name
                .strip_prefix(PREFIX)
                .ok_or_else(|| bad(&name, format!("does not start with `{PREFIX}`")))?;
            let data = host::to_f32(view.dtype(), view.data()).map_err(|r| bad(&name, r))?;
            let shape = view.shape().to_vec();
            let (module, kind) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
                (m, 0)
            } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
                (m, 1)
            } else if let Some(m) = rest.strip_suffix(".lora_magnitude_vector") {
                (m, 2)
            } else if let Some((m, part)) = rest.rsplit_once('.')
                && (part == "weight" || part == "bias")
                && config
                    .modules_to_save
                    .iter()
                    .any(|e| m.ends_with(e.as_str()))
            {
                // PEFT stores a module in modules_to_save under its own name.
                let entry = saved.entry(m.to_string()).or_default();
                match part {
                    "weight" => entry.0 = Some((shape, data)),
                    _ => entry.1 = Some(data),
                }
                continue;
            } else {
                return Err(bad(
                    &name,
                    "is not a LoRA tensor (lora_A, lora_B or lora_magnitude_vector), nor a module the config lists in modules_to_save".into(),
                ));
            };
            let want_rank = if kind == 2 { 1 } else { 2 };
            if shape.len() != want_rank {
                return Err(bad(
                    &name,
                    format!("has shape {shape:?}, expected {want_rank} dimensions"),
                ));
            }
            let entry = parts.entry(module.to_string()).or_default();
            match kind {
                // PEFT's lora_A is [r, in] = Aᵀ; lora_B is [out, r] = Bᵀ.
                0 => entry.0 = Some(transpose(&shape, &data)),
                1 => entry.1 = Some(transpose(&shape, &data)),
                _ => entry.2 = Some(data),
            }
        }
        let mut modules = BTreeMap::new();
        for (module, (a, b, magnitude)) in parts {
            let (Some(a), Some(b)) = (a, b) else {
                return Err(bad(
                    &format!("{PREFIX}{module}"),
                    "needs both lora_A and lora_B".into(),
                ));
            };
            if a.0[1] != b.0[0] {
                return Err(bad(
                    &format!("{PREFIX}{module}"),
                    format!("lora_A rank {} differs from lora_B rank {}", a.0[1], b.0[0]),
                ));
            }
            if (config.variant == Variant::Dora) != magnitude.is_some() {
                return Err(bad(
                    &format!("{PREFIX}{module}.lora_magnitude_vector"),
                    "present exactly when use_dora is true".into(),
                ));
            }
            modules.insert(module, ModuleWeights { a, b, magnitude });
        }
        let saved = saved
            .into_iter()
            .map(|(module, (weight, bias))| {
                let (shape, weight) = weight.ok_or_else(|| {
                    bad(
                        &format!("{PREFIX}{module}.weight"),
                        "is missing (the module's bias is stored)".into(),
                    )
                })?;
                Ok((
                    module,
                    SavedModule {
                        shape,
                        weight,
                        bias,
                    },
                ))
            })
            .collect::<Result<_, Error>>()?;
        Ok(AdapterFile {
            dir: dir.to_path_buf(),
            config,
            base_model,
            base_fingerprint,
            modules,
            saved,
        })
    }

    /// Adapter `name` of `linears` and the modules trained in full, as a
    /// PEFT folder would hold them: factors on the original base (PiSSA and
    /// OLoRA's start put back) in keel's layout, and the config that says
    /// so. `dir` is empty until the adapter is written or read.
    pub fn capture(
        name: &str,
        cfg: &AdapterConfig,
        linears: &[(String, &Linear)],
        saved: &[(String, SavedModule)],
        base_model: &str,
        base_fingerprint: &str,
    ) -> Result<Self, Error> {
        let host = |t: Tensor<2>| -> Matrix {
            let dims = t.dims().to_vec();
            (dims, t.try_into_vec_as::<f32>().expect("float tensor"))
        };
        let mut modules = BTreeMap::new();
        for (module, layer) in linears {
            let Some(adapter) = layer.adapter(name) else {
                continue;
            };
            if adapter.merged.is_some() {
                return Err(Error::Module {
                    module: module.clone(),
                    reason: format!("adapter `{name}` is merged; unmerge it before export"),
                });
            }
            if cfg.moves_base() != adapter.initial.is_some() {
                return Err(Error::Module {
                    module: module.clone(),
                    reason: format!(
                        "adapter `{name}` was {} its start taken out of the base, but the config's init_lora_weights says otherwise",
                        if adapter.initial.is_some() {
                            "made with"
                        } else {
                            "made without"
                        }
                    ),
                });
            }
            let (a, b) = adapter.factors_on_original_base();
            let magnitude = adapter
                .magnitude
                .as_ref()
                .map(|m| m.val().try_into_vec_as::<f32>().expect("float tensor"));
            modules.insert(
                module.clone(),
                ModuleWeights {
                    a: host(a),
                    b: host(b),
                    magnitude,
                },
            );
        }
        if modules.is_empty() && saved.is_empty() {
            return Err(Error::Module {
                module: String::new(),
                reason: format!("no layer has an adapter named `{name}`"),
            });
        }
        Ok(AdapterFile {
            dir: PathBuf::new(),
            config: cfg.on_original_base(),
            base_model: Some(base_model.to_string()),
            base_fingerprint: Some(base_fingerprint.to_string()),
            modules,
            saved: saved.iter().cloned().collect(),
        })
    }

    /// Writes this adapter as a PEFT folder in `dir` (weights and config
    /// each through a temporary file and a rename). Returns the number of
    /// tensors written.
    pub fn write(&self, dir: &Path) -> Result<usize, Error> {
        let bytes = host::to_bytes;
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (module, w) in &self.modules {
            // PEFT's lora_A is [r, in] = Aᵀ; lora_B is [out, r] = Bᵀ.
            let (sa, da) = transpose(&w.a.0, &w.a.1);
            let (sb, db) = transpose(&w.b.0, &w.b.1);
            tensors.push((format!("{PREFIX}{module}.lora_A.weight"), sa, bytes(&da)));
            tensors.push((format!("{PREFIX}{module}.lora_B.weight"), sb, bytes(&db)));
            if let Some(m) = &w.magnitude {
                tensors.push((
                    format!("{PREFIX}{module}.lora_magnitude_vector"),
                    vec![m.len()],
                    bytes(m),
                ));
            }
        }
        for (module, m) in &self.saved {
            tensors.push((
                format!("{PREFIX}{module}.weight"),
                m.shape.clone(),
                bytes(&m.weight),
            ));
            if let Some(bias) = &m.bias {
                tensors.push((
                    format!("{PREFIX}{module}.bias"),
                    vec![bias.len()],
                    bytes(bias),
                ));
            }
        }
        let views = tensors.iter().map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).expect("sizes match"),
            )
        });
        let mut metadata: std::collections::HashMap<String, String> =
            [("format".to_string(), "pt".to_string())].into();
        if let Some(fingerprint) = &self.base_fingerprint {
            metadata.insert(BASE_FINGERPRINT_KEY.to_string(), fingerprint.clone());
        }
        let weights = dir.join(WEIGHTS_FILE);
        let tmp_weights = dir.join(format!(".{WEIGHTS_FILE}.tmp"));
        let serialized =
            safetensors::serialize(views, Some(metadata)).map_err(|e| Error::Tensor {
                file: tmp_weights.clone(),
                tensor: "-".into(),
                reason: e.to_string(),
            })?;
        keel_fs::write_synced(&tmp_weights, &host::sorted_header(serialized))?;
        let config = dir.join(CONFIG_FILE);
        let tmp_config = dir.join(format!(".{CONFIG_FILE}.tmp"));
        let base = self.base_model.as_deref().unwrap_or_default();
        let text = serde_json::to_string_pretty(&config_json(&self.config, base)).expect("JSON");
        keel_fs::write_synced(&tmp_config, text.as_bytes())?;
        std::fs::rename(&tmp_weights, &weights).map_err(keel_fs::io(&weights))?;
        std::fs::rename(&tmp_config, &config).map_err(keel_fs::io(&config))?;
        Ok(tensors.len())
    }

    /// Refuses an adapter whose recorded base fingerprint is not `base_fingerprint`.
    pub fn check_base(&self, base_fingerprint: &str) -> Result<(), Error> {
        match self
            .base_fingerprint
            .as_deref()
            .filter(|f| *f != base_fingerprint)
        {
            Some(recorded) => Err(Error::Tensor {
                file: self.dir.join(WEIGHTS_FILE),
                tensor: BASE_FINGERPRINT_KEY.into(),
                reason: format!(
                    "the adapter was made for another base model (fingerprint {recorded}; this model is {base_fingerprint})"
                ),
            }),
            None => Ok(()),
        }
    }

    /// Attaches this adapter as `name` to the model's linear layers, given by
    /// HF module name. The modules must be exactly those the config targets,
    /// their shapes must fit, and a recorded base fingerprint must equal
    /// `base_fingerprint`: otherwise the adapter was made for another base,
    /// and nothing is attached.
    pub fn attach(
        &self,
        name: &str,
        linears: &mut [(String, &mut Linear)],
        base_fingerprint: &str,
    ) -> Result<(), Error> {
        self.check_base(base_fingerprint)?;
        let names: Vec<String> = linears.iter().map(|(n, _)| n.clone()).collect();
        let specs = resolve_targets(&names, &self.config)?;
        let expected: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        let stored: Vec<&str> = self.modules.keys().map(String::as_str).collect();
        let mut sorted = expected.clone();
        sorted.sort_unstable();
        if sorted != stored {
            let missing: Vec<_> = sorted.iter().filter(|n| !stored.contains(n)).collect();
            let extra: Vec<_> = stored.iter().filter(|n| !sorted.contains(n)).collect();
            return Err(Error::Config {
                file: self.dir.display().to_string(),
                key: "target_modules".into(),
                reason: format!(
                    "the config targets modules the weights lack {missing:?}, or the weights hold modules the config does not target {extra:?}"
                ),
            });
        }
        let mut built = Vec::with_capacity(specs.len());
        for spec in &specs {
            let w = &self.modules[&spec.name];
            let (_, layer) = linears
                .iter()
                .find(|(n, _)| *n == spec.name)
                .expect("resolved from these names");
            let device = layer.weight.val().device();
            if w.a.0[1] != spec.r {
                return Err(Error::Module {
                    module: spec.name.clone(),
                    reason: format!("stored rank {} but the config implies {}", w.a.0[1], spec.r),
                });
            }
            if w.a.0[0] != layer.in_features() || w.b.0[1] != layer.out_features() {
                return Err(Error::Module {
                    module: spec.name.clone(),
                    reason: format!(
                        "adapter is for a [{} in, {} out] layer, this model's is [{} in, {} out]: the adapter was made for another base model",
                        w.a.0[0],
                        w.b.0[1],
                        layer.in_features(),
                        layer.out_features()
                    ),
                });
            }
            let tensor2 = |(shape, data): &Matrix, device: &Device| {
                Tensor::<2>::from_data(TensorData::new(data.clone(), [shape[0], shape[1]]), device)
            };
            let magnitude = w
                .magnitude
                .as_ref()
                .map(|m| Tensor::<1>::from_data(TensorData::new(m.clone(), [m.len()]), &device));
            built.push(Adapter::new(
                &spec.name,
                name,
                tensor2(&w.a, &device),
                tensor2(&w.b, &device),
                magnitude,
                spec.scale,
                self.config.dropout,
            ));
        }
        for (spec, adapter) in specs.iter().zip(built) {
            let (_, layer) = linears
                .iter_mut()
                .find(|(n, _)| *n == spec.name)
                .expect("resolved from these names");
            layer.add_adapter(adapter).map_err(|e| match e {
                Error::Module { reason, .. } => Error::Module {
                    module: spec.name.clone(),
                    reason,
                },
                other => other,
            })?;
        }
        Ok(())
    }

    /// Puts this file's values into the adapters named `name` that the
    /// model already has (a resumed run, initialised as at its start), so
    /// their parameter ids, and with them the optimizer state, are kept.
    /// For PiSSA and OLoRA the file holds `[A | A₀]`, `[B ; -B₀]` (see
    /// [`write`]): the first r columns and rows are the trained A and B.
    pub fn restore(&self, name: &str, linears: &mut [(String, &mut Linear)]) -> Result<(), Error> {
        let with: Vec<&str> = linears
            .iter()
            .filter(|(_, l)| l.adapter(name).is_some())
            .map(|(n, _)| n.as_str())
            .collect();
        let stored: Vec<&str> = self.modules.keys().map(String::as_str).collect();
        if with.len() != stored.len() || with.iter().any(|n| !self.modules.contains_key(*n)) {
            return Err(Error::Config {
                file: self.dir.display().to_string(),
                key: "target_modules".into(),
                reason: format!(
                    "holds modules {stored:?}, but the run adapts {with:?}: the recipe changed since this checkpoint"
                ),
            });
        }
        for (module, layer) in linears.iter_mut() {
            let Some(w) = self.modules.get(module.as_str()) else {
                continue;
            };
            let adapter = layer.adapter_mut(name).expect("checked above");
            let r = adapter.rank();
            if w.a.0[1] != adapter.exported_rank() || w.a.0[0] != adapter.a.dims()[0] {
                return Err(Error::Module {
                    module: module.clone(),
                    reason: format!(
                        "checkpoint holds A {:?}, the run's adapter needs rank {}",
                        w.a.0,
                        adapter.exported_rank()
                    ),
                });
            }
            let device = adapter.a.val().device();
            let matrix = |(shape, data): &Matrix| {
                Tensor::<2>::from_data(TensorData::new(data.clone(), [shape[0], shape[1]]), &device)
            };
            let a = matrix(&w.a).narrow(1, 0, r);
            let b = matrix(&w.b).narrow(0, 0, r);
            adapter.a = Param::initialized(adapter.a.id, a).set_require_grad(true);
            adapter.b = Param::initialized(adapter.b.id, b).set_require_grad(true);
            if let (Some(m), Some(values)) = (&mut adapter.magnitude, &w.magnitude) {
                let t = Tensor::<1>::from_data(
                    TensorData::new(values.clone(), [values.len()]),
                    &device,
                );
                *m = Param::initialized(m.id, t).set_require_grad(true);
            }
        }
        Ok(())
    }
}

/// `adapter_config.json` as PEFT 0.21 writes it, for `cfg`.
pub fn config_json(cfg: &AdapterConfig, base_model: &str) -> Value {
    let targets = match &cfg.targets {
        TargetModules::Names(n) => json!(n),
        TargetModules::Regex(r) => json!(r),
    };
    let pairs = |p: &[(String, Value)]| Value::Object(p.iter().cloned().collect());
    let rank: Vec<(String, Value)> = cfg
        .rank_pattern
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let alpha: Vec<(String, Value)> = cfg
        .alpha_pattern
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let init = match cfg.init {
        Init::Gaussian => json!("gaussian"),
        _ => json!(true),
    };
    json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": targets,
        "layers_to_transform": cfg.layers,
        "layers_pattern": null,
        "bias": "none",
        "use_rslora": cfg.scaling == Scaling::Rs,
        "use_dora": cfg.variant == Variant::Dora,
        "fan_in_fan_out": false,
        "init_lora_weights": init,
        "modules_to_save": (!cfg.modules_to_save.is_empty()).then_some(&cfg.modules_to_save),
        "rank_pattern": pairs(&rank),
        "alpha_pattern": pairs(&alpha),
        "inference_mode": true,
        "revision": null,
    })
}

/// Writes adapter `name` of `linears`, with the modules trained in full, as
/// a PEFT folder in `dir`: [`AdapterFile::capture`] then
/// [`AdapterFile::write`]. Returns the number of tensors written.
pub fn write(
    dir: &Path,
    name: &str,
    cfg: &AdapterConfig,
    linears: &[(String, &Linear)],
    saved: &[(String, SavedModule)],
    base_model: &str,
    base_fingerprint: &str,
) -> Result<usize, Error> {
    AdapterFile::capture(name, cfg, linears, saved, base_model, base_fingerprint)?.write(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_pattern_keeps_file_order() {
        let dir = std::env::temp_dir().join(format!("keel-peft-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(CONFIG_FILE);
        std::fs::write(&path, r#"{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["q_proj"],"rank_pattern":{"z":2,"a":3},"unknown_key":1}"#).unwrap();
        let (cfg, _) = parse_config(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            cfg.rank_pattern,
            vec![("z".to_string(), 2), ("a".to_string(), 3)]
        );
    }
}
