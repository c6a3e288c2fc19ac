//! Training data through SmolLM2's real tokenizer and chat template (the
//! `tokenizer.json` and `chat_template.jinja` transformers saved): which
//! tokens are trained on, for each JSONL format, and errors naming the line.

mod common;

use common::{fixture, temp_dir};
use keel_data::{Example, load_examples, pack};
use keel_recipe::DataFormat;
use keel_text::{ChatTemplate, Tokenizer};

fn smollm2_text() -> (Tokenizer, ChatTemplate) {
    let dir = fixture("smollm2/hf-tokenizer");
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let template = ChatTemplate {
        source: std::fs::read_to_string(dir.join("chat_template.jinja")).unwrap(),
        bos_token: "<|im_start|>".into(),
        eos_token: "<|im_end|>".into(),
    };
    (tokenizer, template)
}

fn load(rows: &[&str], format: DataFormat, train_on_prompt: bool) -> Vec<Example> {
    let (tok, tmpl) = smollm2_text();
    let dir = temp_dir(&format!("data-{format:?}-{train_on_prompt}"));
    let path = dir.join("d.jsonl");
    std::fs::write(&path, rows.join("\n")).unwrap();
    let out = load_examples(&path, format, &tok, Some(&tmpl), 512, train_on_prompt).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    out.examples
}

fn trained_text(ex: &Example) -> String {
    let (tok, _) = smollm2_text();
    let ids: Vec<u32> = ex
        .ids
        .iter()
        .zip(&ex.mask)
        .filter(|(_, m)| **m)
        .map(|(i, _)| *i)
        .collect();
    tok.decode(&ids, false).unwrap()
}

#[test]
fn chat_rows_train_on_every_assistant_turn_only() {
    let row = r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]}"#;
    let ex = &load(&[row], DataFormat::Chat, false)[0];
    assert_eq!(trained_text(ex), "Hello!<|im_end|>\nParis.<|im_end|>\n");
    let (tok, tmpl) = smollm2_text();
    let msgs: Vec<keel_text::Message> =
        serde_json::from_str::<serde_json::Value>(row).unwrap()["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| serde_json::from_value(m.clone()).unwrap())
            .collect();
    // The ids are exactly the tokenized rendering: nothing added or lost.
    assert_eq!(
        ex.ids,
        tok.encode(&tmpl.render(&msgs, false).unwrap(), true)
            .unwrap()
    );
}

#[test]
fn prompt_formats_train_on_the_answer_and_eos() {
    let pc = load(
        &[r#"{"prompt": "2+2=", "completion": "4"}"#],
        DataFormat::PromptCompletion,
        false,
    );
    assert_eq!(trained_text(&pc[0]), "4<|im_end|>");
    let alpaca = load(
        &[r#"{"instruction": "Add", "input": "2 and 2", "output": "4"}"#],
        DataFormat::Alpaca,
        false,
    );
    assert_eq!(trained_text(&alpaca[0]), "4<|im_end|>\n");
    let all = load(
        &[r#"{"prompt": "2+2=", "completion": "4"}"#],
        DataFormat::PromptCompletion,
        true,
    );
    // (The first token is marked too, but collation never predicts it.)
    assert_eq!(trained_text(&all[0]), "2+2=4<|im_end|>");
}

#[test]
fn bad_rows_name_file_and_line() {
    let (tok, tmpl) = smollm2_text();
    let dir = temp_dir("data-bad");
    let path = dir.join("d.jsonl");
    std::fs::write(&path, "{\"text\": \"ok\"}\n{\"txet\": \"typo\"}\n").unwrap();
    let err = load_examples(&path, DataFormat::Text, &tok, Some(&tmpl), 64, false)
        .unwrap_err()
        .to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(err.contains("d.jsonl:2") && err.contains("txet"), "{err}");
}

#[test]
fn packing_keeps_examples_whole_and_masks_their_seams() {
    let rows = [
        r#"{"text": "one two"}"#,
        r#"{"text": "three four five"}"#,
        r#"{"text": "six"}"#,
    ];
    let examples = load(&rows, DataFormat::Text, false);
    let lens: Vec<usize> = examples.iter().map(|e| e.ids.len()).collect();
    let packed = pack(examples.clone(), lens[0] + lens[1]);
    assert_eq!(packed.len(), 2);
    assert_eq!(packed[0].ids.len(), lens[0] + lens[1]);
    assert!(
        !packed[0].mask[lens[0]],
        "the first token of a packed example is not a target"
    );
    assert_eq!(packed[1], examples[2]);
}
