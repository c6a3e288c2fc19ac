//! `keel`: the command-line front end. Each subcommand parses its flags and
//! calls into the library crates; no model logic lives here.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use keel_adapters::DEFAULT_ADAPTER as ADAPTER;
use keel_adapters::peft::AdapterFile;
use keel_model::{DeviceChoice, LoadedModel, ModelSource, Sampling};
use keel_recipe::Recipe;
use keel_train::RunOptions;

mod align;
mod probe;
mod progress;

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "Adapt open LLMs with parameter-efficient adapters, keeping their safety alignment"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train an adapter from a recipe file.
    Train {
        recipe: PathBuf,
        /// Override a recipe key, e.g. --set optim.lr=1e-4 (repeatable).
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        set: Vec<String>,
        /// Continue the run in the output folder from its latest checkpoint.
        #[arg(long)]
        resume: bool,
        /// Replace a previous run in the output folder.
        #[arg(long)]
        overwrite: bool,
        /// Debugging: make the loss or a gradient NaN at a step (`loss@5`,
        /// `grad@5`) to see the run stop and keep its last good checkpoint.
        #[arg(long, hide = true, value_parser = parse_nan_site)]
        debug_inject_nan: Option<(usize, keel_train::NanSite)>,
    },
    /// Evaluate an adapter on a recipe's eval set (loss and perplexity, JSON).
    Eval {
        recipe: PathBuf,
        #[arg(long)]
        adapter: PathBuf,
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        set: Vec<String>,
    },
    /// Recipe tools.
    #[command(subcommand)]
    Recipe(RecipeCommand),
    /// Generate text from a prompt.
    Generate(GenerateArgs),
    /// Print a model's architecture, parameter count, dtypes and linear modules.
    Inspect { path: PathBuf },
    /// Convert a GGUF model into an HF folder that transformers loads.
    Convert {
        model: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Export an adapter for a server: PEFT folder, GGUF LoRA, or merged model.
    Export {
        /// The base model the adapter was made for (HF folder or .gguf).
        #[arg(long)]
        model: PathBuf,
        /// A PEFT-format adapter folder (keel's own adapters are in this format).
        #[arg(long)]
        adapter: PathBuf,
        #[arg(long, value_enum)]
        format: ExportFormat,
        #[arg(long)]
        out: PathBuf,
        /// Tensor type of a GGUF adapter or merged GGUF model.
        #[arg(long, value_enum, default_value = "f32")]
        gguf_dtype: GgufDtypeArg,
    },
    /// Adapter tools.
    #[command(subcommand)]
    Adapter(AdapterCommand),
    /// Alignment preservation on a trained adapter (Safe LoRA, similarity).
    #[command(subcommand)]
    Align(align::AlignCommand),
    /// Run the alignment probe suite on a model (optionally with an adapter).
    Probe(probe::ProbeArgs),
    /// Probe a model before and after adaptation and gate the difference:
    /// exit code 0 when the gate passes, 3 on a regression.
    Drift(probe::DriftArgs),
    /// Benchmarks (not tests): print figures as JSON.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// HF folder or .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// A PEFT-format adapter to apply (keel's trained adapters are in this format).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The prompt; or use --prompts.
    #[arg(long, required_unless_present = "prompts")]
    prompt: Option<String>,
    /// A JSONL file of {"prompt": ...} rows: answers go to --out as JSONL.
    #[arg(long, requires = "out", conflicts_with = "prompt")]
    prompts: Option<PathBuf>,
    #[arg(long)]
    out: Option<PathBuf>,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// flex (CPU), wgpu (GPU) or ndarray (CPU, opt-in feature).
    #[arg(long, default_value = "flex")]
    device: DeviceChoice,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    /// HF PEFT folder (HF PEFT, vLLM, TGI, LoRAX).
    Peft,
    /// GGUF LoRA adapter (llama.cpp `--lora`, Ollama `ADAPTER`).
    Gguf,
    /// The adapter merged into the base: an HF folder, or a GGUF model
    /// (f32 or f16, `--gguf-dtype`) when the base and `--out` are `.gguf`.
    Merged,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum GgufDtypeArg {
    F32,
    F16,
}

#[derive(Subcommand)]
enum RecipeCommand {
    /// Validate a recipe: unknown keys, wrong types and impossible values, with file, line and key.
    Check {
        recipe: PathBuf,
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        set: Vec<String>,
    },
}

#[derive(Subcommand)]
enum AdapterCommand {
    /// Kind, targets, ranks, trainable parameters, size and base model of an adapter folder.
    Info { dir: PathBuf },
}

#[derive(Subcommand)]
enum Bench {
    /// Training tokens/s and peak RSS on the fixed LoRA workload
    /// (`benchmarks/peft_reference.py` runs the same one in HF PEFT).
    Train(BenchTrainArgs),
    /// Prefill and decode tokens/s and peak RSS.
    Generate {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "flex")]
        device: DeviceChoice,
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 64)]
        new_tokens: usize,
    },
}

#[derive(clap::Args)]
struct BenchTrainArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value = "flex")]
    device: String,
    /// Storage of the frozen base: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    base_dtype: String,
    #[arg(long, default_value_t = 256)]
    seq: usize,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value_t = 8)]
    steps: usize,
    #[arg(long)]
    activation_checkpointing: bool,
    /// Scratch folder for the generated data and run.
    #[arg(long, default_value = "runs/bench-train")]
    work: PathBuf,
}

fn main() {
    keep_freed_memory();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        // Documented: CI pipelines tell a failed gate from a failed run.
        let code = if e.is::<probe::Regression>() { 3 } else { 1 };
        std::process::exit(code);
    }
}

/// Training frees and reallocates the same large tensors every step. glibc
/// hands blocks over its (adaptive) mmap threshold back to the kernel, which
/// must then fault in and zero fresh pages on the next use, and trims the
/// heap top likewise. Keeping freed memory for reuse ran SmolLM2 LoRA
/// training 1.17x faster (1.29x with activation checkpointing) at the same
/// peak RSS (`keel bench train`).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

fn run(cli: Cli) -> Result<()> {
    // A KEEL_CPU or KEEL_BF16 the CPU cannot honour is the user's error, not
    // a panic deep in a kernel.
    keel_gemm::Bf16Product::from_env()?;
    match cli.command {
        Command::Train {
            recipe,
            set,
            resume,
            overwrite,
            debug_inject_nan,
        } => {
            let recipe = Recipe::load(&recipe, &set)?;
            let opts = RunOptions {
                resume,
                overwrite,
                stop_at: None,
                debug_nan: debug_inject_nan,
            };
            let report = keel_train::train_with(&recipe, &opts, &mut progress::Training::new()?)?;
            println!("{}", report.table());
            println!("adapter: {}", recipe.output.dir.join("adapter").display());
            Ok(())
        }
        Command::Eval {
            recipe,
            adapter,
            set,
        } => {
            let loss = keel_train::eval_adapter(&Recipe::load(&recipe, &set)?, &adapter)?;
            println!(
                "{}",
                serde_json::json!({"eval_loss": loss, "eval_perplexity": loss.exp()})
            );
            Ok(())
        }
        Command::Recipe(RecipeCommand::Check { recipe, set }) => {
            Recipe::load(&recipe, &set)?;
            println!("{}: ok", recipe.display());
            Ok(())
        }
        Command::Generate(args) => generate(&args),
        Command::Inspect { path } => inspect(&path),
        Command::Convert { model, out } => {
            let loaded = load(&model, DeviceChoice::Flex)?;
            keel_model::save_hf_dir(&loaded, &out)?;
            println!("wrote {}", out.display());
            Ok(())
        }
        Command::Export {
            model,
            adapter,
            format,
            out,
            gguf_dtype,
        } => export(&model, &adapter, format, &out, gguf_dtype),
        Command::Adapter(AdapterCommand::Info { dir }) => adapter_info(&dir),
        Command::Align(cmd) => align::run(&cmd),
        Command::Probe(args) => probe::probe(&args),
        Command::Drift(args) => probe::drift(&args),
        Command::Bench(Bench::Train(a)) => {
            let opts = keel_train::bench::BenchOptions {
                model: a.model,
                device: a.device,
                base_dtype: a.base_dtype,
                seq: a.seq,
                batch: a.batch,
                warmup: a.warmup,
                steps: a.steps,
                activation_checkpointing: a.activation_checkpointing,
            };
            let report = keel_train::bench::bench_train(&opts, &a.work)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Bench(Bench::Generate {
            model,
            device,
            prompt_tokens,
            new_tokens,
        }) => bench_generate(&model, device, prompt_tokens, new_tokens),
    }
}

fn load(path: &Path, device: DeviceChoice) -> Result<LoadedModel> {
    let dev = device.device()?;
    LoadedModel::open(path, &dev).with_context(|| format!("loading {}", path.display()))
}

fn prompt_ids(loaded: &LoadedModel, prompt: &str, chat: bool) -> Result<Vec<u32>> {
    if chat {
        return loaded
            .chat_prompt_ids(prompt)
            .context("drop --chat for a plain prompt");
    }
    Ok(loaded.tokenizer()?.encode(prompt, true)?)
}

fn inspect(path: &Path) -> Result<()> {
    let source = match ModelSource::open(path) {
        Ok(source) => source,
        // A GGUF keel cannot run is still described, with the reason.
        Err(e) => match keel_gguf::GgufFile::open(path) {
            Ok(gguf) => return inspect_gguf(path, &gguf, &e),
            Err(_) => return Err(e).with_context(|| format!("opening {}", path.display())),
        },
    };
    let c = &source.config;
    let tensors = source.weights.list();
    let mut lines = vec![
        format!("path:          {}", path.display()),
        format!("architecture:  {}", c.architecture.name()),
    ];
    lines.extend(tensor_summary(
        path,
        tensors
            .iter()
            .map(|(_, dtype, shape)| (dtype.as_str(), shape)),
    )?);
    let modules = c.linear_modules();
    lines.extend([
        format!("layers:        {}", c.num_hidden_layers),
        format!(
            "hidden:        {} (intermediate {})",
            c.hidden_size, c.intermediate_size
        ),
        format!(
            "heads:         {} query, {} key/value, head_dim {}",
            c.num_attention_heads, c.num_key_value_heads, c.head_dim
        ),
        format!("vocab:         {}", c.vocab_size),
        format!(
            "rope:          theta {}, scaling {}{}",
            c.rope_theta,
            scaling_name(&c.rope_scaling),
            match c.rotary_dim < c.head_dim {
                true => format!(
                    ", rotating {} of {} head dimensions",
                    c.rotary_dim, c.head_dim
                ),
                false => String::new(),
            }
        ),
        format!("attention:     {}", attention_summary(c)),
        format!("tied embed:    {}", c.tie_word_embeddings),
        format!(
            "chat template: {}",
            if source.chat_template.is_some() {
                "yes"
            } else {
                "no"
            }
        ),
        format!("linear modules ({}):", modules.len()),
    ]);
    lines.extend(modules.iter().map(|m| format!("  {m}")));
    print_out(&(lines.join("\n") + "\n"))
}

/// What `keel inspect` can say of a GGUF keel cannot run: its tensors, and why.
fn inspect_gguf(path: &Path, gguf: &keel_gguf::GgufFile, why: &keel_model::Error) -> Result<()> {
    let arch = gguf
        .metadata
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .unwrap_or("(none given)");
    let mut lines = vec![
        format!("path:          {}", path.display()),
        format!("architecture:  {arch}"),
    ];
    lines.extend(tensor_summary(
        path,
        gguf.tensors.iter().map(|t| (t.ggml_type.name(), &t.shape)),
    )?);
    lines.push(format!("keel runs it:  no: {why}"));
    print_out(&(lines.join("\n") + "\n"))
}

/// Parameter count, size on disk and tensor types (with their counts) of
/// `(type, shape)` per tensor.
fn tensor_summary<'a>(
    path: &Path,
    tensors: impl Iterator<Item = (&'a str, &'a Vec<usize>)>,
) -> Result<Vec<String>> {
    let (mut params, mut types) = (0usize, Vec::<(&str, usize)>::new());
    for (ty, shape) in tensors {
        params += shape.iter().product::<usize>();
        match types.iter_mut().find(|(t, _)| *t == ty) {
            Some((_, n)) => *n += 1,
            None => types.push((ty, 1)),
        }
    }
    let types: Vec<String> = types.iter().map(|(t, n)| format!("{t} x{n}")).collect();
    Ok(vec![
        format!("parameters:    {params} ({:.1} M)", params as f64 / 1e6),
        format!("size:          {:.1} MB", disk_size(path)? as f64 / 1e6),
        format!("dtypes:        {}", types.join(", ")),
    ])
}

/// Bytes of a model file, or of the files in a model folder.
fn disk_size(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_dir() {
        return Ok(meta.len());
    }
    let mut total = 0;
    for entry in std::fs::read_dir(path).with_context(|| format!("listing {}", path.display()))? {
        let meta = entry?.metadata()?;
        if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

/// "all layers full", or how many slide, over how many positions, with
/// which RoPE base.
fn attention_summary(c: &keel_model::Config) -> String {
    let sliding = c
        .layer_types
        .iter()
        .filter(|&&t| t == keel_model::LayerType::Sliding)
        .count();
    match (sliding, c.sliding_window) {
        (0, _) | (_, None) => "full in every layer".into(),
        (n, Some(window)) => format!(
            "{n} sliding-window layers ({window} positions, RoPE theta {}), {} full",
            c.rope_local_theta.unwrap_or(c.rope_theta),
            c.num_hidden_layers - n
        ),
    }
}

fn scaling_name(s: &keel_model::RopeScaling) -> &'static str {
    match s {
        keel_model::RopeScaling::None => "none",
        keel_model::RopeScaling::Linear { .. } => "linear",
        keel_model::RopeScaling::Llama3 { .. } => "llama3",
        keel_model::RopeScaling::Factors(_) => "frequency factors",
        keel_model::RopeScaling::LongRope { .. } => "longrope",
    }
}

fn generate(args: &GenerateArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&args.top_p) || args.top_p == 0.0 {
        bail!("--top-p must be in (0, 1], got {}", args.top_p);
    }
    let mut loaded = load(&args.model, args.device)?;
    if let Some(dir) = &args.adapter {
        loaded
            .attach_adapter(dir, ADAPTER)
            .with_context(|| format!("attaching adapter {}", dir.display()))?;
    }
    let tokenizer = loaded.tokenizer()?;
    let sampling = Sampling {
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
    };
    let stop = loaded.stop_ids();
    let answer = |prompt: &str, on_token: &mut dyn FnMut(u32)| -> Result<Vec<u32>> {
        let ids = prompt_ids(&loaded, prompt, args.chat)?;
        Ok(keel_model::generate(
            &loaded.model,
            &ids,
            args.max_new_tokens,
            &sampling,
            &stop,
            on_token,
        ))
    };
    if let (Some(prompts), Some(out)) = (&args.prompts, &args.out) {
        let text = std::fs::read_to_string(prompts)
            .with_context(|| format!("reading {}", prompts.display()))?;
        let mut all = Vec::new();
        #[derive(serde::Deserialize)]
        struct PromptRow {
            prompt: String,
        }
        for (line, row) in keel_fs::jsonl::<PromptRow>(&text) {
            let row = row.with_context(|| {
                format!(
                    "{}:{line}: a row needs a \"prompt\" string",
                    prompts.display()
                )
            })?;
            all.push(row.prompt);
        }
        let mut rows = String::new();
        let bar = progress::bar(all.len(), "prompts");
        bar.set_message("answering");
        for (c, chunk) in all.chunks(keel_probes::BATCH).enumerate() {
            let ids = chunk
                .iter()
                .map(|p| prompt_ids(&loaded, p, args.chat))
                .collect::<Result<Vec<_>>>()?;
            // Prompt j samples with seed + j, however the prompts are batched.
            let sampling = Sampling {
                seed: args.seed + (c * keel_probes::BATCH) as u64,
                ..sampling.clone()
            };
            let answers = keel_model::generate_batch(
                &loaded.model,
                &ids,
                args.max_new_tokens,
                &sampling,
                &stop,
                |_, _| {},
            );
            for (prompt, answer) in chunk.iter().zip(answers) {
                let text = tokenizer.decode(&answer, true)?;
                rows.push_str(
                    &serde_json::json!({"prompt": prompt, "answer": text.trim()}).to_string(),
                );
                rows.push('\n');
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish();
        std::fs::write(out, rows).with_context(|| format!("writing {}", out.display()))?;
        println!("wrote {}", out.display());
        return Ok(());
    }
    let mut stdout = std::io::stdout();
    let (mut shown, mut all) = (String::new(), Vec::new());
    answer(args.prompt.as_deref().unwrap_or_default(), &mut |t| {
        // Decode the whole answer each time so multi-byte characters split
        // across tokens print whole.
        all.push(t);
        if let Ok(text) = tokenizer.decode(&all, true) {
            let _ = write!(stdout, "{}", &text[shown.len().min(text.len())..]);
            let _ = stdout.flush();
            shown = text;
        }
    })?;
    println!();
    Ok(())
}

/// `loss@N` or `grad@N`.
fn parse_nan_site(s: &str) -> Result<(usize, keel_train::NanSite), String> {
    let (site, step) = s.split_once('@').ok_or("expected loss@STEP or grad@STEP")?;
    let step: usize = step
        .parse()
        .map_err(|_| format!("`{step}` is not a step number"))?;
    match site {
        "loss" => Ok((step, keel_train::NanSite::Loss)),
        "grad" => Ok((step, keel_train::NanSite::Gradient)),
        other => Err(format!("`{other}`: expected loss or grad")),
    }
}

fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

fn gguf_dtype(d: GgufDtypeArg) -> keel_export::GgufDtype {
    match d {
        GgufDtypeArg::F32 => keel_export::GgufDtype::F32,
        GgufDtypeArg::F16 => keel_export::GgufDtype::F16,
    }
}

fn export(
    model: &Path,
    adapter: &Path,
    format: ExportFormat,
    out: &Path,
    dtype: GgufDtypeArg,
) -> Result<()> {
    let mut loaded = load(model, DeviceChoice::Flex)?;
    let file = AdapterFile::read(adapter)
        .with_context(|| format!("reading adapter {}", adapter.display()))?;
    loaded
        .model
        .attach(&file, ADAPTER)
        .with_context(|| format!("attaching {} to {}", adapter.display(), model.display()))?;
    let base_name = file
        .base_model
        .clone()
        .unwrap_or_else(|| model.display().to_string());
    let warnings = match format {
        ExportFormat::Peft => {
            let saved: Vec<_> = file.saved.clone().into_iter().collect();
            keel_export::export_peft(
                &loaded.model,
                ADAPTER,
                &file.config,
                &saved,
                &base_name,
                out,
            )?
        }
        ExportFormat::Gguf => {
            let dtype = gguf_dtype(dtype);
            let mut notes = keel_export::export_gguf_lora(
                &loaded.model,
                &loaded.config,
                ADAPTER,
                &file.config,
                out,
                dtype,
            )?;
            notes.extend(keel_export::servers::check(&file.config, &loaded.model));
            notes
        }
        ExportFormat::Merged if is_gguf(model) && is_gguf(out) => {
            keel_export::export_merged_gguf(
                &mut loaded,
                model,
                ADAPTER,
                file.config.has_lora(),
                out,
                gguf_dtype(dtype),
            )?;
            Vec::new()
        }
        ExportFormat::Merged => {
            keel_export::export_merged(&mut loaded, ADAPTER, file.config.has_lora(), out)?;
            Vec::new()
        }
    };
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    println!("wrote {}", out.display());
    Ok(())
}

fn adapter_info(dir: &Path) -> Result<()> {
    let file =
        AdapterFile::read(dir).with_context(|| format!("reading adapter {}", dir.display()))?;
    let c = &file.config;
    let params: usize = file
        .modules
        .values()
        .map(|m| m.a.1.len() + m.b.1.len() + m.magnitude.as_ref().map_or(0, Vec::len))
        .chain(
            file.saved
                .values()
                .map(|m| m.weight.len() + m.bias.as_ref().map_or(0, Vec::len)),
        )
        .sum();
    let bytes = std::fs::metadata(dir.join(keel_adapters::peft::WEIGHTS_FILE))
        .map(|m| m.len())
        .unwrap_or(0);
    let mut ranks: Vec<usize> = file.modules.values().map(|m| m.a.0[1]).collect();
    ranks.sort_unstable();
    ranks.dedup();
    let mut leaves: Vec<&str> = file
        .modules
        .keys()
        .filter_map(|n| n.rsplit('.').next())
        .collect();
    leaves.sort_unstable();
    leaves.dedup();
    let kind = match (c.variant, c.scaling) {
        _ if !c.has_lora() => "selective (modules trained in full, no LoRA)",
        (keel_adapters::Variant::Dora, _) => "DoRA",
        (_, keel_adapters::Scaling::Rs) => "LoRA (rsLoRA scaling)",
        _ => "LoRA",
    };
    let lines = [
        format!("adapter:       {}", dir.display()),
        format!("kind:          {kind}"),
        format!(
            "modules:       {} ({})",
            file.modules.len(),
            leaves.join(", ")
        ),
        format!(
            "layers:        {}",
            c.layers
                .as_ref()
                .map_or("all".to_string(), |l| format!("{l:?}"))
        ),
        format!(
            "ranks:         {ranks:?} (r = {}, alpha = {})",
            c.r, c.alpha
        ),
        format!(
            "trained fully: {}",
            if file.saved.is_empty() {
                "none".to_string()
            } else {
                format!("{} ({:?})", file.saved.len(), file.config.modules_to_save)
            }
        ),
        format!("parameters:    {params} trainable"),
        format!("size:          {bytes} bytes"),
        format!(
            "base model:    {}",
            file.base_model.as_deref().unwrap_or("(not recorded)")
        ),
        format!(
            "fingerprint:   {}",
            file.base_fingerprint.as_deref().unwrap_or("(not recorded)")
        ),
    ];
    print_out(&(lines.join("\n") + "\n"))
}

/// Prints to stdout; a closed pipe (`keel inspect M | head`) is not an error.
fn print_out(text: &str) -> Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn bench_generate(
    model: &Path,
    device: DeviceChoice,
    prompt_tokens: usize,
    new_tokens: usize,
) -> Result<()> {
    let loaded = load(model, device)?;
    let vocab = loaded.config.vocab_size as u32;
    // A fixed pseudo-random prompt: the figures must not depend on the text.
    let prompt: Vec<u32> = (0..prompt_tokens as u32)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();
    let greedy = Sampling::default();
    // Warm-up: kernels compile and caches fill outside the timed runs.
    keel_model::generate(
        &loaded.model,
        &prompt[..8.min(prompt.len())],
        2,
        &greedy,
        &[],
        |_| {},
    );
    let t0 = Instant::now();
    keel_model::generate(&loaded.model, &prompt, 1, &greedy, &[], |_| {});
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let out = keel_model::generate(&loaded.model, &prompt, new_tokens + 1, &greedy, &[], |_| {});
    let decode = (t1.elapsed().as_secs_f64() - prefill).max(1e-9);
    let report = serde_json::json!({
        "model": model.display().to_string(),
        "device": device.to_string(),
        "prompt_tokens": prompt_tokens,
        "prefill_tokens_per_s": prompt_tokens as f64 / prefill,
        "decode_tokens": out.len() - 1,
        "decode_tokens_per_s": (out.len() - 1) as f64 / decode,
        "peak_rss_bytes": keel_train::report::peak_rss_bytes(),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
