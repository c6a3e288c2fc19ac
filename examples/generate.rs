//! Load a model (HF folder or GGUF) and answer one chat message greedily:
//! the library calls behind `keel generate --chat`.
//!
//! cargo run --example generate -- ~/.cache/keel/models/SmolLM2-135M-Instruct.Q4_1.gguf "Why is the sky blue?"

use std::path::PathBuf;

use anyhow::{Context, Result};
use keel_model::{DeviceChoice, LoadedModel, Sampling};
use keel_text::Message;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(args.next().context("usage: generate MODEL [QUESTION]")?);
    let question = args
        .next()
        .unwrap_or_else(|| "What is the capital of France?".into());

    let model = LoadedModel::open(&path, &DeviceChoice::Flex.device()?)?;
    let template = model
        .chat_template
        .as_ref()
        .context("the model has no chat template")?;
    let prompt = template.render(&[Message::new("user", &question)], true)?;
    let ids = model.tokenizer()?.encode(&prompt, false)?;

    let answer = keel_model::generate(
        &model.model,
        &ids,
        128,
        &Sampling::default(),
        &model.config.eos_token_ids,
        |_| {},
    );
    println!("{}", model.tokenizer()?.decode(&answer, true)?);
    Ok(())
}
