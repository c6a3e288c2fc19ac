//! GGUF reading against the `gguf` Python package: every metadata value
//! type, dequantization of each supported tensor type, and quantization to
//! each type the package quantizes to, bit for bit.

mod common;

use common::{fixture, read_json};
use keel_gguf::{GgufFile, Value, quantize};
use safetensors::SafeTensors;

#[test]
fn metadata_values_match_the_gguf_package() {
    let gguf = GgufFile::open(fixture("gguf-quants/quants.gguf")).unwrap();
    let expected = read_json(&fixture("gguf-quants/expected_metadata.json"));
    let entries = expected["metadata"].as_object().unwrap();
    assert_eq!(gguf.metadata.len(), entries.len());
    for (key, want) in entries {
        let got = gguf
            .metadata
            .get(key)
            .unwrap_or_else(|| panic!("missing {key}"));
        let ty = want["type"].as_str().unwrap();
        let want = &want["value"];
        let ok = match got {
            Value::String(s) => want.as_str() == Some(s),
            Value::Bool(b) => want.as_bool() == Some(*b),
            Value::F32(f) => want.as_f64() == Some(*f as f64),
            Value::F64(f) => want.as_f64() == Some(*f),
            Value::Array(items) => {
                let want = want.as_array().unwrap();
                items.len() == want.len()
                    && items.iter().zip(want).all(|(g, w)| match g {
                        Value::String(s) => w.as_str() == Some(s),
                        other if other.as_i128().is_some() => {
                            Some(other.as_i128().unwrap())
                                == w.as_i64().map(i128::from).or(w.as_u64().map(i128::from))
                        }
                        other => other.as_f64() == w.as_f64(),
                    })
            }
            int => {
                int.as_i128()
                    == want
                        .as_i64()
                        .map(i128::from)
                        .or(want.as_u64().map(i128::from))
            }
        };
        assert!(ok, "{key} ({ty}): keel read {got:?}, gguf package {want}");
    }
    assert_eq!(
        gguf.tensors.len(),
        expected["tensor_count"].as_u64().unwrap() as usize
    );
}

#[test]
fn dequantization_is_bit_exact_with_the_gguf_package() {
    let gguf = GgufFile::open(fixture("gguf-quants/quants.gguf")).unwrap();
    let bytes = std::fs::read(fixture("gguf-quants/expected.safetensors")).unwrap();
    let expected = SafeTensors::deserialize(&bytes).unwrap();
    let mut checked = Vec::new();
    for info in &gguf.tensors {
        let want = expected.tensor(&info.name).unwrap();
        let want: Vec<f32> = want
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let (shape, got) = gguf.tensor_f32(&info.name).unwrap();
        assert_eq!(shape, vec![2, 512], "{}", info.name);
        let mismatches = got
            .iter()
            .zip(&want)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            mismatches,
            0,
            "{} ({}): {mismatches} values differ",
            info.name,
            info.ggml_type.name()
        );
        assert!(
            want.iter().any(|v| *v != 0.0),
            "{}: reference is all zeros",
            info.name
        );
        checked.push(info.ggml_type.name());
    }
    checked.sort_unstable();
    assert_eq!(
        checked,
        [
            "BF16", "F16", "F32", "IQ4_NL", "IQ4_XS", "Q2_K", "Q3_K", "Q4_0", "Q4_1", "Q4_K",
            "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0"
        ]
    );
}

/// keel's quantization gives the bytes `gguf.quants.quantize` wrote, from
/// the same values (saved beside the expected dequantization), for every
/// type the package quantizes to; the values include an all-zero block.
#[test]
fn quantization_is_bit_exact_with_the_gguf_package() {
    let gguf = GgufFile::open(fixture("gguf-quants/quants.gguf")).unwrap();
    let bytes = std::fs::read(fixture("gguf-quants/expected.safetensors")).unwrap();
    let expected = SafeTensors::deserialize(&bytes).unwrap();
    let mut checked = Vec::new();
    for info in &gguf.tensors {
        let Ok(source) = expected.tensor(&format!("{}.source", info.name)) else {
            continue;
        };
        let source: Vec<f32> = source
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let got = quantize(info.ggml_type, &source).unwrap();
        let want = gguf.tensor_bytes(info);
        let block = info.ggml_type.block_bytes();
        let differ: Vec<usize> = (0..want.len() / block)
            .filter(|&b| got[b * block..(b + 1) * block] != want[b * block..(b + 1) * block])
            .collect();
        assert_eq!(got.len(), want.len(), "{}", info.name);
        assert!(differ.is_empty(), "{}: blocks {differ:?} differ", info.name);
        checked.push(info.ggml_type.name());
    }
    checked.sort_unstable();
    assert_eq!(
        checked,
        ["BF16", "F16", "F32", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
    );
}

/// keel's K-quantization gives the bytes llama.cpp's own `ggml_quantize_chunk`
/// wrote (no importance matrix, as `llama-quantize` without `--imatrix`),
/// block for block, from the same values: rows of ordinary, tiny, huge,
/// heavy-tailed, one-signed, outlier, all-zero, flat and mostly-zero values.
#[test]
fn k_quantization_is_bit_exact_with_llama_cpp() {
    let gguf = GgufFile::open(fixture("gguf-kquants/kquants.gguf")).unwrap();
    let bytes = std::fs::read(fixture("gguf-kquants/source.safetensors")).unwrap();
    let source = SafeTensors::deserialize(&bytes).unwrap();
    let source = source.tensor("source").unwrap();
    assert_eq!(source.shape(), [10, 512]);
    let source: Vec<f32> = source
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let mut checked = Vec::new();
    for info in &gguf.tensors {
        let got = quantize(info.ggml_type, &source).unwrap();
        let want = gguf.tensor_bytes(info);
        assert_eq!(got.len(), want.len(), "{}", info.name);
        let block = info.ggml_type.block_bytes();
        let differ: Vec<usize> = (0..want.len() / block)
            .filter(|&b| got[b * block..(b + 1) * block] != want[b * block..(b + 1) * block])
            .collect();
        assert!(
            differ.is_empty(),
            "{}: blocks {differ:?} of {} differ",
            info.name,
            want.len() / block
        );
        checked.push(info.ggml_type.name());
    }
    assert_eq!(checked, ["Q4_K", "Q5_K", "Q6_K"]);
}

/// A type keel cannot dequantize (IQ2_XXS): the file opens and its tensor is
/// described; reading its values is an error naming file, tensor and type.
#[test]
fn an_unsupported_type_is_described_then_named() {
    let gguf = GgufFile::open(fixture("gguf-quants/other.gguf")).unwrap();
    let info = &gguf.tensors[0];
    assert_eq!(
        (info.ggml_type.name(), info.shape.as_slice(), info.n_bytes),
        ("IQ2_XXS", [2, 512].as_slice(), 4 * 66)
    );
    let err = gguf.tensor_f32("iq2_xxs").unwrap_err().to_string();
    assert!(
        err.contains("other.gguf") && err.contains("`iq2_xxs`") && err.contains("IQ2_XXS"),
        "{err}"
    );
}

/// `keel inspect` describes a GGUF keel cannot run (here an architecture it
/// does not know) instead of refusing it: tensor types, parameters, size,
/// and the reason.
#[test]
fn inspect_describes_a_gguf_keel_cannot_run() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "inspect".as_ref(),
            fixture("gguf-quants/quants.gguf").as_os_str(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "architecture:  keeltest",
        "parameters:    15360",
        "Q5_0 x1",
        "IQ4_XS x1",
        "size:          0.0 MB",
        "keel runs it:  no:",
        "\"keeltest\" is not supported",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
}

#[test]
fn truncated_file_names_the_tensor() {
    let bytes = std::fs::read(fixture("gguf-quants/quants.gguf")).unwrap();
    let dir = std::env::temp_dir().join(format!("keel-trunc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cut.gguf");
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let err = GgufFile::open(&path).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        err.contains("cut.gguf") && err.contains("truncated") && err.contains("tensor `"),
        "{err}"
    );
}
