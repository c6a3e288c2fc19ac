use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, ErrorKind};
use crate::ggml_type::GgmlType;
use crate::value::{Metadata, Value};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal; deeper nesting than this is only ever an attack.
const MAX_ARRAY_DEPTH: usize = 3;

/// One entry of the tensor table.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Row-major shape, outermost first (GGUF stores it innermost first): an
    /// HF `[out, in]` weight has shape `[out, in]` here too.
    pub shape: Vec<usize>,
    pub ggml_type: GgmlType,
    /// Byte offset of the data from the start of the file.
    pub offset: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A GGUF file, memory-mapped, with its header parsed and checked.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// The whole file, as mapped: a tensor's bytes are at its
/// [`GgufFile::tensor_range`], so they can be shared without a copy.
impl AsRef<[u8]> for GgufFile {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::from(ErrorKind::Io(e)).with_path(path))?;
        // SAFETY: the map is read-only; like every mmap reader we rely on the
        // file not being truncated underneath us while it is open.
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| Error::from(ErrorKind::Io(e)).with_path(path))?;
        let (version, metadata, tensors) = parse(&map).map_err(|e| e.with_path(path))?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            map,
            version,
            metadata,
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor (bounds were checked when the file was opened).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.map[self.tensor_range(info)]
    }

    /// Where a tensor's bytes lie in the file ([`AsRef`] gives the file's).
    pub fn tensor_range(&self, info: &TensorInfo) -> std::ops::Range<usize> {
        info.offset as usize..(info.offset + info.n_bytes) as usize
    }

    /// Dequantizes a tensor by name into `f32`, row-major.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), Error> {
        let info = self
            .tensor(name)
            .ok_or_else(|| Error::from(ErrorKind::MissingTensor(name.to_string())))
            .map_err(|e| e.with_path(&self.path))?;
        if let GgmlType::Other(t) = info.ggml_type {
            return Err(Error::from(ErrorKind::UnsupportedType {
                tensor: name.to_string(),
                type_id: t.id,
                name: t.name,
            })
            .with_path(&self.path));
        }
        let data = crate::dequantize(info.ggml_type, self.tensor_bytes(info))
            .map_err(|e| e.with_path(&self.path))?;
        Ok((info.shape.clone(), data))
    }
}

/// A bounds-checked little-endian cursor over the file.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, field: &dyn Fn() -> String) -> Result<&'a [u8], Error> {
        if n > self.remaining() {
            return Err(ErrorKind::Truncated {
                field: field(),
                offset: self.pos as u64,
                need: n,
                len: self.buf.len() as u64,
            }
            .into());
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.buf[start..self.pos])
    }

    fn array<const N: usize>(&mut self, field: &dyn Fn() -> String) -> Result<[u8; N], Error> {
        Ok(self
            .take(N as u64, field)?
            .try_into()
            .expect("length checked"))
    }

    fn u32(&mut self, field: &dyn Fn() -> String) -> Result<u32, Error> {
        self.array(field).map(u32::from_le_bytes)
    }

    fn u64(&mut self, field: &dyn Fn() -> String) -> Result<u64, Error> {
        self.array(field).map(u64::from_le_bytes)
    }

    fn string(&mut self, field: &dyn Fn() -> String) -> Result<String, Error> {
        let len = self.u64(field)?;
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| Error::invalid(field(), "string is not valid UTF-8"))
    }

    /// Checks that `count` items of at least `min_bytes` each can fit in the
    /// rest of the file, so a lying count is refused before any allocation.
    fn check_count(&self, count: u64, min_bytes: u64, field: &str) -> Result<usize, Error> {
        if count.saturating_mul(min_bytes) > self.remaining() {
            return Err(Error::invalid(
                field,
                format!(
                    "count {count} cannot fit in the {} bytes left in the file",
                    self.remaining()
                ),
            ));
        }
        Ok(count as usize)
    }

    fn value(&mut self, type_id: u32, key: &str, depth: usize) -> Result<Value, Error> {
        let field = || format!("metadata `{key}`");
        Ok(match type_id {
            0 => Value::U8(self.array::<1>(&field)?[0]),
            1 => Value::I8(self.array::<1>(&field)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(&field)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(&field)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(&field)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(&field)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(&field)?)),
            7 => match self.array::<1>(&field)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(Error::invalid(field(), format!("bool byte is {b}"))),
            },
            8 => Value::String(self.string(&field)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(Error::invalid(field(), "arrays nested too deeply"));
                }
                let elem_type = self.u32(&field)?;
                let count = self.u64(&field)?;
                let count = self.check_count(count, min_value_bytes(elem_type), &field())?;
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(self.value(elem_type, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(u64::from_le_bytes(self.array(&field)?)),
            11 => Value::I64(i64::from_le_bytes(self.array(&field)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(&field)?)),
            other => {
                return Err(Error::invalid(
                    field(),
                    format!("unknown value type {other}"),
                ));
            }
        })
    }
}

/// The fewest bytes a value of this type can take (a string or array has at
/// least its length prefix).
fn min_value_bytes(type_id: u32) -> u64 {
    match type_id {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        // An unknown type fails when the first element is read.
        _ => 1,
    }
}

type Parsed = (u32, Metadata, Vec<TensorInfo>);

fn parse(buf: &[u8]) -> Result<Parsed, Error> {
    let mut cur = Cursor { buf, pos: 0 };
    let magic: [u8; 4] = cur.array(&|| "magic".into())?;
    if &magic != MAGIC {
        return Err(ErrorKind::BadMagic(magic).into());
    }
    let version = cur.u32(&|| "version".into())?;
    if !(2..=3).contains(&version) {
        return Err(ErrorKind::UnsupportedVersion(version).into());
    }
    let n_tensors = cur.u64(&|| "tensor_count".into())?;
    let n_kv = cur.u64(&|| "metadata_kv_count".into())?;
    // A key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes.
    let n_kv = cur.check_count(n_kv, 13, "metadata_kv_count")?;

    let mut metadata = Metadata::default();
    for i in 0..n_kv {
        let key = cur.string(&|| format!("metadata key #{i}"))?;
        let type_id = cur.u32(&|| format!("metadata `{key}` type"))?;
        let value = cur.value(type_id, &key, 0)?;
        metadata.push(key, value);
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_i128() {
            Some(a) if a > 0 && (a as u64).is_power_of_two() && a <= 1 << 20 => a as u64,
            _ => {
                return Err(Error::invalid(
                    "general.alignment",
                    format!("{} is not a power of two", v.describe()),
                ));
            }
        },
    };

    // A tensor entry takes at least 8 (name) + 4 (n_dims) + 4 (type) + 8 (offset).
    let n_tensors = cur.check_count(n_tensors, 24, "tensor_count")?;
    let mut raw = Vec::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = cur.string(&|| format!("tensor #{i} name"))?;
        let field = |what: &str| format!("tensor `{name}` {what}");
        let n_dims = cur.u32(&|| field("n_dims"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(Error::invalid(
                field("n_dims"),
                format!("{n_dims} dimensions (1 to {MAX_DIMS} allowed)"),
            ));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            ne.push(cur.u64(&|| field(&format!("dimension {d}")))?);
        }
        let type_id = cur.u32(&|| field("type"))?;
        let offset = cur.u64(&|| field("offset"))?;
        raw.push((name, ne, type_id, offset));
    }
    let data_start = (cur.pos as u64).div_ceil(alignment) * alignment;
    let file_len = buf.len() as u64;

    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(raw.len());
    for (name, ne, type_id, offset) in raw {
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
            Error::invalid(
                format!("tensor `{name}` type"),
                format!("{type_id} is not a ggml tensor type"),
            )
        })?;
        let n_bytes = tensor_bytes(&name, &ne, ggml_type)?;
        if offset % alignment != 0 {
            return Err(Error::invalid(
                format!("tensor `{name}` offset"),
                format!("{offset} is not a multiple of the alignment {alignment}"),
            ));
        }
        let start = data_start.checked_add(offset);
        let end = start.and_then(|s| s.checked_add(n_bytes));
        match end {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(ErrorKind::Truncated {
                    field: format!("tensor `{name}` data"),
                    offset: data_start.saturating_add(offset),
                    need: n_bytes,
                    len: file_len,
                }
                .into());
            }
        }
        tensors.push(TensorInfo {
            shape: ne.iter().rev().map(|&d| d as usize).collect(),
            name,
            ggml_type,
            offset: data_start + offset,
            n_bytes,
        });
    }
    check_layout(&tensors)?;
    Ok((version, metadata, tensors))
}

/// Byte size of a tensor, refusing shapes whose product overflows or whose
/// rows do not split into whole blocks.
fn tensor_bytes(name: &str, ne: &[u64], ty: GgmlType) -> Result<u64, Error> {
    let field = || format!("tensor `{name}` shape");
    let n_elements = ne
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= isize::MAX as u64 / 4)
        .ok_or_else(|| Error::invalid(field(), format!("{ne:?} has too many elements")))?;
    let block = ty.block_len() as u64;
    if !ne[0].is_multiple_of(block) {
        return Err(Error::invalid(
            field(),
            format!(
                "row length {} is not a multiple of the {} block size {block}",
                ne[0],
                ty.name()
            ),
        ));
    }
    Ok(n_elements / block * ty.block_bytes() as u64)
}

fn check_layout(tensors: &[TensorInfo]) -> Result<(), Error> {
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
    by_offset.sort_by_key(|t| t.offset);
    for pair in by_offset.windows(2) {
        if pair[0].offset + pair[0].n_bytes > pair[1].offset {
            return Err(Error::invalid(
                format!("tensor `{}` data", pair[1].name),
                format!("overlaps tensor `{}`", pair[0].name),
            ));
        }
    }
    let mut names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    if let Some(dup) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::invalid(
            format!("tensor `{}`", dup[0]),
            "appears twice in the tensor table",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(n_tensors.to_le_bytes());
        b.extend(n_kv.to_le_bytes());
        b
    }

    fn kind(buf: &[u8]) -> String {
        parse(buf).unwrap_err().kind.to_string()
    }

    #[test]
    fn lying_counts_are_refused_before_allocating() {
        assert!(kind(&header(1 << 60, 0)).contains("tensor_count"));
        assert!(kind(&header(0, u64::MAX)).contains("metadata_kv_count"));
    }

    #[test]
    fn lying_string_length_is_truncation() {
        let mut b = header(0, 1);
        b.extend(u64::MAX.to_le_bytes());
        b.extend([0u8; 16]);
        assert!(kind(&b).contains("metadata key #0"));
    }

    #[test]
    fn overflowing_shape_names_the_tensor() {
        let mut b = header(1, 0);
        b.extend(1u64.to_le_bytes());
        b.push(b'w');
        b.extend(2u32.to_le_bytes());
        b.extend(u64::MAX.to_le_bytes());
        b.extend(u64::MAX.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        let msg = kind(&b);
        assert!(msg.contains("tensor `w` shape"), "{msg}");
    }

    #[test]
    fn data_past_the_end_is_truncation() {
        let mut b = header(1, 0);
        b.extend(1u64.to_le_bytes());
        b.push(b'w');
        b.extend(1u32.to_le_bytes());
        b.extend(8u64.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        let msg = kind(&b);
        assert!(msg.contains("tensor `w` data"), "{msg}");
    }

    #[test]
    fn bad_magic_and_version() {
        assert!(matches!(
            parse(b"GGML\0\0\0\0").unwrap_err().kind,
            ErrorKind::BadMagic(_)
        ));
        let mut b = header(0, 0);
        b[4] = 9;
        assert!(matches!(
            parse(&b).unwrap_err().kind,
            ErrorKind::UnsupportedVersion(9)
        ));
    }
}
