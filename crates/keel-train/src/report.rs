//! The run report: what a run cost, in the figures a small team budgets by.

use serde::Serialize;

/// Watts assumed per busy core when no energy counter is readable: a
/// typical server core under load (stated in the report).
pub const WATTS_PER_CORE: f64 = 10.0;

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub steps: usize,
    pub wall_s: f64,
    pub tokens: u64,
    pub tokens_per_s: f64,
    pub peak_rss_bytes: Option<u64>,
    pub trainable_params: usize,
    pub adapter_bytes: u64,
    pub final_loss: Option<f64>,
    pub eval_loss: Option<f64>,
    pub eval_perplexity: Option<f64>,
    pub energy_joules: Option<f64>,
    /// How the energy was measured: "rapl" or "cpu-time x W per core".
    pub energy_source: String,
    pub stopped_early: bool,
    /// The alignment preservation applied (`[alignment]`), in words.
    pub alignment: String,
}

impl RunReport {
    /// A short table for the terminal.
    pub fn table(&self) -> String {
        let opt = |v: Option<f64>, unit: &str| v.map_or("-".into(), |v| format!("{v:.4}{unit}"));
        [
            format!("steps            {}", self.steps),
            format!("wall time        {:.1} s", self.wall_s),
            format!("tokens/s         {:.1}", self.tokens_per_s),
            format!(
                "peak RSS         {}",
                self.peak_rss_bytes
                    .map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
            ),
            format!("trainable params {}", self.trainable_params),
            format!("adapter size     {} bytes", self.adapter_bytes),
            format!("final loss       {}", opt(self.final_loss, "")),
            format!(
                "eval loss / ppl  {} / {}",
                opt(self.eval_loss, ""),
                opt(self.eval_perplexity, "")
            ),
            format!(
                "energy           {} ({})",
                opt(self.energy_joules.map(|j| j / 3600.0), " Wh"),
                self.energy_source
            ),
            format!("alignment        {}", self.alignment),
        ]
        .join("\n")
    }
}

/// This process's resource use so far (`getrusage`).
fn usage() -> Option<libc::rusage> {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given and touches nothing else.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr()) } == 0;
    // SAFETY: initialised by the successful call (and zeroed before it).
    ok.then(|| unsafe { u.assume_init() })
}

/// Peak resident memory of this process.
pub fn peak_rss_bytes() -> Option<u64> {
    // Linux reports ru_maxrss in KiB.
    usage().map(|u| u.ru_maxrss as u64 * 1024)
}

/// This process's resident set now (Linux), in bytes.
pub fn rss_bytes() -> Option<u64> {
    proc_status_bytes("VmRSS:")
}

fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// CPU seconds this process has used (user + system).
pub fn cpu_seconds() -> Option<f64> {
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    usage().map(|u| seconds(u.ru_utime) + seconds(u.ru_stime))
}

/// The package energy counter (Intel RAPL), in joules, when readable.
pub fn rapl_joules() -> Option<f64> {
    let uj: f64 = std::fs::read_to_string("/sys/class/powercap/intel-rapl:0/energy_uj")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(uj / 1e6)
}
