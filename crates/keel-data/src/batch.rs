//! Batches: a deterministic per-epoch shuffle, a resumable position, and
//! padding to the longest sequence in the batch.

use keel_adapters::rng::{self, Rng, SliceRandom};

use crate::example::Example;

/// A seeded shuffle (rand's Fisher-Yates): the same order on every platform.
pub fn shuffle<T>(v: &mut [T], seed: u64) {
    v.shuffle(&mut rng::seeded(seed));
}

/// Inputs and next-token targets for one step, row-major `[batch, seq]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub batch: usize,
    pub seq: usize,
    pub inputs: Vec<i64>,
    pub targets: Vec<i64>,
    /// 1 where the target is trained on, 0 for prompts and padding.
    pub weights: Vec<f32>,
}

impl Batch {
    /// Number of trained target tokens.
    pub fn target_tokens(&self) -> usize {
        self.weights.iter().filter(|w| **w > 0.0).count()
    }

    /// Pads `examples` to the longest; position `t` predicts token `t + 1`.
    pub fn collate(examples: &[&Example], pad_id: u32) -> Batch {
        let seq = examples
            .iter()
            .map(|e| e.ids.len())
            .max()
            .unwrap_or(1)
            .saturating_sub(1)
            .max(1);
        let n = examples.len();
        let (mut inputs, mut targets, mut weights) = (
            vec![pad_id as i64; n * seq],
            vec![pad_id as i64; n * seq],
            vec![0.0; n * seq],
        );
        for (b, ex) in examples.iter().enumerate() {
            for t in 0..ex.ids.len().saturating_sub(1) {
                inputs[b * seq + t] = ex.ids[t] as i64;
                targets[b * seq + t] = ex.ids[t + 1] as i64;
                weights[b * seq + t] = if ex.mask[t + 1] { 1.0 } else { 0.0 };
            }
        }
        Batch {
            batch: n,
            seq,
            inputs,
            targets,
            weights,
        }
    }
}

/// Walks a data set in batches, epoch after epoch, each epoch in a fresh
/// seeded order. Its position is two numbers, so a checkpoint can resume it.
#[derive(Debug, Clone)]
pub struct Batcher {
    n: usize,
    batch_size: usize,
    seed: u64,
    pub epoch: usize,
    /// Examples of this epoch already handed out.
    pub pos: usize,
    order: Vec<usize>,
}

impl Batcher {
    pub fn new(n: usize, batch_size: usize, seed: u64) -> Self {
        let mut b = Batcher {
            n,
            batch_size,
            seed,
            epoch: 0,
            pos: 0,
            order: Vec::new(),
        };
        b.reorder();
        b
    }

    /// Continues from a saved (epoch, pos).
    pub fn resume(n: usize, batch_size: usize, seed: u64, epoch: usize, pos: usize) -> Self {
        let mut b = Batcher {
            n,
            batch_size,
            seed,
            epoch,
            pos,
            order: Vec::new(),
        };
        b.reorder();
        b
    }

    fn reorder(&mut self) {
        self.order = (0..self.n).collect();
        // Mix seed and epoch so that (seed, epoch + 1) and (seed + 1, epoch) differ.
        let mixed = rng::seeded(self.seed).next_u64()
            ^ (self.epoch as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        shuffle(&mut self.order, mixed);
    }

    /// Batches per epoch (the last one may be short).
    pub fn batches_per_epoch(&self) -> usize {
        self.n.div_ceil(self.batch_size)
    }

    /// The next batch's example indices; an epoch's short tail is a batch.
    pub fn next_indices(&mut self) -> Vec<usize> {
        if self.pos >= self.n {
            self.epoch += 1;
            self.pos = 0;
            self.reorder();
        }
        let end = (self.pos + self.batch_size).min(self.n);
        let out = self.order[self.pos..end].to_vec();
        self.pos = end;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_cover_everything_once_and_resume_exactly() {
        let mut a = Batcher::new(10, 4, 7);
        let mut seen: Vec<usize> = (0..3).flat_map(|_| a.next_indices()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        let e1: Vec<Vec<usize>> = (0..3).map(|_| a.next_indices()).collect();
        assert_eq!(a.epoch, 1);
        let mut b = Batcher::new(10, 4, 7);
        (0..4).for_each(|_| {
            b.next_indices();
        });
        let mut c = Batcher::resume(10, 4, 7, b.epoch, b.pos);
        assert_eq!(c.next_indices(), e1[1]);
        assert_ne!(
            e1[0],
            Batcher::new(10, 4, 8).next_indices(),
            "another seed, another order"
        );
    }

    #[test]
    fn collate_shifts_targets_and_masks_padding() {
        let a = Example {
            ids: vec![1, 2, 3],
            mask: vec![false, false, true],
        };
        let b = Example {
            ids: vec![4, 5],
            mask: vec![false, true],
        };
        let batch = Batch::collate(&[&a, &b], 0);
        assert_eq!((batch.batch, batch.seq), (2, 2));
        assert_eq!(batch.inputs, vec![1, 2, 4, 0]);
        assert_eq!(batch.targets, vec![2, 3, 5, 0]);
        assert_eq!(batch.weights, vec![0.0, 1.0, 1.0, 0.0]);
        assert_eq!(batch.target_tokens(), 2);
    }
}
