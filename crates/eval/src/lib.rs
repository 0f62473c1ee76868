//! Coconut evaluation: batched latent generation with a KV cache ([`generate`]), the
//! figures of the paper's Table 1 ([`evaluate`]), thought inspection ([`inspect_thoughts`])
//! and diagnostics over many questions ([`thought_diagnostics`]), comparison tables
//! ([`comparison_table`]), and the paper's analysis of latent reasoning as search
//! ([`latent_search`]).

#![warn(missing_docs)]

mod ask;
mod diagnostics;
mod error;
mod generate;
mod inspect;
pub mod latent_search;
mod metrics;
mod table;

pub use ask::{ask, AskOptions, Reply};
pub use diagnostics::{thought_diagnostics, ThoughtDiagnostics, ThoughtStats};
pub use error::EvalError;
pub use generate::{generate, generate_without_cache, Generation};
pub use inspect::{
    inspect_prompt, inspect_samples, inspect_thoughts, mean_embedding_norm, thoughts_report,
    SampleThoughts, Thought,
};
pub use metrics::{
    evaluate, extract_answer, normalize_answer, EvalMetrics, EvalOptions, Prediction,
};
pub use table::{comparison_table, TableRow};

/// The README's library example, compiled as a doc test so that it stays true to the code.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeExample;
