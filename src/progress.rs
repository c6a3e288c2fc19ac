//! Progress on the terminal, in one style for training, probing and batch
//! generation; and the training hooks that turn Ctrl-C into a clean stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{ProgressBar, ProgressStyle};
use keel_train::{Hooks, StepMetrics};

/// A bar of `len` `unit`s on stderr.
pub fn bar(len: usize, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    let template = format!("{{bar:30}} {{pos}}/{{len}} {unit} | {{msg}} | ETA {{eta}}");
    bar.set_style(ProgressStyle::with_template(&template).expect("a valid template"));
    bar
}

/// A callback for `(done, total)` progress, drawing one bar labelled `what`.
pub fn counter(what: &str) -> impl FnMut(usize, usize) + '_ {
    let mut shown: Option<ProgressBar> = None;
    move |done, total| {
        let b = shown.get_or_insert_with(|| {
            let b = bar(total, "prompts");
            b.set_message(what.to_string());
            b
        });
        b.set_position(done as u64);
        if done == total {
            b.finish();
        }
    }
}

/// `keel train`'s view of a run: a bar with the loss, learning rate and
/// speed, and Ctrl-C (SIGINT, SIGTERM) asking the trainer to checkpoint and
/// stop after the step under way.
pub struct Training {
    bar: Option<ProgressBar>,
    stop: Arc<AtomicBool>,
}

impl Training {
    pub fn new() -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))?;
        Ok(Training { bar: None, stop })
    }
}

impl Hooks for Training {
    fn started(&mut self, total_steps: usize, step: usize) {
        let bar = bar(total_steps, "steps");
        bar.set_position(step as u64);
        self.bar = Some(bar);
    }

    fn stepped(&mut self, m: &StepMetrics) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!(
                "loss {:.4} | lr {:.2e} | {:.0} tok/s",
                m.loss, m.lr, m.tokens_per_s
            ));
            bar.set_position(m.step as u64);
        }
    }

    fn stop_requested(&mut self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn finished(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
