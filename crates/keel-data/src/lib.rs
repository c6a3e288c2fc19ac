//! Training data: JSONL rows in one of four formats become token sequences
//! with a loss mask, rendered through the model's own chat template where
//! there is one. Loss is on answers only unless asked otherwise; short
//! examples can be packed; the order is shuffled deterministically per
//! epoch from the seed.

mod batch;
mod error;
mod example;

pub use batch::{Batch, Batcher, shuffle};
pub use error::Error;
pub use example::{
    Example, Tokenized, load_examples, mix_replay, pack, parse_examples, split_eval,
};
