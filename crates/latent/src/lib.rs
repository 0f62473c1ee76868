//! The Coconut multi-pass latent forward (Hao et al. 2024, section 3, figure 1), shared by
//! training and inference: a collated batch on the device ([`DeviceBatch`]), the n+1
//! sequential passes over it with a KV cache ([`latent_hidden_states`]), and the loss of a
//! batch ([`coconut_loss`], [`training_loss`]). Training adds the optimizer and the schedule
//! (`coconut-trainer`); generation adds decoding (`coconut-eval`); neither needs the other.

#![warn(missing_docs)]

mod coconut;

pub use coconut::{
    coconut_loss, latent_hidden_states, pass_ranges, training_loss, Backprop, DeviceBatch,
    TrainingLoss,
};
