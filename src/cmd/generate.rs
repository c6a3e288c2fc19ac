//! `keel generate`: text from a prompt, streamed; or answers to a JSONL
//! file of prompts, in batches.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use keel_model::{DeviceChoice, LoadedModel, Sampling};

use crate::progress;

#[derive(clap::Args)]
pub struct Args {
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

pub fn run(args: Args) -> Result<()> {
    if !(0.0..=1.0).contains(&args.top_p) || args.top_p == 0.0 {
        bail!("--top-p must be in (0, 1], got {}", args.top_p);
    }
    let loaded = super::open_maybe_adapter(&args.model, args.adapter.as_deref(), args.device)?;
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

fn prompt_ids(loaded: &LoadedModel, prompt: &str, chat: bool) -> Result<Vec<u32>> {
    if chat {
        return loaded
            .chat_prompt_ids(prompt)
            .context("drop --chat for a plain prompt");
    }
    Ok(loaded.tokenizer()?.encode(prompt, true)?)
}
