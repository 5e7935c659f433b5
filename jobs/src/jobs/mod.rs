//! One module per job, each with the same shape: its options, `run`, and its result type.

pub mod validate;
