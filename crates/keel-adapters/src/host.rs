//! Host-side tensor helpers shared by the safetensors readers and writers.

use safetensors::Dtype;

/// Little-endian safetensors bytes to `f32`; `Err` names the unsupported dtype.
pub fn to_f32(dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>, String> {
    Ok(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(format!(
                "dtype {other:?} is not supported (f32, f16, bf16 are)"
            ));
        }
    })
}

/// `f32` values as little-endian bytes, for a safetensors view.
pub fn to_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Transposes a row-major `[rows, cols]` matrix.
pub fn transpose(rows: usize, cols: usize, data: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

/// safetensors bytes with every JSON object in the header in sorted key
/// order. The `safetensors` crate writes its metadata in hash-map order,
/// which changes from process to process: the same adapter would be
/// written as different bytes.
pub fn sorted_header(mut bytes: Vec<u8>) -> Vec<u8> {
    use serde_json::{Map, Value};
    fn sorted(v: Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut pairs: Vec<(String, Value)> = m.into_iter().collect();
                pairs.sort_by(|a, b| a.0.cmp(&b.0));
                Value::Object(
                    pairs
                        .into_iter()
                        .map(|(k, v)| (k, sorted(v)))
                        .collect::<Map<_, _>>(),
                )
            }
            other => other,
        }
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: Value =
        serde_json::from_slice(&bytes[8..8 + n]).expect("the header safetensors wrote");
    let text = serde_json::to_string(&sorted(header)).expect("JSON");
    // The same keys and values: never longer than the padded original.
    let padded = format!("{text:<n$}");
    bytes[8..8 + n].copy_from_slice(padded.as_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    #[test]
    fn sorted_header_makes_the_bytes_independent_of_hash_order() {
        let data = to_bytes(&[1.0, 2.0]);
        let write = || {
            let meta: std::collections::HashMap<String, String> = (0..8)
                .map(|i| (format!("key{i}"), format!("v{i}")))
                .collect();
            let view = TensorView::new(Dtype::F32, vec![2], &data).unwrap();
            sorted_header(safetensors::serialize([("t", view)], Some(meta)).unwrap())
        };
        let first = write();
        for _ in 0..5 {
            assert_eq!(write(), first);
        }
        let st = safetensors::SafeTensors::deserialize(&first).unwrap();
        assert_eq!(
            to_f32(Dtype::F32, st.tensor("t").unwrap().data()).unwrap(),
            [1.0, 2.0]
        );
    }
}
