//! Writing GGUF files: metadata and tensors of any type keel quantizes to
//! (adapters and merged models keel exports, test models), aligned as
//! llama.cpp reads them.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, ErrorKind};
use crate::ggml_type::GgmlType;
use crate::value::Value;

const ALIGNMENT: usize = 32;

/// A GGUF file being assembled in memory.
#[derive(Debug, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    /// Name, row-major shape (outermost first), type, little-endian data.
    tensors: Vec<(String, Vec<usize>, GgmlType, Vec<u8>)>,
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_string(out, s),
        Value::Array(items) => {
            // An empty array still needs an element type; u32 is as good as any.
            let elem = items.first().map_or(4, Value::type_id);
            out.extend(elem.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            items.iter().for_each(|i| put_value(out, i));
        }
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_metadata(&mut self, key: &str, value: Value) {
        self.metadata.push((key.to_string(), value));
    }

    /// Adds a tensor from `f32` values, stored as `ty`: any type
    /// [`quantize`](crate::quantize) writes, each row whole blocks.
    pub fn add_tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        values: &[f32],
        ty: GgmlType,
    ) -> Result<(), Error> {
        let n: usize = shape.iter().product();
        if n != values.len() {
            return Err(Error::invalid(
                format!("tensor `{name}`"),
                format!("shape {shape:?} holds {n} values, got {}", values.len()),
            ));
        }
        let row = shape.last().copied().unwrap_or(1);
        if !row.is_multiple_of(ty.block_len()) {
            return Err(Error::invalid(
                format!("tensor `{name}`"),
                format!(
                    "rows of {row} values are not whole {}-value {} blocks",
                    ty.block_len(),
                    ty.name()
                ),
            ));
        }
        let data = crate::quantize(ty, values)
            .map_err(|e| Error::invalid(format!("tensor `{name}`"), e.kind.to_string()))?;
        self.tensors
            .push((name.to_string(), shape.to_vec(), ty, data));
        Ok(())
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut out, key);
            out.extend(value.type_id().to_le_bytes());
            put_value(&mut out, value);
        }
        let mut offset = 0usize;
        for (name, shape, ty, data) in &self.tensors {
            put_string(&mut out, name);
            out.extend((shape.len() as u32).to_le_bytes());
            // GGUF lists dimensions innermost first.
            shape
                .iter()
                .rev()
                .for_each(|d| out.extend((*d as u64).to_le_bytes()));
            out.extend(ty.id().to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offset += data.len().div_ceil(ALIGNMENT) * ALIGNMENT;
        }
        out.resize(out.len().div_ceil(ALIGNMENT) * ALIGNMENT, 0);
        for (_, _, _, data) in &self.tensors {
            out.extend(data);
            out.resize(out.len().div_ceil(ALIGNMENT) * ALIGNMENT, 0);
        }
        out
    }

    /// Writes the file via a temporary name and a rename: an interrupted
    /// export never leaves a truncated GGUF at `path`.
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        let io = |e| Error::from(ErrorKind::Io(e)).with_path(path);
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("out.gguf");
        let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(&self.to_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GgufFile;

    #[test]
    fn what_is_written_reads_back() {
        let mut w = GgufWriter::new();
        w.add_metadata("general.architecture", Value::String("llama".into()));
        w.add_metadata("adapter.lora.alpha", Value::F32(16.0));
        w.add_metadata("x.ids", Value::Array(vec![Value::I32(-1), Value::I32(7)]));
        w.add_metadata("x.empty", Value::Array(vec![]));
        w.add_tensor(
            "a",
            &[3, 5],
            &(0..15).map(|v| v as f32 * 0.5).collect::<Vec<_>>(),
            GgmlType::F32,
        )
        .unwrap();
        w.add_tensor(
            "b",
            &[2, 3],
            &[1.0, -2.0, 0.5, 3.0, 0.25, -1.0],
            GgmlType::F16,
        )
        .unwrap();
        let path = std::env::temp_dir().join(format!("keel-writer-{}.gguf", std::process::id()));
        w.write(&path).unwrap();
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.metadata.str("general.architecture").unwrap(), "llama");
        assert_eq!(g.metadata.f64("adapter.lora.alpha").unwrap(), 16.0);
        assert_eq!(g.metadata.i64_array("x.ids").unwrap(), vec![-1, 7]);
        assert!(g.metadata.array("x.empty").unwrap().is_empty());
        let (shape, a) = g.tensor_f32("a").unwrap();
        assert_eq!((shape, a[14]), (vec![3, 5], 7.0));
        assert_eq!(
            g.tensor_f32("b").unwrap().1,
            vec![1.0, -2.0, 0.5, 3.0, 0.25, -1.0]
        );
        std::fs::remove_file(&path).unwrap();
        assert!(w.add_tensor("c", &[2, 2], &[1.0], GgmlType::F32).is_err());
    }
}
