//! JSONL rows to token sequences with loss masks.

use std::path::Path;

use keel_recipe::DataFormat;
use keel_text::{ChatTemplate, Message, Tokenizer};
use serde::Deserialize;

use crate::error::Error;

/// One training sequence: `mask[i]` says whether token `i` is a target
/// (predicted from the tokens before it).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub mask: Vec<bool>,
}

/// What loading a file produced.
#[derive(Debug, Clone)]
pub struct Tokenized {
    pub examples: Vec<Example>,
    /// Examples cut to `max_length`.
    pub truncated: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TextRow {
    text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptRow {
    prompt: String,
    completion: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlpacaRow {
    instruction: String,
    #[serde(default)]
    input: String,
    output: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatRow {
    messages: Vec<Message>,
}

/// Text pieces of one example, each trained on or not.
type Pieces = Vec<(String, bool)>;

/// The chat pieces of `messages`: what the template renders before each
/// assistant turn is context, the turn itself (with its end-of-turn marker)
/// is a target. Each rendered prefix must extend the previous one.
fn chat_pieces(t: &ChatTemplate, messages: &[Message]) -> Result<Pieces, String> {
    let mut pieces: Pieces = Vec::new();
    let mut done = String::new();
    for (i, m) in messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let before = t.render(&messages[..i], true).map_err(|e| e.to_string())?;
        let with = t
            .render(&messages[..=i], false)
            .map_err(|e| e.to_string())?;
        let (Some(context), Some(answer)) = (
            before.strip_prefix(done.as_str()),
            with.strip_prefix(before.as_str()),
        ) else {
            return Err("the chat template does not render conversations incrementally, so answers cannot be told apart".into());
        };
        pieces.push((context.to_string(), false));
        pieces.push((answer.to_string(), true));
        done = with;
    }
    if pieces.is_empty() {
        return Err("no assistant message to learn from".into());
    }
    Ok(pieces)
}

fn row_pieces(
    line: &str,
    format: DataFormat,
    template: Option<&ChatTemplate>,
    eos: &str,
) -> Result<Pieces, String> {
    let parse_err = |e: serde_json::Error| format!("not a {format:?} row: {e}");
    // Without a chat template, prompts use the Alpaca layout.
    let as_chat = |user: String, answer: String| -> Result<Pieces, String> {
        match template {
            Some(t) => chat_pieces(
                t,
                &[
                    Message::new("user", &user),
                    Message::new("assistant", &answer),
                ],
            ),
            None => Ok(vec![
                (
                    format!("### Instruction:\n{user}\n\n### Response:\n"),
                    false,
                ),
                (format!("{answer}{eos}"), true),
            ]),
        }
    };
    match format {
        DataFormat::Text => {
            let r: TextRow = serde_json::from_str(line).map_err(parse_err)?;
            Ok(vec![(format!("{}{eos}", r.text), true)])
        }
        DataFormat::PromptCompletion => {
            let r: PromptRow = serde_json::from_str(line).map_err(parse_err)?;
            Ok(vec![
                (r.prompt, false),
                (format!("{}{eos}", r.completion), true),
            ])
        }
        DataFormat::Alpaca => {
            let r: AlpacaRow = serde_json::from_str(line).map_err(parse_err)?;
            let user = if r.input.is_empty() {
                r.instruction
            } else {
                format!("{}\n\n{}", r.instruction, r.input)
            };
            as_chat(user, r.output)
        }
        DataFormat::Chat => {
            let r: ChatRow = serde_json::from_str(line).map_err(parse_err)?;
            let t = template.ok_or("the chat format needs a model with a chat template")?;
            chat_pieces(t, &r.messages)
        }
    }
}

/// Tokenizes the pieces as one text (so tokens merge across piece
/// boundaries as they would at inference) and marks the tokens that start
/// inside a trained piece.
fn tokenize(
    pieces: &Pieces,
    tokenizer: &Tokenizer,
    train_on_prompt: bool,
) -> Result<Example, Error> {
    let text: String = pieces.iter().map(|(p, _)| p.as_str()).collect();
    let mut spans = Vec::new();
    let mut at = 0;
    for (p, trained) in pieces {
        if *trained || train_on_prompt {
            spans.push((at, at + p.len()));
        }
        at += p.len();
    }
    let tokens = tokenizer.encode_with_offsets(&text, true)?;
    let (ids, mask) = tokens
        .iter()
        .map(|(id, (start, end))| {
            // Added special tokens (BOS) have an empty range at 0.
            let trained = start < end && spans.iter().any(|(s, e)| start >= s && start < e);
            (*id, trained)
        })
        .unzip();
    Ok(Example { ids, mask })
}

/// Reads and tokenizes a JSONL file. Each row is checked against `format`;
/// a bad row is an error naming the file and line.
pub fn load_examples(
    path: &Path,
    format: DataFormat,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    max_length: usize,
    train_on_prompt: bool,
) -> Result<Tokenized, Error> {
    let text = std::fs::read_to_string(path).map_err(keel_fs::io(path))?;
    parse_examples(
        &text,
        path,
        format,
        tokenizer,
        template,
        max_length,
        train_on_prompt,
    )
}

/// [`load_examples`] on JSONL text already in memory; `path` names it in
/// errors.
pub fn parse_examples(
    text: &str,
    path: &Path,
    format: DataFormat,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    max_length: usize,
    train_on_prompt: bool,
) -> Result<Tokenized, Error> {
    let eos = template.map(|t| t.eos_token.as_str()).unwrap_or_default();
    let mut examples = Vec::new();
    let mut truncated = 0;
    for (line_no, line) in keel_fs::jsonl_lines(text) {
        let row_err = |reason: String| Error::Row {
            path: path.to_path_buf(),
            line: line_no,
            reason,
        };
        let pieces = row_pieces(line, format, template, eos).map_err(row_err)?;
        let mut ex = tokenize(&pieces, tokenizer, train_on_prompt)?;
        if ex.ids.len() > max_length {
            ex.ids.truncate(max_length);
            ex.mask.truncate(max_length);
            truncated += 1;
        }
        if ex.mask.iter().skip(1).any(|m| *m) {
            examples.push(ex);
        }
    }
    if examples.is_empty() {
        return Err(Error::Data {
            path: path.to_path_buf(),
            reason: "no example with a token to train on".into(),
        });
    }
    Ok(Tokenized {
        examples,
        truncated,
    })
}

/// Holds out a seeded random `fraction` of the examples for evaluation.
pub fn split_eval(
    mut examples: Vec<Example>,
    fraction: f64,
    seed: u64,
) -> (Vec<Example>, Vec<Example>) {
    crate::batch::shuffle(&mut examples, seed ^ 0x5EED_E7A1);
    let n_eval = ((examples.len() as f64 * fraction).round() as usize)
        .clamp(1, examples.len().saturating_sub(1).max(1));
    let train = examples.split_off(n_eval);
    (train, examples)
}

/// Adds replay examples to `train` so that they make up `fraction` of the
/// result: a seeded draw from `replay`, cycling through it if it is
/// smaller than needed. Returns how many were added.
pub fn mix_replay(
    train: &mut Vec<Example>,
    mut replay: Vec<Example>,
    fraction: f64,
    seed: u64,
) -> usize {
    if replay.is_empty() {
        return 0;
    }
    let n = (fraction / (1.0 - fraction) * train.len() as f64).round() as usize;
    crate::batch::shuffle(&mut replay, seed ^ 0x4E91_A7C3);
    train.extend((0..n).map(|i| replay[i % replay.len()].clone()));
    n
}

/// Concatenates examples into sequences of at most `max_length` tokens;
/// an example never straddles two sequences.
pub fn pack(examples: Vec<Example>, max_length: usize) -> Vec<Example> {
    let mut out: Vec<Example> = Vec::new();
    for ex in examples {
        match out.last_mut() {
            Some(last) if last.ids.len() + ex.ids.len() <= max_length => {
                last.ids.extend(&ex.ids);
                // The first token of a packed example is predicted from the
                // previous example's end: not a target.
                last.mask.push(false);
                last.mask.extend(&ex.mask[1..]);
            }
            _ => out.push(ex),
        }
    }
    out
}
