//! The training engine: losses over (prompt, target) examples and the optimiser.

pub mod loss;
pub mod optim;

pub use loss::{Example, Reduction, backward_in_slices, conditional_nll, target_token_nlls};
pub use optim::{AdamW, AdamWConfig, AdamWState};
