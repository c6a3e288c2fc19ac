//! The training loop.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::{Module, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{DType, Device, Element, Int, Tensor, TensorData};
use keel_adapters::peft::{self, AdapterFile};
use keel_adapters::rng::SplitMix64;
use keel_adapters::{
    AdapterConfig, Init, Scaling, TargetModules, Variant, init_adapter, resolve_targets,
};
use keel_data::{Batch, Batcher, Example, load_examples, mix_replay, pack, split_eval};
use keel_model::{DeviceChoice, Llama, ModelSource};
use keel_recipe::Recipe;
use keel_text::{ChatTemplate, Tokenizer};

use crate::checkpoint::{self, TrainState};
use crate::error::Error;
use crate::loss::{constrained_sft, response_betas, weighted_nll};
use crate::report::{self, RunReport};
use crate::schedule::lr_at;
use crate::selective::Selection;
use keel_align::{Subspace, asft, layers, safe_lora};
use keel_probes::judges::kl::token_kl;

/// Prompts per probe set used to find the safety layers.
const SAFETY_LAYER_PROMPTS: usize = 64;

/// The adapter's name inside the model while it trains.
const ADAPTER: &str = "default";
/// Set by Ctrl-C / SIGTERM; the loop checkpoints and returns at the next step.
static STOP: AtomicBool = AtomicBool::new(false);

/// How to run a recipe.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from the output folder's latest checkpoint.
    pub resume: bool,
    /// Replace a previous run in the output folder.
    pub overwrite: bool,
    /// Show a progress bar.
    pub progress: bool,
    /// Stop after this many optimizer steps in total, as an interruption
    /// would (a checkpoint is written): for tests of resume.
    pub stop_at: Option<usize>,
    /// Debugging the guard against non-finite values: make the loss, or the
    /// first trained parameter's gradient, NaN at this (1-based) step.
    pub debug_nan: Option<(usize, NanSite)>,
}

/// Where [`RunOptions::debug_nan`] puts its NaN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NanSite {
    Loss,
    Gradient,
}

/// The recipe's adapter section as an [`AdapterConfig`].
pub fn adapter_config(r: &Recipe) -> AdapterConfig {
    let a = &r.adapter;
    AdapterConfig {
        variant: match a.kind {
            keel_recipe::AdapterKind::Lora | keel_recipe::AdapterKind::None => Variant::Lora,
            keel_recipe::AdapterKind::Dora => Variant::Dora,
        },
        r: a.r,
        alpha: a.alpha,
        dropout: a.dropout,
        scaling: match a.scaling {
            keel_recipe::Scaling::Standard => Scaling::Standard,
            keel_recipe::Scaling::Rs => Scaling::Rs,
        },
        init: match a.init {
            keel_recipe::Init::Kaiming => Init::Kaiming,
            keel_recipe::Init::Gaussian => Init::Gaussian,
            keel_recipe::Init::Pissa => Init::Pissa {
                niter: a.pissa_niter,
            },
            keel_recipe::Init::Olora => Init::Olora,
        },
        // kind = "none" leaves both empty: no low-rank part.
        targets: match &a.target_regex {
            Some(re) => TargetModules::Regex(re.clone()),
            None => TargetModules::Names(a.targets.clone()),
        },
        layers: a.layers.clone(),
        rank_pattern: a
            .rank_pattern
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        alpha_pattern: a
            .alpha_pattern
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        // The modules trained in full are listed when the adapter is written.
        modules_to_save: Vec::new(),
    }
}

/// A trained parameter: its id, whether it is a matrix, whether it is
/// LoRA's B (LoRA+ gives B its own rate), and its name for error messages.
struct Trained {
    id: ParamId,
    matrix: bool,
    is_b: bool,
    name: String,
}

/// The parameters being trained: LoRA's and those of modules trained in full.
fn trainable(model: &mut Llama, selection: &Selection) -> Vec<Trained> {
    let mut out: Vec<Trained> = selection
        .param_ids(model)
        .into_iter()
        .map(|(id, matrix, name)| Trained {
            id,
            matrix,
            is_b: false,
            name,
        })
        .collect();
    for (module, l) in model.linears() {
        for a in l.adapters.iter().filter(|a| a.name == ADAPTER) {
            let mut push = |id, matrix, is_b, part: &str| {
                out.push(Trained {
                    id,
                    matrix,
                    is_b,
                    name: format!("{module}.{part}"),
                })
            };
            push(a.a.id, true, false, "lora_A");
            push(a.b.id, true, true, "lora_B");
            if let Some(m) = &a.magnitude {
                push(m.id, false, false, "lora_magnitude_vector");
            }
        }
    }
    out
}

/// Adds `from` into `acc`, parameter by parameter.
fn accumulate(acc: &mut GradientsParams, mut from: GradientsParams, params: &[Trained]) {
    for p in params {
        if p.matrix {
            if let Some(g) = from.remove::<2>(p.id) {
                let sum = match acc.remove::<2>(p.id) {
                    Some(a) => a + g,
                    None => g,
                };
                acc.register(p.id, sum);
            }
        } else if let Some(g) = from.remove::<1>(p.id) {
            let sum = match acc.remove::<1>(p.id) {
                Some(a) => a + g,
                None => g,
            };
            acc.register(p.id, sum);
        }
    }
}

/// The global L2 norm of the gradients, read to the host, and the first
/// parameter whose gradient is not finite.
fn grad_norm<'a>(grads: &GradientsParams, params: &'a [Trained]) -> (f64, Option<&'a str>) {
    let (mut sq, mut bad) = (0.0f64, None);
    for p in params {
        let s = if p.matrix {
            grads
                .get::<2>(p.id)
                .map(|g| g.square().sum().into_scalar::<f32>())
        } else {
            grads
                .get::<1>(p.id)
                .map(|g| g.square().sum().into_scalar::<f32>())
        }
        .unwrap_or(0.0) as f64;
        if !s.is_finite() && bad.is_none() {
            bad = Some(p.name.as_str());
        }
        sq += s;
    }
    (sq.sqrt(), bad)
}

/// How a step back-propagates: through the whole graph, or one decoder
/// block at a time (`model.activation_checkpointing`).
struct Backprop<'a> {
    device: &'a Device,
    params: &'a [Trained],
    checkpointed: bool,
}

impl Backprop<'_> {
    /// Back-propagates `objective(final hidden states at the batch's loss
    /// positions)`
    /// and adds its gradients to `acc`. With checkpointing, the device is
    /// reseeded from `seed` before each layer so a recomputed layer draws
    /// the dropout masks of its first pass.
    fn run(
        &self,
        model: &Llama,
        batch: &OnDevice,
        seed: u64,
        acc: &mut GradientsParams,
        objective: impl FnOnce(Tensor<3>) -> Tensor<1>,
    ) {
        let mut add = |g| accumulate(acc, GradientsParams::from_grads(g, model), self.params);
        if !self.checkpointed {
            return add(objective(batch.hidden(model)).backward());
        }
        model.backward_checkpointed(
            batch.inputs.clone(),
            |hidden| objective(batch.at(hidden)),
            |layer| {
                let mix = (layer as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
                self.device.seed(seed.rotate_left(17) ^ mix)
            },
            add,
        );
    }
}

/// Multiplies every gradient by `factor`; splits off B's (LoRA+).
fn scale_and_split(
    mut grads: GradientsParams,
    params: &[Trained],
    factor: f64,
) -> (GradientsParams, GradientsParams) {
    let (mut rest, mut b) = (GradientsParams::new(), GradientsParams::new());
    for p in params {
        let dest = if p.is_b { &mut b } else { &mut rest };
        if p.matrix {
            if let Some(g) = grads.remove::<2>(p.id) {
                dest.register(p.id, g.mul_scalar(factor));
            }
        } else if let Some(g) = grads.remove::<1>(p.id) {
            dest.register(p.id, g.mul_scalar(factor));
        }
    }
    (rest, b)
}

/// A batch on the device. The LM head and the loss see only the positions
/// that carry loss: on chat data that is the answers, a sixth of PubMedQA's
/// tokens, and the head over a 49k vocabulary is a fifth of SmolLM2's
/// FLOPs and most of its activation memory.
struct OnDevice {
    shape: [usize; 2],
    inputs: Tensor<2, Int>,
    /// Flattened positions with a loss weight; `None` when that is all of
    /// them (or none: then every weight is 0 and so is the loss).
    rows: Option<(Vec<usize>, Tensor<1, Int>)>,
    /// Targets and weights at those positions: `[1, n]`, or `[batch, seq]`.
    targets: Tensor<2, Int>,
    weights: Tensor<2>,
}

impl OnDevice {
    fn new(batch: &Batch, device: &Device) -> Self {
        let shape = [batch.batch, batch.seq];
        let idx: Vec<usize> = (0..batch.weights.len())
            .filter(|&i| batch.weights[i] > 0.0)
            .collect();
        let rows = (!idx.is_empty() && idx.len() < batch.weights.len()).then(|| {
            let ids = idx.iter().map(|&i| i as i64).collect::<Vec<_>>();
            let t = Tensor::from_data(TensorData::new(ids, [idx.len()]), device);
            (idx, t)
        });
        let positions = rows.as_ref().map(|(idx, _)| idx.as_slice());
        OnDevice {
            shape,
            inputs: Tensor::from_data(TensorData::new(batch.inputs.clone(), shape), device),
            targets: Tensor::from_data(at_positions(positions, &batch.targets, shape), device),
            weights: Tensor::from_data(at_positions(positions, &batch.weights, shape), device),
            rows,
        }
    }

    /// `values`, one per position of a `[batch, seq]` batch, at the loss positions.
    fn values(&self, values: &[f32], device: &Device) -> Tensor<2> {
        let positions = self.rows.as_ref().map(|(idx, _)| idx.as_slice());
        Tensor::from_data(at_positions(positions, values, self.shape), device)
    }

    /// Hidden states `[batch, seq, d]` at the loss positions.
    fn at(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.rows {
            None => hidden,
            Some((_, rows)) => {
                let [b, s, d] = hidden.dims();
                hidden
                    .reshape([b * s, d])
                    .select(0, rows.clone())
                    .unsqueeze_dim(0)
            }
        }
    }

    /// The model's final hidden states at the loss positions.
    fn hidden(&self, model: &Llama) -> Tensor<3> {
        self.at(model.forward_hidden(self.inputs.clone(), None))
    }

    /// `log p(target)` at the loss positions.
    fn log_probs(&self, model: &Llama) -> Tensor<2> {
        model.target_log_probs(self.hidden(model), self.targets.clone())
    }
}

/// `values` of a `[batch, seq]` batch at `positions` (flattened), as
/// `[1, n]`; all of them, as `shape`, without.
fn at_positions<T: Element>(
    positions: Option<&[usize]>,
    values: &[T],
    shape: [usize; 2],
) -> TensorData {
    match positions {
        None => TensorData::new(values.to_vec(), shape),
        Some(idx) => TensorData::new(idx.iter().map(|&i| values[i]).collect(), [1, idx.len()]),
    }
}

/// Mean loss over `examples`, without updating anything: a validation copy
/// of the model, off the autodiff graph and with dropout off.
fn evaluate(
    model: &Llama,
    examples: &[Example],
    batch_size: usize,
    pad: u32,
    device: &Device,
) -> f64 {
    let model = model.valid();
    let device = &device.clone().without_autodiff();
    let (mut total, mut count) = (0.0, 0usize);
    for chunk in examples.chunks(batch_size) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let batch = Batch::collate(&refs, pad);
        let b = OnDevice::new(&batch, device);
        let nll = weighted_nll(b.log_probs(&model), b.weights).detach();
        total += nll.into_scalar::<f32>() as f64;
        count += batch.target_tokens();
    }
    total / count.max(1) as f64
}

/// Refuses to mix two runs in one folder, and clears it for `--overwrite`.
/// What a run writes in its output folder.
const OUTPUTS: [&str; 6] = [
    "checkpoints",
    "adapter",
    "metrics.jsonl",
    "latest",
    "report.json",
    "alignment.json",
];

fn prepare_output(out: &Path, opts: &RunOptions) -> Result<(), Error> {
    // A symlink there would send keel's writes (and --overwrite's
    // deletions) outside the folder the user named.
    for name in OUTPUTS {
        let p = out.join(name);
        if p.symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
        {
            return Err(Error::Output {
                path: p,
                reason: "is a symbolic link: keel writes only inside the output folder, remove it"
                    .into(),
            });
        }
    }
    let has_run = out.join("metrics.jsonl").exists() || out.join("latest").exists();
    if has_run && !opts.resume && !opts.overwrite {
        return Err(Error::Output {
            path: out.to_path_buf(),
            reason:
                "already holds a run: pass --resume to continue it or --overwrite to replace it"
                    .into(),
        });
    }
    if opts.overwrite && !opts.resume {
        for name in OUTPUTS {
            let p = out.join(name);
            if p.is_dir() {
                std::fs::remove_dir_all(&p).map_err(keel_fs::io(&p))?;
            } else if p.exists() {
                std::fs::remove_file(&p).map_err(keel_fs::io(&p))?;
            }
        }
    }
    Ok(std::fs::create_dir_all(out).map_err(keel_fs::io(out))?)
}

/// Keeps the metrics lines up to `step`, so a resumed run neither repeats
/// nor loses steps.
fn trim_metrics(path: &Path, step: usize) -> Result<(), Error> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(keel_fs::io(path))?;
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    checkpoint::write_atomic(path, kept.as_bytes())
}

struct Optimizers {
    a: ModuleOptimizer,
    b: ModuleOptimizer,
}

impl Optimizers {
    fn new(r: &Recipe) -> Self {
        let o = &r.optim;
        let config = AdamWConfig::new()
            .with_beta_1(o.beta1 as f32)
            .with_beta_2(o.beta2 as f32)
            .with_epsilon(o.eps as f32)
            .with_weight_decay(o.weight_decay as f32);
        Optimizers {
            a: config.init(),
            b: config.init(),
        }
    }
}

/// Runs `recipe`: trains, evaluates, checkpoints, and writes the adapter to
/// `<output>/adapter` and the report to `<output>/report.json`.
/// `f` of the reference, the model with its adapter switched off (no
/// second copy of the weights), off the autodiff graph.
fn with_reference<const D: usize>(
    model: &mut Llama,
    f: impl FnOnce(&Llama) -> Tensor<D>,
) -> Tensor<D> {
    model.activate_adapters(&[]);
    let out = f(model).detach();
    model.activate_adapters(&[ADAPTER]);
    out
}

/// The recipe's training set (with any safety replay mixed in, packed if
/// asked) and its eval set.
fn load_data(
    recipe: &Recipe,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
) -> Result<(Vec<Example>, Vec<Example>), Error> {
    let d = &recipe.data;
    let load = |p: &Path| {
        load_examples(
            p,
            d.format,
            tokenizer,
            template,
            d.max_length,
            d.train_on_prompt,
        )
    };
    let mut train_set = load(&d.train)?.examples;
    let mut eval_set = match &d.eval {
        Some(p) => load(p)?.examples,
        None => Vec::new(),
    };
    if let Some(f) = d.eval_fraction {
        (train_set, eval_set) = split_eval(train_set, f, recipe.optim.seed);
    }
    let al = &recipe.alignment;
    if let (Some(p), Some(f)) = (&al.replay, al.replay_fraction) {
        let replay = load(p)?.examples;
        mix_replay(&mut train_set, replay, f, recipe.optim.seed);
    }
    if d.packing {
        train_set = pack(train_set, d.max_length);
    }
    Ok((train_set, eval_set))
}

/// The eval loss of the recipe's model with the adapter in `adapter` (a
/// PEFT folder) on the recipe's eval set: what training reports, for an
/// adapter made another way (a post-hoc projection, say).
pub fn eval_adapter(recipe: &Recipe, adapter: &Path) -> Result<f64, Error> {
    let device = device_of(recipe)?;
    let mut loaded =
        ModelSource::open(&recipe.model.path)?.load_as(&device, base_dtype_of(recipe))?;
    loaded.attach_adapter(adapter, ADAPTER)?;
    let (_, eval_set) = load_data(recipe, loaded.tokenizer()?, loaded.chat_template.as_ref())?;
    if eval_set.is_empty() {
        return Err(Error::Output {
            path: recipe.data.train.clone(),
            reason: "the recipe has no eval set (`data.eval` or `data.eval_fraction`)".into(),
        });
    }
    let pad = loaded.config.eos_token_ids.first().copied().unwrap_or(0);
    Ok(evaluate(
        &loaded.model,
        &eval_set,
        recipe.optim.batch_size,
        pad,
        &device,
    ))
}

fn device_of(recipe: &Recipe) -> Result<Device, Error> {
    let choice = match recipe.model.device {
        keel_recipe::Device::Flex => DeviceChoice::Flex,
        keel_recipe::Device::Wgpu => DeviceChoice::Wgpu,
        keel_recipe::Device::Ndarray => DeviceChoice::Ndarray,
    };
    Ok(choice.device()?)
}

fn base_dtype_of(recipe: &Recipe) -> DType {
    match recipe.model.base_dtype {
        keel_recipe::Dtype::F32 => DType::F32,
        keel_recipe::Dtype::F16 => DType::F16,
        keel_recipe::Dtype::Bf16 => DType::BF16,
    }
}

pub fn train(recipe: &Recipe, opts: &RunOptions) -> Result<RunReport, Error> {
    let out = recipe.output.dir.clone();
    prepare_output(&out, opts)?;
    let started = Instant::now();
    let (cpu0, rapl0) = (report::cpu_seconds(), report::rapl_joules());
    // A second registration (several runs in one process) keeps the first.
    let _ = ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst));
    STOP.store(false, Ordering::SeqCst);

    let device = device_of(recipe)?.autodiff();
    let loaded = ModelSource::open(&recipe.model.path)?.load_as(&device, base_dtype_of(recipe))?;
    let tokenizer = loaded.tokenizer()?.clone();
    let template = loaded.chat_template.clone();
    let pad = loaded.config.eos_token_ids.first().copied().unwrap_or(0);
    let mut cfg = adapter_config(recipe);
    let al = &recipe.alignment;
    let safety_layers = match al.exclude_safety_layers {
        Some(k) => {
            let found = layers::safety_layers(&loaded, k, SAFETY_LAYER_PROMPTS)?;
            let all = cfg
                .layers
                .clone()
                .unwrap_or_else(|| (0..loaded.model.layers.len()).collect());
            cfg.layers = Some(
                all.into_iter()
                    .filter(|l| !found.iter().any(|f| f.layer == *l))
                    .collect(),
            );
            found
        }
        None => Vec::new(),
    };
    let mut model = loaded.model;
    let fingerprint = model.fingerprint();
    let base_name = recipe.model.path.display().to_string();

    let (train_set, eval_set) = load_data(recipe, &tokenizer, template.as_ref())?;
    let mut anchors = match &al.anchors {
        Some(p) => {
            load_examples(
                p,
                recipe.data.format,
                &tokenizer,
                template.as_ref(),
                recipe.data.max_length,
                false,
            )?
            .examples
        }
        None => Vec::new(),
    };
    keel_data::shuffle(&mut anchors, recipe.optim.seed ^ 0xA4C4_0125);
    let subspace = match &al.reference {
        Some(dir) => Some(Subspace::from_adapter(&AdapterFile::read(dir)?, &device)?),
        None => None,
    };
    let o = &recipe.optim;
    let mut batcher = Batcher::new(train_set.len(), o.batch_size, o.seed);
    let total_steps = match (o.steps, o.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => ((e * batcher.batches_per_epoch() as f64) / o.grad_accum as f64)
            .ceil()
            .max(1.0) as usize,
        (None, None) => unreachable!("the recipe check requires steps or epochs"),
    };

    // Adapter and optimizer state: fresh, or from the latest checkpoint.
    let mut optims = Optimizers::new(recipe);
    let mut state = TrainState {
        step: 0,
        epoch: 0,
        pos: 0,
        tokens: 0,
        elapsed_s: 0.0,
    };
    let resumed = if opts.resume {
        checkpoint::latest(&out)?
    } else {
        None
    };
    // A resumed run starts as a fresh one (PiSSA/OLoRA also move the same
    // part out of the base again), then takes the trained values.
    let names: Vec<String> = model.linears().into_iter().map(|(n, _)| n).collect();
    let specs = resolve_targets(&names, &cfg)?;
    let mut rng = SplitMix64(o.seed);
    for (name, layer) in model.linears_mut() {
        if let Some(spec) = specs.iter().find(|s| s.name == name) {
            init_adapter(layer, ADAPTER, spec, &cfg, &mut rng)?;
        }
    }
    let mut selection = Selection::new(recipe, &mut model, &specs)?;
    if let Some(dir) = &resumed {
        state = checkpoint::read_state(dir)?;
        let file = AdapterFile::read(dir)?;
        file.check_base(&fingerprint)?;
        file.restore(ADAPTER, &mut model.linears_mut())?;
        model.load_saved(&file)?;
        selection.touched.extend(file.saved.keys().cloned());
        let bad = |reason: String| Error::Checkpoint {
            path: dir.clone(),
            reason,
        };
        optims.a = optims
            .a
            .load(dir.join(checkpoint::OPTIM_A))
            .map_err(|e| bad(format!("{e:?}")))?;
        optims.b = optims
            .b
            .load(dir.join(checkpoint::OPTIM_B))
            .map_err(|e| bad(format!("{e:?}")))?;
        batcher = Batcher::resume(
            train_set.len(),
            o.batch_size,
            o.seed,
            state.epoch,
            state.pos,
        );
    }
    selection.update(&mut model, state.step);
    let mut params = trainable(&mut model, &selection);
    let trainable_params: usize = selection.num_params(&mut model)
        + model
            .linears()
            .iter()
            .flat_map(|(_, l)| l.adapters.iter())
            .map(|a| {
                a.a.num_params()
                    + a.b.num_params()
                    + a.magnitude.as_ref().map_or(0, |m| m.num_params())
            })
            .sum::<usize>();
    let metrics_path = out.join("metrics.jsonl");
    trim_metrics(&metrics_path, state.step)?;
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(keel_fs::io(&metrics_path))?;
    let mut log = |v: serde_json::Value| -> Result<(), Error> {
        writeln!(metrics, "{v}")
            .and_then(|()| metrics.flush())
            .map_err(keel_fs::io(&metrics_path))?;
        Ok(())
    };

    let write_adapter =
        |dir: &Path, model: &mut Llama, touched: &BTreeSet<String>| -> Result<usize, Error> {
            let saved_names: Vec<String> = touched.iter().cloned().collect();
            let saved = model.saved_modules(&saved_names);
            let cfg = AdapterConfig {
                modules_to_save: saved_names,
                ..cfg.clone()
            };
            Ok(peft::write(
                dir,
                ADAPTER,
                &cfg,
                &model.linears(),
                &saved,
                &base_name,
                &fingerprint,
            )?)
        };
    let save = |model: &mut Llama,
                touched: &BTreeSet<String>,
                optims: &Optimizers,
                state: &TrainState|
     -> Result<PathBuf, Error> {
        checkpoint::save(&out, state, |dir| {
            write_adapter(dir, model, touched)?;
            let bytes = |o: &ModuleOptimizer, name: &str| -> Result<(), Error> {
                let b = o.into_bytes().map_err(|e| Error::Checkpoint {
                    path: dir.join(name),
                    reason: format!("{e:?}"),
                })?;
                checkpoint::write_atomic(&dir.join(name), &b)
            };
            bytes(&optims.a, checkpoint::OPTIM_A)?;
            bytes(&optims.b, checkpoint::OPTIM_B)
        })
    };

    let bar = opts.progress.then(|| {
        let bar = indicatif::ProgressBar::new(total_steps as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps | {msg} | ETA {eta}",
            )
            .expect("valid template"),
        );
        bar.set_position(state.step as u64);
        bar
    });
    let mut last_good = resumed.clone();
    let (mut last_loss, mut eval_loss) = (None, None);
    let run_start_tokens = state.tokens;
    let stop_at = opts.stop_at.unwrap_or(usize::MAX).min(total_steps);
    let mut stopped_early = false;

    while state.step < stop_at {
        let step_start = Instant::now();
        if selection.new_period(state.step) {
            optims = Optimizers::new(recipe);
        }
        if selection.update(&mut model, state.step) {
            params = trainable(&mut model, &selection);
        }
        // Reseeding per step makes dropout masks a function of the step:
        // a resumed run draws the same ones.
        let step_seed = o.seed ^ (state.step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        device.seed(step_seed);
        let micro: Vec<Batch> = (0..o.grad_accum)
            .map(|_| {
                let idx = batcher.next_indices();
                let refs: Vec<&Example> = idx.iter().map(|&i| &train_set[i]).collect();
                Batch::collate(&refs, pad)
            })
            .collect();
        let targets_total: usize = micro.iter().map(Batch::target_tokens).sum::<usize>().max(1);
        let mut grads = GradientsParams::new();
        let (mut loss_sum, mut penalty_sum) = (0.0f64, 0.0f64);
        let backprop = Backprop {
            device: &device,
            params: &params,
            checkpointed: recipe.model.activation_checkpointing,
        };
        for (m, batch) in micro.iter().enumerate() {
            let b = OnDevice::new(batch, &device);
            // The reference for constrained SFT is the same model with the
            // adapter off: no second copy of the weights.
            let reference = al
                .constrained_sft
                .then(|| with_reference(&mut model, |m| b.log_probs(m)));
            let mut nll = None;
            backprop.run(&model, &b, step_seed ^ m as u64, &mut grads, |hidden| {
                let log_p = model.target_log_probs(hidden, b.targets.clone());
                let n =
                    weighted_nll(log_p.clone(), b.weights.clone()).div_scalar(targets_total as f64);
                nll = Some(n.clone().detach());
                match reference {
                    Some(r) => {
                        let betas = b.values(&response_betas(&batch.weights, batch.seq), &device);
                        constrained_sft(log_p, r, betas, b.weights.clone())
                            .div_scalar(targets_total as f64)
                    }
                    None => n,
                }
            });
            loss_sum += nll.expect("the objective ran").into_scalar::<f32>() as f64;
            let penalty = subspace
                .as_ref()
                .filter(|_| al.asft_lambda > 0.0)
                .and_then(|s| asft::penalty(&model.linears(), ADAPTER, s))
                .map(|p| p.mul_scalar(al.asft_lambda / o.grad_accum as f64));
            if let Some(p) = penalty {
                accumulate(
                    &mut grads,
                    GradientsParams::from_grads(p.backward(), &model),
                    &params,
                );
                penalty_sum += p.into_scalar::<f32>() as f64;
            }
        }
        let mut anchor_kl = None;
        if !anchors.is_empty() {
            // The step's anchors, a function of the step so resume agrees.
            let refs: Vec<&Example> = (0..o.batch_size)
                .map(|i| &anchors[(state.step * o.batch_size + i) % anchors.len()])
                .collect();
            let batch = Batch::collate(&refs, pad);
            let b = OnDevice::new(&batch, &device);
            let reference = with_reference(&mut model, |m| m.logits(b.hidden(m)));
            let mut kl = None;
            let seed = step_seed ^ micro.len() as u64;
            backprop.run(&model, &b, seed, &mut grads, |hidden| {
                let k = token_kl(reference, model.logits(hidden))
                    .mul(b.weights.clone())
                    .sum()
                    .div_scalar(batch.target_tokens().max(1) as f64);
                kl = Some(k.clone().detach());
                k.mul_scalar(al.anchor_lambda)
            });
            anchor_kl = Some(kl.expect("the objective ran").into_scalar::<f32>() as f64);
        }
        match opts.debug_nan {
            Some((step, NanSite::Loss)) if step == state.step + 1 => loss_sum = f64::NAN,
            Some((step, NanSite::Gradient)) if step == state.step + 1 => {
                let p = &params[0];
                if p.matrix {
                    let g = grads.remove::<2>(p.id).expect("a gradient");
                    grads.register(p.id, g.mul_scalar(f64::NAN));
                } else {
                    let g = grads.remove::<1>(p.id).expect("a gradient");
                    grads.register(p.id, g.mul_scalar(f64::NAN));
                }
            }
            _ => {}
        }
        let (norm, bad_grad) = grad_norm(&grads, &params);
        let bad = if !loss_sum.is_finite() {
            Some(("loss".to_string(), loss_sum))
        } else {
            bad_grad.map(|name| (format!("the gradient of `{name}`"), norm))
        };
        if let Some((what, value)) = bad {
            return Err(Error::NotFinite {
                step: state.step + 1,
                what,
                value,
                kept: last_good,
            });
        }
        let clip = match o.max_grad_norm {
            Some(max) if norm > max => max / norm,
            _ => 1.0,
        };
        let (rest, b) = scale_and_split(grads, &params, clip);
        let lr = lr_at(state.step, total_steps, o.warmup_steps, o.lr, o.schedule);
        model = optims.a.step(lr, model, rest);
        model = optims.b.step(lr * o.lora_plus_ratio, model, b);

        state.step += 1;
        state.tokens += micro.iter().map(|b| (b.batch * b.seq) as u64).sum::<u64>();
        state.epoch = batcher.epoch;
        state.pos = batcher.pos;
        let step_s = step_start.elapsed().as_secs_f64();
        state.elapsed_s += step_s;
        let tok_s =
            (state.tokens - run_start_tokens) as f64 / started.elapsed().as_secs_f64().max(1e-9);
        last_loss = Some(loss_sum);
        let mut row = serde_json::json!({"step": state.step, "loss": loss_sum, "lr": lr,
            "grad_norm": norm, "tokens": state.tokens, "tokens_per_s": tok_s, "epoch": state.epoch,
            "step_s": step_s, "rss_bytes": report::rss_bytes(), "peak_rss_bytes": report::peak_rss_bytes()});
        if al.asft_lambda > 0.0 {
            row["asft_penalty"] = penalty_sum.into();
        }
        if let Some(kl) = anchor_kl {
            row["anchor_kl"] = kl.into();
        }
        log(row)?;
        if let Some(bar) = &bar {
            bar.set_message(format!(
                "loss {loss_sum:.4} | lr {lr:.2e} | {tok_s:.0} tok/s"
            ));
            bar.set_position(state.step as u64);
        }
        let eval_due = recipe
            .eval
            .every
            .is_some_and(|n| state.step.is_multiple_of(n))
            || state.step == total_steps;
        if eval_due && !eval_set.is_empty() {
            let l = evaluate(&model, &eval_set, o.batch_size, pad, &device);
            eval_loss = Some(l);
            log(
                serde_json::json!({"step": state.step, "eval_loss": l, "eval_perplexity": l.exp()}),
            )?;
        }
        let interrupted = STOP.load(Ordering::SeqCst);
        let save_due = recipe
            .output
            .save_every
            .is_some_and(|n| state.step.is_multiple_of(n))
            || state.step == stop_at
            || interrupted;
        if save_due {
            last_good = Some(save(&mut model, &selection.touched, &optims, &state)?);
        }
        if interrupted {
            stopped_early = true;
            break;
        }
    }
    if let Some(bar) = &bar {
        bar.finish();
    }
    stopped_early |= state.step < total_steps;

    if subspace.is_some() || !safety_layers.is_empty() {
        let mode = match (al.safe_lora_threshold, al.safe_lora_top_k) {
            (Some(t), _) => Some(safe_lora::Mode::Threshold(t)),
            (None, Some(k)) => Some(safe_lora::Mode::TopK(k)),
            (None, None) => None,
        };
        let modules = match (&subspace, mode) {
            (Some(s), Some(mode)) => safe_lora::apply(&mut model.linears_mut(), ADAPTER, s, mode),
            (Some(s), None) => safe_lora::report(&model.linears(), ADAPTER, s),
            (None, _) => Vec::new(),
        };
        let projected = modules.iter().filter(|m| m.projected).count();
        checkpoint::write_atomic(
            &out.join("alignment.json"),
            &serde_json::to_vec_pretty(&serde_json::json!({"safe_lora_projected": projected,
                "safety_layers_excluded": safety_layers, "modules": modules}))
            .expect("JSON"),
        )?;
        if projected > 0 && !eval_set.is_empty() {
            let l = evaluate(&model, &eval_set, o.batch_size, pad, &device);
            eval_loss = Some(l);
            log(
                serde_json::json!({"step": state.step, "eval_loss": l, "eval_perplexity": l.exp(),
                "after": "safe_lora"}),
            )?;
        }
    }
    let adapter_dir = out.join("adapter");
    std::fs::create_dir_all(&adapter_dir).map_err(keel_fs::io(&adapter_dir))?;
    write_adapter(&adapter_dir, &mut model, &selection.touched)?;
    let adapter_bytes = std::fs::metadata(adapter_dir.join(peft::WEIGHTS_FILE))
        .map(|m| m.len())
        .unwrap_or(0);
    let wall = started.elapsed().as_secs_f64();
    let (energy, source) = match (rapl0, report::rapl_joules()) {
        (Some(a), Some(b)) if b >= a => (Some(b - a), "rapl".to_string()),
        _ => (
            cpu0.zip(report::cpu_seconds())
                .map(|(a, b)| (b - a) * report::WATTS_PER_CORE),
            format!("cpu-time x {} W per core", report::WATTS_PER_CORE),
        ),
    };
    let run_tokens = state.tokens - run_start_tokens;
    let report = RunReport {
        steps: state.step,
        wall_s: wall,
        tokens: state.tokens,
        tokens_per_s: run_tokens as f64 / wall.max(1e-9),
        peak_rss_bytes: report::peak_rss_bytes(),
        trainable_params,
        adapter_bytes,
        final_loss: last_loss,
        eval_loss,
        eval_perplexity: eval_loss.map(f64::exp),
        energy_joules: energy,
        energy_source: source,
        stopped_early,
    };
    checkpoint::write_atomic(
        &out.join("report.json"),
        &serde_json::to_vec_pretty(&report).expect("JSON"),
    )?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_model::gather_log_probs;

    /// The head run at the loss positions only gives the loss of the full head.
    #[test]
    fn the_loss_at_the_loss_positions_is_the_full_loss() {
        let device = Device::flex();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama");
        let model = ModelSource::open(&dir)
            .unwrap()
            .load_as(&device, DType::F32)
            .unwrap()
            .model;
        let (b, s) = (2, 12);
        let ids = |k: i64| {
            (0..(b * s) as i64)
                .map(|i| (i * k) % 250)
                .collect::<Vec<_>>()
        };
        let batch = Batch {
            batch: b,
            seq: s,
            inputs: ids(7),
            targets: ids(11),
            weights: (0..b * s)
                .map(|i| (i % s >= 7 + i / s) as u8 as f32)
                .collect(),
        };
        let on = OnDevice::new(&batch, &device);
        assert_eq!(on.targets.dims(), [1, 9]);
        // The fused head at the loss positions against the log-softmax of
        // every position's logits.
        let part = weighted_nll(on.log_probs(&model), on.weights.clone()).into_scalar::<f32>();
        let full = weighted_nll(
            gather_log_probs(
                model.forward(on.inputs.clone()),
                Tensor::from_data(TensorData::new(batch.targets.clone(), [b, s]), &device),
            ),
            Tensor::from_data(TensorData::new(batch.weights.clone(), [b, s]), &device),
        )
        .into_scalar::<f32>();
        assert!((part - full).abs() <= 1e-5 * full.abs(), "{part} vs {full}");
    }
}
