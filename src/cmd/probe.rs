//! `keel probe` and `keel drift`: flags in, keel-probes out.

use std::path::{Path, PathBuf};

use anyhow::Result;
use keel_model::DeviceChoice;
use keel_probes::report::{results_jsonl, write_files};
use keel_probes::{Suite, Verdict, html};

/// `keel drift`'s gate did not pass: exit code 3 for a regression, 4 when
/// the prompts cannot tell the change from the limit.
#[derive(Debug)]
pub struct GateFailed(pub Verdict);

impl GateFailed {
    pub fn exit_code(&self) -> i32 {
        match self.0 {
            Verdict::Inconclusive => 4,
            _ => 3,
        }
    }
}

impl std::fmt::Display for GateFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Verdict::Inconclusive => write!(
                f,
                "the drift gate is inconclusive: too few prompts to tell a change from its limit (the report says how many would)"
            ),
            _ => write!(f, "alignment regression: the drift gate failed"),
        }
    }
}

impl std::error::Error for GateFailed {}

#[derive(clap::Args)]
pub struct ProbeArgs {
    /// HF folder or .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// A PEFT-format adapter to apply.
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
pub struct DriftArgs {
    /// The model before adaptation (HF folder or .gguf).
    #[arg(long)]
    base: PathBuf,
    /// The adapted model; defaults to --base (with --adapter on top).
    #[arg(long)]
    adapted: Option<PathBuf>,
    /// A PEFT-format adapter applied to the adapted side.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The adapter whose update aligned the base: the report then shows how
    /// similar each of --adapter's modules is to that alignment subspace.
    #[arg(long, requires = "adapter")]
    reference: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
struct Common {
    /// A suite file (TOML); keel's built-in default suite when absent.
    #[arg(long)]
    suite: Option<PathBuf>,
    /// Skip generation (and the judges that need answers): only the
    /// log-probability margin and the refusal direction.
    #[arg(long)]
    no_generate: bool,
    /// Probe only the first N prompts of each set.
    #[arg(long)]
    limit: Option<usize>,
    /// Output folder for the reports.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "flex")]
    device: DeviceChoice,
}

impl Common {
    fn suite(&self) -> Result<Suite> {
        let mut suite = match &self.suite {
            Some(path) => Suite::load(path)?,
            None => Suite::builtin(),
        };
        if self.no_generate {
            suite.generation = None;
            suite.kl = None;
            suite
                .sets
                .retain(|s| s.expect != keel_probes::Expect::Correct);
        }
        if let Some(limit) = self.limit {
            for s in &mut suite.sets {
                s.limit = Some(s.limit.map_or(limit, |l| l.min(limit)));
            }
        }
        Ok(suite)
    }
}

fn label(p: &Path) -> String {
    p.display().to_string()
}

pub fn probe(args: &ProbeArgs) -> Result<()> {
    let suite = args.common.suite()?;
    let sets = suite.read_sets()?;
    let loaded =
        super::open_maybe_adapter(&args.model, args.adapter.as_deref(), args.common.device)?;
    let start = std::time::Instant::now();
    let adapter = args.adapter.as_deref().map(label);
    let side = keel_probes::probe(
        &loaded,
        &suite,
        &sets,
        (&label(&args.model), adapter.as_deref()),
        &mut crate::progress::counter("probing"),
    )?;
    report_speed(side.results.len(), start);
    let json = serde_json::to_string_pretty(&side.report)? + "\n";
    write_files(
        &args.common.out,
        &[
            ("report.json", json),
            ("report.md", side.report.markdown()),
            ("results.jsonl", results_jsonl(&side.results, None)),
        ],
    )?;
    print!("{}", side.report.markdown());
    println!("\nwrote {}", args.common.out.display());
    Ok(())
}

fn report_speed(prompts: usize, start: std::time::Instant) {
    let s = start.elapsed().as_secs_f64();
    eprintln!(
        "{prompts} prompts in {s:.1} s ({:.2} prompts/s)",
        prompts as f64 / s
    );
}

pub fn drift(args: &DriftArgs) -> Result<()> {
    let suite = args.common.suite()?;
    let sets = suite.read_sets()?;
    let adapted_path = args.adapted.as_ref().unwrap_or(&args.base);
    let base = super::open(&args.base, args.common.device)?;
    let adapted =
        super::open_maybe_adapter(adapted_path, args.adapter.as_deref(), args.common.device)?;
    let start = std::time::Instant::now();
    let mut base_side = keel_probes::probe(
        &base,
        &suite,
        &sets,
        (&label(&args.base), None),
        &mut crate::progress::counter("probing base"),
    )?;
    let adapter = args.adapter.as_deref().map(label);
    let mut adapted_side = keel_probes::probe(
        &adapted,
        &suite,
        &sets,
        (&label(adapted_path), adapter.as_deref()),
        &mut crate::progress::counter("probing adapted"),
    )?;
    let mut report = keel_probes::drift(
        &suite,
        &sets,
        (&base, &mut base_side),
        (&adapted, &mut adapted_side),
        &mut crate::progress::counter("KL to base"),
    );
    if let Some(dir) = &args.reference {
        let subspace = super::reference_subspace(dir, args.common.device)?;
        let scores = keel_align::safe_lora::report(
            &adapted.model.linears(),
            keel_adapters::DEFAULT_ADAPTER,
            &subspace,
        );
        report.alignment_similarity = Some(
            scores
                .into_iter()
                .map(|m| keel_probes::report::ModuleScore {
                    module: m.module,
                    score: keel_probes::stats::r6(m.similarity),
                })
                .collect(),
        );
    }
    report_speed(2 * base_side.results.len(), start);
    let json = serde_json::to_string_pretty(&report)? + "\n";
    let results = results_jsonl(&base_side.results, Some("base"))
        + &results_jsonl(&adapted_side.results, Some("adapted"));
    write_files(
        &args.common.out,
        &[
            ("report.json", json),
            ("report.md", report.markdown()),
            ("report.html", html::drift_page(&report)),
            ("results.jsonl", results),
        ],
    )?;
    print!("{}", report.markdown());
    println!("\nwrote {}", args.common.out.display());
    if report.verdict != Verdict::Pass {
        return Err(GateFailed(report.verdict).into());
    }
    Ok(())
}
