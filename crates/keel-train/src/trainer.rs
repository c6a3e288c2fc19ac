//! The training loop.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{DType, Device, Element, Int, Tensor, TensorData};
use keel_adapters::DEFAULT_ADAPTER as ADAPTER;
use keel_adapters::peft::{self, AdapterFile};
use keel_adapters::{AdapterConfig, init_adapter, resolve_targets};
use keel_data::{
    Batch, Batcher, Example, load_examples, mix_replay, pack, parse_examples, split_eval,
};
use keel_gguf::GgmlType;
use keel_model::{BaseStorage, DeviceChoice, Llama, ModelSource};
use keel_recipe::{DataFormat, Length, Recipe, SafetySet};
use keel_text::{ChatTemplate, Tokenizer};

use crate::checkpoint::{self, TrainState};
use crate::error::Error;
use crate::loss::{constrained_sft, response_betas, weighted_nll};
use crate::metrics::{EvalMetrics, MetricsLog, Row, StepMetrics};
use crate::report::{self, RunReport};
use crate::schedule::lr_at;
use crate::selective::Selection;
use keel_align::layers::{self, LayerSeparation};
use keel_align::safemerge::{self, SafetyLora};
use keel_align::{Subspace, asft, safe_lora};
use keel_probes::judges::kl::token_kl;

/// Prompts per probe set used to find the safety layers.
const SAFETY_LAYER_PROMPTS: usize = 64;

/// How to run a recipe.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from the output folder's latest checkpoint.
    pub resume: bool,
    /// Replace a previous run in the output folder.
    pub overwrite: bool,
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

/// What a run writes in its output folder.
const OUTPUTS: [&str; 6] = [
    "checkpoints",
    "adapter",
    "metrics.jsonl",
    "latest",
    "report.json",
    "alignment.json",
];

/// Refuses to mix two runs in one folder, and clears it for `--overwrite`.
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

/// A term of the training objective. A step adds the per-batch terms for
/// each of its micro-batches, in this order, then the per-step ones; room
/// is left for preference losses.
#[derive(Debug, Clone, PartialEq)]
pub enum LossTerm {
    /// Next-token negative log-likelihood on the loss tokens.
    Sft,
    /// Constrained SFT (Qi et al. 2024): the first answer tokens held near
    /// the reference, the model with its adapter off.
    ConstrainedSft,
    /// AsFT: `lambda` times the update's distance from the alignment
    /// subspace of `[alignment] reference`, per micro-batch.
    Asft { lambda: f64 },
    /// `lambda` times the KL from the reference on a batch of the safety
    /// anchors, once per step.
    KlAnchors { lambda: f64 },
}

impl LossTerm {
    /// The recipe's objective: the data term, then its regularisers (the
    /// anchors' only where the anchor file holds any).
    fn of(recipe: &Recipe, has_anchors: bool) -> Vec<LossTerm> {
        let al = &recipe.alignment;
        let mut terms = vec![match al.constrained_sft {
            true => LossTerm::ConstrainedSft,
            false => LossTerm::Sft,
        }];
        if al.reference.is_some() && al.asft_lambda > 0.0 {
            terms.push(LossTerm::Asft {
                lambda: al.asft_lambda,
            });
        }
        if has_anchors {
            terms.push(LossTerm::KlAnchors {
                lambda: al.anchor_lambda,
            });
        }
        terms
    }
}

/// What the caller sees of a run as it goes: the binary draws a progress
/// bar and turns Ctrl-C into a stop; tests and benchmarks need nothing.
pub trait Hooks {
    /// The run begins at `step` (past 0 when resumed) of `total_steps`.
    fn started(&mut self, _total_steps: usize, _step: usize) {}
    fn stepped(&mut self, _metrics: &StepMetrics) {}
    /// Asked after every step: `true` checkpoints and ends the run early.
    fn stop_requested(&mut self) -> bool {
        false
    }
    fn finished(&mut self) {}
}

/// No progress display, no interruption.
impl Hooks for () {}

/// The two AdamW states: LoRA's B and everything else (LoRA+ gives B its
/// own rate).
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

    /// Takes the states saved in checkpoint `dir`.
    fn load(self, dir: &Path) -> Result<Self, Error> {
        let bad = |e| Error::Checkpoint {
            path: dir.to_path_buf(),
            reason: format!("{e:?}"),
        };
        Ok(Optimizers {
            a: self.a.load(dir.join(checkpoint::OPTIM_A)).map_err(bad)?,
            b: self.b.load(dir.join(checkpoint::OPTIM_B)).map_err(bad)?,
        })
    }

    fn save(&self, dir: &Path) -> Result<(), Error> {
        for (o, name) in [
            (&self.a, checkpoint::OPTIM_A),
            (&self.b, checkpoint::OPTIM_B),
        ] {
            let bytes = o.into_bytes().map_err(|e| Error::Checkpoint {
                path: dir.join(name),
                reason: format!("{e:?}"),
            })?;
            checkpoint::write_atomic(&dir.join(name), &bytes)?;
        }
        Ok(())
    }
}

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

/// A run of a recipe, in phases (torchtune's recipe shape):
/// [`Trainer::setup`] loads the model, data and any checkpoint to resume;
/// [`Trainer::step`] is one optimizer step; [`Trainer::evaluate`] and
/// [`Trainer::checkpoint`] run when due; [`Trainer::finish`] applies
/// post-training alignment, writes the adapter and returns the report.
/// [`train_with`] is the loop over them.
pub struct Trainer<'r> {
    recipe: &'r Recipe,
    opts: RunOptions,
    device: Device,
    model: Llama,
    /// The adapter's configuration, its saved modules listed at each write.
    cfg: AdapterConfig,
    fingerprint: String,
    pad: u32,
    train_set: Vec<Example>,
    eval_set: Vec<Example>,
    /// The safety anchors of [`LossTerm::KlAnchors`], shuffled once.
    anchors: Vec<Example>,
    /// The preservation applied, in words (the run report's).
    alignment: String,
    terms: Vec<LossTerm>,
    /// The alignment subspace of `[alignment] reference`.
    subspace: Option<Subspace>,
    /// SafeMERGE's safety LoRA.
    safety_lora: Option<SafetyLora>,
    safety_layers: Vec<LayerSeparation>,
    batcher: Batcher,
    total_steps: usize,
    /// Where this process stops: the last step, or `RunOptions::stop_at`.
    stop_at: usize,
    optims: Optimizers,
    state: TrainState,
    selection: Selection,
    params: Vec<Trained>,
    metrics: MetricsLog,
    last_good: Option<PathBuf>,
    last_loss: Option<f64>,
    eval_loss: Option<f64>,
    stopped_early: bool,
    started: Instant,
    run_start_tokens: u64,
    cpu0: Option<f64>,
    rapl0: Option<f64>,
}

impl<'r> Trainer<'r> {
    /// Prepares the output folder, loads the model, the data and the
    /// alignment inputs, attaches a fresh adapter, and takes the trained
    /// values and optimizer state of the latest checkpoint when resuming.
    pub fn setup(recipe: &'r Recipe, opts: &RunOptions) -> Result<Self, Error> {
        let out = &recipe.output.dir;
        prepare_output(out, opts)?;
        let started = Instant::now();
        let (cpu0, rapl0) = (report::cpu_seconds(), report::rapl_joules());
        let device = device_of(recipe)?.autodiff();
        let loaded =
            ModelSource::open(&recipe.model.path)?.load_with(&device, storage_of(recipe))?;
        let tokenizer = loaded.tokenizer()?.clone();
        let template = loaded.chat_template.clone();
        let pad = loaded.config.eos_token_ids.first().copied().unwrap_or(0);
        let mut cfg = recipe.adapter.config().clone();
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

        let (train_set, eval_set) = load_data(recipe, &tokenizer, template.as_ref())?;
        let mut anchors = match &al.anchor_set {
            Some(set) => safety_examples(set, recipe, &tokenizer, template.as_ref(), false)?,
            None => Vec::new(),
        };
        let keel_set = [&al.anchor_set, &al.replay_set].contains(&&Some(SafetySet::Keel));
        let alignment = match keel_set && template.is_none() {
            true => format!(
                "{}; not applied: the model has no chat template to render keel's safety set in",
                al.describe()
            ),
            false => al.describe(),
        };
        keel_data::shuffle(&mut anchors, recipe.optim.seed ^ 0xA4C4_0125);
        let subspace = match &al.reference {
            Some(dir) => Some(Subspace::from_adapter(&AdapterFile::read(dir)?, &device)?),
            None => None,
        };
        // Read before training, so a bad safety LoRA fails the run at once.
        let safety_lora = match &al.safemerge {
            Some(m) => Some(SafetyLora::from_adapter(
                &AdapterFile::read(&m.adapter)?,
                &device,
            )?),
            None => None,
        };
        let o = &recipe.optim;
        let mut batcher = Batcher::new(train_set.len(), o.batch_size, o.seed);
        let total_steps = match o.length() {
            Length::Steps(s) => s,
            Length::Epochs(e) => ((e * batcher.batches_per_epoch() as f64) / o.grad_accum as f64)
                .ceil()
                .max(1.0) as usize,
        };

        // A resumed run starts as a fresh one (PiSSA/OLoRA also move the
        // same part out of the base again), then takes the trained values.
        let mut optims = Optimizers::new(recipe);
        let mut state = TrainState::default();
        let resumed = match opts.resume {
            true => checkpoint::latest(out)?,
            false => None,
        };
        let names: Vec<String> = model.linears().into_iter().map(|(n, _)| n).collect();
        let specs = resolve_targets(&names, &cfg)?;
        let mut rng = keel_adapters::rng::seeded(o.seed);
        for (name, layer) in model.linears_mut() {
            if let Some(spec) = specs.iter().find(|s| s.name == name) {
                init_adapter(layer, ADAPTER, spec, &cfg, &mut rng)?;
            }
        }
        if let Some(safety) = &safety_lora {
            safety.check(&model.linears(), ADAPTER)?;
        }
        let mut selection = Selection::new(recipe, &mut model, &specs)?;
        if let Some(dir) = &resumed {
            state = checkpoint::read_state(dir)?;
            let file = AdapterFile::read(dir)?;
            file.check_base(&fingerprint)?;
            file.restore(ADAPTER, &mut model.linears_mut())?;
            model.load_saved(&file)?;
            selection.touched.extend(file.saved.keys().cloned());
            optims = optims.load(dir)?;
            batcher = Batcher::resume(
                train_set.len(),
                o.batch_size,
                o.seed,
                state.epoch,
                state.pos,
            );
        }
        selection.update(&mut model, state.step);
        let params = trainable(&mut model, &selection);
        let metrics = MetricsLog::open(&out.join("metrics.jsonl"), state.step)?;
        let terms = LossTerm::of(recipe, !anchors.is_empty());
        Ok(Trainer {
            recipe,
            opts: opts.clone(),
            device,
            model,
            cfg,
            fingerprint,
            pad,
            train_set,
            eval_set,
            anchors,
            alignment,
            terms,
            subspace,
            safety_lora,
            safety_layers,
            batcher,
            total_steps,
            stop_at: opts.stop_at.unwrap_or(usize::MAX).min(total_steps),
            optims,
            run_start_tokens: state.tokens,
            state,
            selection,
            params,
            metrics,
            last_good: resumed,
            last_loss: None,
            eval_loss: None,
            stopped_early: false,
            started,
            cpu0,
            rapl0,
        })
    }

    pub fn total_steps(&self) -> usize {
        self.total_steps
    }

    /// Optimizer steps done, in this process and before it.
    pub fn steps_done(&self) -> usize {
        self.state.step
    }

    /// Whether this process has done its steps.
    pub fn done(&self) -> bool {
        self.state.step >= self.stop_at
    }

    /// One optimizer step: the objective over `grad_accum` micro-batches,
    /// a stop at the first non-finite loss or gradient (the last good
    /// checkpoint kept), clipping, AdamW, and a row in `metrics.jsonl`.
    pub fn step(&mut self) -> Result<StepMetrics, Error> {
        let step_start = Instant::now();
        let recipe = self.recipe;
        let o = &recipe.optim;
        if self.selection.new_period(self.state.step) {
            self.optims = Optimizers::new(recipe);
        }
        if self.selection.update(&mut self.model, self.state.step) {
            self.params = trainable(&mut self.model, &self.selection);
        }
        // Reseeding per step makes dropout masks a function of the step:
        // a resumed run draws the same ones.
        let step_seed = o.seed ^ (self.state.step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.device.seed(step_seed);
        let micro: Vec<Batch> = (0..o.grad_accum)
            .map(|_| {
                let idx = self.batcher.next_indices();
                let refs: Vec<&Example> = idx.iter().map(|&i| &self.train_set[i]).collect();
                Batch::collate(&refs, self.pad)
            })
            .collect();
        let mut grads = GradientsParams::new();
        let sums = self.objective(&micro, step_seed, &mut grads);
        let mut loss = sums.loss;
        self.inject_nan(&mut loss, &mut grads);
        let (norm, bad_grad) = grad_norm(&grads, &self.params);
        let bad = match loss.is_finite() {
            false => Some(("loss".to_string(), loss)),
            true => bad_grad.map(|name| (format!("the gradient of `{name}`"), norm)),
        };
        if let Some((what, value)) = bad {
            return Err(Error::NotFinite {
                step: self.state.step + 1,
                what,
                value,
                kept: self.last_good.clone(),
            });
        }
        let clip = match o.max_grad_norm {
            Some(max) if norm > max => max / norm,
            _ => 1.0,
        };
        let (rest, b) = scale_and_split(grads, &self.params, clip);
        let lr = lr_at(
            self.state.step,
            self.total_steps,
            o.warmup_steps,
            o.lr,
            o.schedule,
        );
        // AdamW takes the model and gives it back; the clone shares every
        // tensor, so nothing is copied.
        self.model = self.optims.a.step(lr, self.model.clone(), rest);
        self.model = self
            .optims
            .b
            .step(lr * o.lora_plus_ratio, self.model.clone(), b);

        let state = &mut self.state;
        state.step += 1;
        state.tokens += micro.iter().map(|b| (b.batch * b.seq) as u64).sum::<u64>();
        state.epoch = self.batcher.epoch;
        state.pos = self.batcher.pos;
        let step_s = step_start.elapsed().as_secs_f64();
        state.elapsed_s += step_s;
        self.last_loss = Some(loss);
        let metrics = StepMetrics {
            step: state.step,
            loss,
            lr,
            grad_norm: norm,
            tokens: state.tokens,
            tokens_per_s: (state.tokens - self.run_start_tokens) as f64
                / self.started.elapsed().as_secs_f64().max(1e-9),
            epoch: state.epoch,
            step_s,
            rss_bytes: report::rss_bytes(),
            peak_rss_bytes: report::peak_rss_bytes(),
            asft_penalty: sums.asft_penalty,
            anchor_kl: sums.anchor_kl,
        };
        self.metrics.write(Row::Step(metrics.clone()))?;
        Ok(metrics)
    }

    /// Adds the gradients of every [`LossTerm`] over the step's batches to
    /// `grads`, and returns what they came to.
    fn objective(&mut self, micro: &[Batch], step_seed: u64, grads: &mut GradientsParams) -> Sums {
        let recipe = self.recipe;
        let (o, device) = (&recipe.optim, &self.device);
        let model = &mut self.model;
        let backprop = Backprop {
            device,
            params: &self.params,
            checkpointed: recipe.model.activation_checkpointing,
        };
        let targets_total: usize = micro.iter().map(Batch::target_tokens).sum::<usize>().max(1);
        let mut sums = Sums::default();
        for (m, batch) in micro.iter().enumerate() {
            let b = OnDevice::new(batch, device);
            for term in &self.terms {
                match *term {
                    LossTerm::Sft | LossTerm::ConstrainedSft => {
                        let reference = (*term == LossTerm::ConstrainedSft)
                            .then(|| with_reference(model, |m| b.log_probs(m)));
                        let mut nll = None;
                        backprop.run(model, &b, step_seed ^ m as u64, grads, |hidden| {
                            let log_p = model.target_log_probs(hidden, b.targets.clone());
                            let n = weighted_nll(log_p.clone(), b.weights.clone())
                                .div_scalar(targets_total as f64);
                            nll = Some(n.clone().detach());
                            match reference {
                                Some(r) => {
                                    let betas = response_betas(&batch.weights, batch.seq);
                                    let betas = b.values(&betas, device);
                                    constrained_sft(log_p, r, betas, b.weights.clone())
                                        .div_scalar(targets_total as f64)
                                }
                                None => n,
                            }
                        });
                        sums.loss += nll.expect("the objective ran").into_scalar::<f32>() as f64;
                    }
                    LossTerm::Asft { lambda } => {
                        let subspace = self.subspace.as_ref().expect("AsFT has a reference");
                        let penalty = asft::penalty(&model.linears(), ADAPTER, subspace)
                            .map(|p| p.mul_scalar(lambda / o.grad_accum as f64));
                        let total = sums.asft_penalty.get_or_insert(0.0);
                        if let Some(p) = penalty {
                            let g = GradientsParams::from_grads(p.backward(), &*model);
                            accumulate(grads, g, &self.params);
                            *total += p.into_scalar::<f32>() as f64;
                        }
                    }
                    LossTerm::KlAnchors { .. } => {}
                }
            }
        }
        for term in &self.terms {
            let LossTerm::KlAnchors { lambda } = *term else {
                continue;
            };
            // The step's anchors, a function of the step so resume agrees.
            let refs: Vec<&Example> = (0..o.batch_size)
                .map(|i| &self.anchors[(self.state.step * o.batch_size + i) % self.anchors.len()])
                .collect();
            let batch = Batch::collate(&refs, self.pad);
            let b = OnDevice::new(&batch, device);
            let reference = with_reference(model, |m| m.logits(b.hidden(m)));
            let mut kl = None;
            let seed = step_seed ^ micro.len() as u64;
            backprop.run(model, &b, seed, grads, |hidden| {
                let k = token_kl(reference, model.logits(hidden))
                    .mul(b.weights.clone())
                    .sum()
                    .div_scalar(batch.target_tokens().max(1) as f64);
                kl = Some(k.clone().detach());
                k.mul_scalar(lambda)
            });
            sums.anchor_kl = Some(kl.expect("the objective ran").into_scalar::<f32>() as f64);
        }
        sums
    }

    /// `--debug-inject-nan`: makes the loss, or the first trained
    /// parameter's gradient, NaN at the chosen step.
    fn inject_nan(&self, loss: &mut f64, grads: &mut GradientsParams) {
        match self.opts.debug_nan {
            Some((step, NanSite::Loss)) if step == self.state.step + 1 => *loss = f64::NAN,
            Some((step, NanSite::Gradient)) if step == self.state.step + 1 => {
                let p = &self.params[0];
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
    }

    /// Whether the eval set is due after the step just done: every
    /// `[eval] every` steps and at the last.
    pub fn eval_due(&self) -> bool {
        let step = self.state.step;
        !self.eval_set.is_empty()
            && (self
                .recipe
                .eval
                .every
                .is_some_and(|n| step.is_multiple_of(n))
                || step == self.total_steps)
    }

    /// The eval loss now, also written to `metrics.jsonl`.
    pub fn evaluate(&mut self) -> Result<f64, Error> {
        self.evaluate_after(None)
    }

    fn evaluate_after(&mut self, after: Option<&str>) -> Result<f64, Error> {
        let batch_size = self.recipe.optim.batch_size;
        let l = evaluate(
            &self.model,
            &self.eval_set,
            batch_size,
            self.pad,
            &self.device,
        );
        self.eval_loss = Some(l);
        let row = EvalMetrics::new(self.state.step, l, after);
        self.metrics.write(Row::Eval(row))?;
        Ok(l)
    }

    /// Whether a checkpoint is due after the step just done: every
    /// `[output] save_every` steps and where this process stops.
    pub fn save_due(&self) -> bool {
        let step = self.state.step;
        self.recipe
            .output
            .save_every
            .is_some_and(|n| step.is_multiple_of(n))
            || step == self.stop_at
    }

    /// Writes a checkpoint of the step just done; returns its folder.
    pub fn checkpoint(&mut self) -> Result<PathBuf, Error> {
        let (recipe, state) = (self.recipe, self.state.clone());
        let dir = checkpoint::save(&recipe.output.dir, &state, |dir| {
            self.write_adapter(dir)?;
            self.optims.save(dir)
        })?;
        self.last_good = Some(dir.clone());
        Ok(dir)
    }

    /// Ends the run here: a checkpoint, and the report says it stopped early.
    pub fn interrupt(&mut self) -> Result<PathBuf, Error> {
        self.stopped_early = true;
        self.checkpoint()
    }

    /// The adapter as a PEFT folder, with the modules trained in full.
    fn write_adapter(&mut self, dir: &Path) -> Result<usize, Error> {
        let saved_names: Vec<String> = self.selection.touched.iter().cloned().collect();
        let saved = self.model.saved_modules(&saved_names);
        let cfg = AdapterConfig {
            modules_to_save: saved_names,
            ..self.cfg.clone()
        };
        Ok(peft::write(
            dir,
            ADAPTER,
            &cfg,
            &self.model.linears(),
            &saved,
            &self.recipe.model.path.display().to_string(),
            &self.fingerprint,
        )?)
    }

    /// Safe LoRA and the safety-layer record (`alignment.json`) where the
    /// recipe asks, then the adapter (`<output>/adapter`) and the report
    /// (`<output>/report.json`).
    pub fn finish(mut self) -> Result<RunReport, Error> {
        let recipe = self.recipe;
        let out = &recipe.output.dir;
        self.stopped_early |= self.state.step < self.total_steps;
        if self.subspace.is_some() || !self.safety_layers.is_empty() {
            self.align_after_training()?;
        }
        let adapter_dir = out.join("adapter");
        std::fs::create_dir_all(&adapter_dir).map_err(keel_fs::io(&adapter_dir))?;
        self.write_adapter(&adapter_dir)?;
        let adapter_bytes = std::fs::metadata(adapter_dir.join(peft::WEIGHTS_FILE))
            .map(|m| m.len())
            .unwrap_or(0);
        let wall = self.started.elapsed().as_secs_f64();
        let (energy, source) = match (self.rapl0, report::rapl_joules()) {
            (Some(a), Some(b)) if b >= a => (Some(b - a), "rapl".to_string()),
            _ => (
                self.cpu0
                    .zip(report::cpu_seconds())
                    .map(|(a, b)| (b - a) * report::WATTS_PER_CORE),
                format!("cpu-time x {} W per core", report::WATTS_PER_CORE),
            ),
        };
        let report = RunReport {
            steps: self.state.step,
            wall_s: wall,
            tokens: self.state.tokens,
            tokens_per_s: (self.state.tokens - self.run_start_tokens) as f64 / wall.max(1e-9),
            peak_rss_bytes: report::peak_rss_bytes(),
            trainable_params: self.trainable_params(),
            adapter_bytes,
            final_loss: self.last_loss,
            eval_loss: self.eval_loss,
            eval_perplexity: self.eval_loss.map(f64::exp),
            energy_joules: energy,
            energy_source: source,
            stopped_early: self.stopped_early,
            alignment: self.alignment.clone(),
        };
        checkpoint::write_atomic(
            &out.join("report.json"),
            &serde_json::to_vec_pretty(&report).expect("JSON"),
        )?;
        Ok(report)
    }

    /// Safe LoRA's projection or SafeMERGE's merge (or only the similarity
    /// report) against the reference, written to `alignment.json` with the
    /// excluded safety layers; the eval set again if anything changed.
    fn align_after_training(&mut self) -> Result<(), Error> {
        let recipe = self.recipe;
        let al = &recipe.alignment;
        let (changed, method, report) = match (&self.subspace, al.safe_lora, &al.safemerge) {
            (Some(s), _, Some(m)) => {
                let safety = self.safety_lora.as_ref().expect("read at setup");
                let modules = safemerge::apply(
                    &mut self.model.linears_mut(),
                    ADAPTER,
                    s,
                    safety,
                    m.threshold,
                    m.weight,
                )?;
                let merged = modules.iter().filter(|m| m.merged).count();
                let report = serde_json::json!({"safemerge_merged": merged,
                    "safety_layers_excluded": self.safety_layers, "modules": modules});
                (merged, "safemerge", report)
            }
            (subspace, mode, None) => {
                let modules = match (subspace, mode) {
                    (Some(s), Some(mode)) => {
                        safe_lora::apply(&mut self.model.linears_mut(), ADAPTER, s, mode)
                    }
                    (Some(s), None) => safe_lora::report(&self.model.linears(), ADAPTER, s),
                    (None, _) => Vec::new(),
                };
                let projected = modules.iter().filter(|m| m.projected).count();
                let report = serde_json::json!({"safe_lora_projected": projected,
                    "safety_layers_excluded": self.safety_layers, "modules": modules});
                (projected, "safe_lora", report)
            }
            (None, _, Some(_)) => unreachable!("the recipe's checks require a reference"),
        };
        checkpoint::write_atomic(
            &recipe.output.dir.join("alignment.json"),
            &serde_json::to_vec_pretty(&report).expect("JSON"),
        )?;
        if changed > 0 && !self.eval_set.is_empty() {
            self.evaluate_after(Some(method))?;
        }
        Ok(())
    }

    /// Parameters trained: LoRA's (and DoRA's magnitudes) and those of the
    /// modules trained in full.
    fn trainable_params(&mut self) -> usize {
        let adapters: usize = self
            .model
            .linears()
            .iter()
            .flat_map(|(_, l)| l.adapters.iter())
            .map(|a| {
                a.a.num_params()
                    + a.b.num_params()
                    + a.magnitude.as_ref().map_or(0, |m| m.num_params())
            })
            .sum();
        self.selection.num_params(&mut self.model) + adapters
    }
}

/// What a step's loss terms came to.
#[derive(Default)]
struct Sums {
    loss: f64,
    asft_penalty: Option<f64>,
    anchor_kl: Option<f64>,
}

/// Runs `recipe` with no hooks: see [`train_with`].
pub fn train(recipe: &Recipe, opts: &RunOptions) -> Result<RunReport, Error> {
    train_with(recipe, opts, &mut ())
}

/// Runs `recipe`: trains, evaluates and checkpoints when due, and writes
/// the adapter to `<output>/adapter` and the report to
/// `<output>/report.json`. `hooks` see each step and may stop the run.
pub fn train_with(
    recipe: &Recipe,
    opts: &RunOptions,
    hooks: &mut dyn Hooks,
) -> Result<RunReport, Error> {
    let mut trainer = Trainer::setup(recipe, opts)?;
    hooks.started(trainer.total_steps(), trainer.steps_done());
    while !trainer.done() {
        let metrics = trainer.step()?;
        hooks.stepped(&metrics);
        if trainer.eval_due() {
            trainer.evaluate()?;
        }
        if hooks.stop_requested() {
            trainer.interrupt()?;
            break;
        }
        if trainer.save_due() {
            trainer.checkpoint()?;
        }
    }
    hooks.finished();
    trainer.finish()
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
    if let (Some(set), Some(f)) = (&al.replay_set, al.replay_fraction) {
        let replay = safety_examples(set, recipe, tokenizer, template, d.train_on_prompt)?;
        mix_replay(&mut train_set, replay, f, recipe.optim.seed);
    }
    if d.packing {
        train_set = pack(train_set, d.max_length);
    }
    Ok((train_set, eval_set))
}

/// An alignment method's examples: a file in `[data]`'s format, or keel's
/// safety set through the model's chat template (none without one).
fn safety_examples(
    set: &SafetySet,
    recipe: &Recipe,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    train_on_prompt: bool,
) -> Result<Vec<Example>, Error> {
    let d = &recipe.data;
    let tokenized = match (set, template) {
        (SafetySet::File(p), _) => load_examples(
            p,
            d.format,
            tokenizer,
            template,
            d.max_length,
            train_on_prompt,
        )?,
        (SafetySet::Keel, Some(_)) => parse_examples(
            keel_align::SAFETY_SET,
            Path::new("keel's safety set"),
            DataFormat::Chat,
            tokenizer,
            template,
            d.max_length,
            train_on_prompt,
        )?,
        (SafetySet::Keel, None) => return Ok(Vec::new()),
    };
    Ok(tokenized.examples)
}

/// The eval loss of the recipe's model with the adapter in `adapter` (a
/// PEFT folder) on the recipe's eval set: what training reports, for an
/// adapter made another way (a post-hoc projection, say).
pub fn eval_adapter(recipe: &Recipe, adapter: &Path) -> Result<f64, Error> {
    let device = device_of(recipe)?;
    let mut loaded =
        ModelSource::open(&recipe.model.path)?.load_with(&device, storage_of(recipe))?;
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

fn storage_of(recipe: &Recipe) -> BaseStorage {
    use keel_recipe::Dtype;
    // What stays dense beside a base in blocks is bf16 on the CPU; on a GPU
    // f32, as not every GPU (lavapipe, older ones) has bf16.
    let dense = match recipe.model.device {
        keel_recipe::Device::Flex => DType::BF16,
        keel_recipe::Device::Wgpu | keel_recipe::Device::Ndarray => DType::F32,
    };
    let keep_dense = recipe.model.keep_dense.clone();
    let quantize = |ty| BaseStorage::Quantize {
        ty,
        dense,
        keep_dense: keep_dense.clone(),
    };
    match recipe.model.base_dtype {
        Dtype::F32 => BaseStorage::Dense(DType::F32),
        Dtype::F16 => BaseStorage::Dense(DType::F16),
        Dtype::Bf16 => BaseStorage::Dense(DType::BF16),
        Dtype::Gguf => BaseStorage::Gguf {
            dense,
            keep_dense: keep_dense.clone(),
        },
        Dtype::Q8_0 => quantize(GgmlType::Q8_0),
        Dtype::Q4_0 => quantize(GgmlType::Q4_0),
        Dtype::Q4K => quantize(GgmlType::Q4K),
        Dtype::Q5K => quantize(GgmlType::Q5K),
        Dtype::Q6K => quantize(GgmlType::Q6K),
    }
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
