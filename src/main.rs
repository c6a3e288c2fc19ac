//! `keel`: the command-line front end, one module per subcommand in
//! `cmd/`; no model logic lives here.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod cmd;
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
    Train(cmd::train::Args),
    /// Evaluate an adapter on a recipe's eval set (loss and perplexity, JSON).
    Eval(cmd::eval::Args),
    /// Recipe tools.
    #[command(subcommand)]
    Recipe(cmd::recipe::Command),
    /// Generate text from a prompt.
    Generate(cmd::generate::Args),
    /// Print a model's architecture, parameter count, dtypes and linear modules.
    Inspect(cmd::inspect::Args),
    /// Convert a GGUF model into an HF folder that transformers loads.
    Convert(cmd::convert::Args),
    /// Export an adapter for a server: PEFT folder, GGUF LoRA, or merged model.
    Export(cmd::export::Args),
    /// Adapter tools.
    #[command(subcommand)]
    Adapter(cmd::adapter::Command),
    /// Alignment preservation on a trained adapter (Safe LoRA, similarity).
    #[command(subcommand)]
    Align(cmd::align::AlignCommand),
    /// Run the alignment probe suite on a model (optionally with an adapter).
    Probe(cmd::probe::ProbeArgs),
    /// Probe a model before and after adaptation and gate the difference:
    /// exit code 0 when the gate passes, 3 on a regression.
    Drift(cmd::probe::DriftArgs),
    /// Benchmarks (not tests): print figures as JSON.
    #[command(subcommand)]
    Bench(cmd::bench::Command),
}

fn main() {
    keep_freed_memory();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        // Documented: CI pipelines tell a failed gate from a failed run.
        let code = e
            .downcast_ref::<cmd::probe::GateFailed>()
            .map_or(1, cmd::probe::GateFailed::exit_code);
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
        Command::Train(args) => cmd::train::run(args),
        Command::Eval(args) => cmd::eval::run(args),
        Command::Recipe(c) => cmd::recipe::run(c),
        Command::Generate(args) => cmd::generate::run(args),
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Convert(args) => cmd::convert::run(args),
        Command::Export(args) => cmd::export::run(args),
        Command::Adapter(c) => cmd::adapter::run(c),
        Command::Align(c) => cmd::align::run(&c),
        Command::Probe(args) => cmd::probe::probe(&args),
        Command::Drift(args) => cmd::probe::drift(&args),
        Command::Bench(c) => cmd::bench::run(c),
    }
}
