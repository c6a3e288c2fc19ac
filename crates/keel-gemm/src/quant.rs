//! The product with a frozen weight kept in its GGUF blocks (Q4_0 … Q6_K,
//! the I-quants keel reads, or F16/BF16/F32): the weight as served, never
//! dense in memory. Each parallel task dequantizes the blocks under its
//! columns into an f32 panel and multiplies the panel through `gemm`, for the
//! forward product `x · Wᵀ` and the input gradient `dy · W` alike.

use keel_gguf::{GgmlType, dequantize_into};

use crate::{Weight, blockwise_into, size};

/// Output columns per task of the forward product: as many rows of `W`,
/// whole, so any block size fits.
const ROWS_PER_TASK: usize = 64;

/// A weight `W[rows, cols]` in ggml's layout: each row `cols` values in
/// whole blocks of its type, rows one after another. (A GGUF tensor of
/// shape `[cols, rows]`, ne0 first; a projection's `[out, in]`.)
#[derive(Debug, Clone, Copy)]
pub struct QuantWeight<'w> {
    ty: GgmlType,
    bytes: &'w [u8],
    rows: usize,
    cols: usize,
}

impl<'w> QuantWeight<'w> {
    /// `bytes` read as `rows × cols` values of type `ty`.
    ///
    /// # Panics
    /// Where [`QuantWeight::try_new`] errs: callers check their input with
    /// it first (the loader names the tensor).
    pub fn new(ty: GgmlType, bytes: &'w [u8], rows: usize, cols: usize) -> Self {
        Self::try_new(ty, bytes, rows, cols).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `bytes` read as `rows × cols` values of type `ty`.
    ///
    /// # Errors
    /// If keel cannot dequantize `ty`, `cols` is not whole blocks, or
    /// `bytes` is not `rows` rows of them.
    pub fn try_new(
        ty: GgmlType,
        bytes: &'w [u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self, String> {
        let name = ty.name();
        if matches!(ty, GgmlType::Other(_)) {
            return Err(format!("keel cannot multiply by {name} blocks"));
        }
        if !cols.is_multiple_of(ty.block_len()) {
            return Err(format!(
                "rows of {cols} values are not whole {}-value {name} blocks",
                ty.block_len()
            ));
        }
        let row_bytes = cols / ty.block_len() * ty.block_bytes();
        if Some(bytes.len()) != rows.checked_mul(row_bytes) {
            return Err(format!(
                "{} bytes are not {rows} rows of {cols} {name} values",
                bytes.len()
            ));
        }
        Ok(QuantWeight {
            ty,
            bytes,
            rows,
            cols,
        })
    }

    /// Bytes of one row.
    fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_len() * self.ty.block_bytes()
    }

    /// Appends columns `cols` (whole blocks, or up to the row's end) of row
    /// `r`, dequantized.
    fn dequantize_row(&self, r: usize, cols: std::ops::Range<usize>, out: &mut Vec<f32>) {
        let (len, bytes) = (self.ty.block_len(), self.ty.block_bytes());
        debug_assert!(
            cols.start.is_multiple_of(len)
                && (cols.end.is_multiple_of(len) || cols.end == self.cols),
            "a panel's columns {cols:?} are not whole {len}-value blocks"
        );
        let row = r * self.row_bytes();
        let blocks = cols.start / len..cols.end.div_ceil(len);
        let span = row + blocks.start * bytes..row + blocks.end * bytes;
        dequantize_into(self.ty, &self.bytes[span], out)
            .expect("QuantWeight::new checked the type and the block sizes");
    }

    /// Appends row `r`, dequantized: an embedding table's lookup, a
    /// vocabulary-major head's token row.
    ///
    /// # Panics
    /// If `r` is not a row.
    pub fn row_into(&self, r: usize, out: &mut Vec<f32>) {
        assert!(r < self.rows, "row {r} of a {}-row weight", self.rows);
        self.dequantize_row(r, 0..self.cols, out);
    }

    /// `out[m, rows] = a[m, cols] · Wᵀ`: a projection's forward pass.
    ///
    /// # Panics
    /// If `a` is not `m × cols` or `out` not `m × rows`.
    pub fn matmul_transposed_into(&self, a: &[f32], m: usize, out: &mut [f32]) {
        let (k, n) = (self.cols, self.rows);
        if self.checked(a, m, out, k, n) {
            blockwise_into(
                Weight::NK,
                ROWS_PER_TASK,
                a,
                (m, k, n),
                out,
                |rows, panel| {
                    for r in rows {
                        self.dequantize_row(r, 0..k, panel);
                    }
                },
            );
        }
    }

    /// `out[m, cols] = a[m, rows] · W`: the input gradient of
    /// [`QuantWeight::matmul_transposed_into`].
    ///
    /// # Panics
    /// If `a` is not `m × rows` or `out` not `m × cols`.
    pub fn matmul_into(&self, a: &[f32], m: usize, out: &mut [f32]) {
        let (k, n) = (self.rows, self.cols);
        // Whole blocks per task, 64 columns at least.
        let width = ROWS_PER_TASK.next_multiple_of(self.ty.block_len());
        if self.checked(a, m, out, k, n) {
            blockwise_into(Weight::KN, width, a, (m, k, n), out, |cols, panel| {
                for r in 0..k {
                    self.dequantize_row(r, cols.clone(), panel);
                }
            });
        }
    }

    /// Checks `a` (`m × k`) and `out` (`m × n`); false when there is nothing
    /// to multiply (`out` then holds the product, zeros or nothing).
    fn checked(&self, a: &[f32], m: usize, out: &mut [f32], k: usize, n: usize) -> bool {
        let ty = self.ty.name();
        assert_eq!(
            a.len(),
            size(m, k),
            "{ty} product: activations are not [{m}, {k}]"
        );
        assert_eq!(
            out.len(),
            size(m, n),
            "{ty} product: output is not [{m}, {n}]"
        );
        if k == 0 {
            out.fill(0.0);
        }
        m > 0 && n > 0 && k > 0
    }
}

#[cfg(test)]
mod tests {
    use half::f16;
    use keel_gguf::dequantize;

    use super::*;
    use crate::tests::{assert_matches, reference, values};

    /// Every type keel dequantizes, with the byte offsets of its f16 scales.
    const TYPES: [(GgmlType, &[usize]); 15] = [
        (GgmlType::F32, &[]),
        (GgmlType::F16, &[]),
        (GgmlType::BF16, &[]),
        (GgmlType::Q4_0, &[0]),
        (GgmlType::Q4_1, &[0, 2]),
        (GgmlType::Q5_0, &[0]),
        (GgmlType::Q5_1, &[0, 2]),
        (GgmlType::Q8_0, &[0]),
        (GgmlType::Q2K, &[80, 82]),
        (GgmlType::Q3K, &[108]),
        (GgmlType::Q4K, &[0, 2]),
        (GgmlType::Q5K, &[0, 2]),
        (GgmlType::Q6K, &[208]),
        (GgmlType::IQ4NL, &[0]),
        (GgmlType::IQ4XS, &[0]),
    ];

    /// Random blocks of `ty` whose scales are finite and small, so every
    /// value is: the quantized bits are arbitrary, as in a real file.
    fn blocks(ty: GgmlType, scales: &[usize], count: usize, seed: u64) -> Vec<u8> {
        let bytes = ty.block_bytes();
        let raw = values(count * bytes, seed);
        let mut out: Vec<u8> = raw.iter().map(|x| (x.to_bits() >> 7) as u8).collect();
        for (b, block) in out.chunks_exact_mut(bytes).enumerate() {
            for (i, &at) in scales.iter().enumerate() {
                let scale = f16::from_f32(0.01 + 0.002 * ((b + i) % 7) as f32);
                block[at..at + 2].copy_from_slice(&scale.to_le_bytes());
            }
        }
        match ty {
            // Raw floats: the stream's values themselves.
            GgmlType::F32 => raw[..count].iter().flat_map(|x| x.to_le_bytes()).collect(),
            GgmlType::F16 => raw[..count]
                .iter()
                .flat_map(|&x| f16::from_f32(x).to_le_bytes())
                .collect(),
            GgmlType::BF16 => raw[..count]
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
            _ => out,
        }
    }

    /// Both products equal the f64 product of the dequantized weight, on
    /// shapes whose rows are not a multiple of a task's 64 and whose
    /// columns are one or several blocks, not a multiple of 64, for every
    /// type; a row read alone is that row of the dequantized weight.
    #[test]
    fn the_product_is_that_of_the_dequantized_weight() {
        for (ty, scales) in TYPES {
            let len = ty.block_len().max(16);
            for (m, rows, blocks_per_row) in [(1, 1, 1), (13, 7, 3), (29, 70, 2), (3, 130, 5)] {
                let cols = len * blocks_per_row;
                let count = rows * cols / ty.block_len();
                let bytes = blocks(ty, scales, count, rows as u64);
                let w = QuantWeight::new(ty, &bytes, rows, cols);
                let dense: Vec<f64> = dequantize(ty, &bytes)
                    .unwrap()
                    .into_iter()
                    .map(f64::from)
                    .collect();
                assert!(dense.iter().all(|x| x.is_finite()), "{}", ty.name());
                let what = |dir: &str| format!("{} {dir} {m}x{rows}x{cols}", ty.name());

                let a = values(m * cols, 5);
                let mut got = vec![f32::NAN; m * rows];
                w.matmul_transposed_into(&a, m, &mut got);
                let a64: Vec<f64> = a.iter().map(|&x| f64::from(x)).collect();
                let want = reference(&a64, &dense, m, cols, rows, Weight::NK);
                assert_matches(&got, want, &what("x·Wᵀ"));

                let dy = values(m * rows, 6);
                let mut got = vec![f32::NAN; m * cols];
                w.matmul_into(&dy, m, &mut got);
                let dy64: Vec<f64> = dy.iter().map(|&x| f64::from(x)).collect();
                let want = reference(&dy64, &dense, m, rows, cols, Weight::KN);
                assert_matches(&got, want, &what("dy·W"));

                let mut row = Vec::new();
                w.row_into(rows - 1, &mut row);
                let last: Vec<f64> = row.into_iter().map(f64::from).collect();
                assert_eq!(last, dense[(rows - 1) * cols..], "{}", what("last row"));
            }
        }
    }

    #[test]
    #[should_panic(expected = "not whole 32-value Q8_0 blocks")]
    fn rows_of_partial_blocks_are_refused() {
        QuantWeight::new(GgmlType::Q8_0, &[0; 34], 1, 16);
    }
}
