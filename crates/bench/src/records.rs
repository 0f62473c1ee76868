//! The JSON lines of `coconut bench`: one record type per kind of measurement, as written,
//! and the fields the summary and the comparison with the reference read back.

use serde::{Deserialize, Serialize};

/// A generation measurement (`generate_reference`, `generate_batched`).
#[derive(Debug, Serialize)]
pub(super) struct GenerateRecord {
    pub name: &'static str,
    pub model: &'static str,
    pub batch: usize,
    pub stage: usize,
    pub n_samples: usize,
    pub max_new: usize,
    pub ignore_eos: bool,
    pub mean_prompt_len: f64,
    pub generated_tokens: usize,
    pub total_s: f64,
    pub samples_per_s: f64,
    pub gen_tokens_per_s: f64,
    pub tokenize_s: f64,
    pub peak_rss_mb: f64,
    pub threads: usize,
}

/// The latent passes' cost (`latent_overhead`): the stage-k step against the plain step
/// on the same tokens.
#[derive(Debug, Serialize)]
pub(super) struct OverheadRecord {
    pub name: &'static str,
    pub model: &'static str,
    pub batch: usize,
    pub stage: usize,
    pub steps: usize,
    pub warmup: usize,
    pub latent_median_s: f64,
    pub plain_median_s: f64,
    pub ratio: f64,
    pub latent_all_s: Vec<f64>,
    pub plain_all_s: Vec<f64>,
    pub peak_rss_mb: f64,
    pub threads: usize,
}

/// Training steps (`train_step`, `plain_step`).
#[derive(Debug, Serialize)]
pub(super) struct StepRecord {
    pub name: &'static str,
    pub model: &'static str,
    pub batch: usize,
    pub stage: usize,
    pub seq_len: usize,
    pub real_tokens: usize,
    pub supervised_tokens: i64,
    pub model_calls: usize,
    pub steps: usize,
    pub warmup: usize,
    pub median_s: f64,
    pub min_s: f64,
    pub max_s: f64,
    pub fwd_s: f64,
    pub bwd_s: f64,
    pub opt_s: f64,
    pub padded_tokens_per_s: f64,
    pub real_tokens_per_s: f64,
    pub tokenize_s: f64,
    pub collate_s: f64,
    pub collate_share: f64,
    pub final_loss: f64,
    pub all_s: Vec<f64>,
    pub rss_mb_after_each_step: Vec<f64>,
    pub rss_growth_mb: f64,
    pub peak_rss_mb: f64,
    pub threads: usize,
    pub gradient_checkpointing: bool,
}

/// Operator counts (`ops_per_latent_pass`, `ops_per_latent_pass_bf16`).
#[derive(Debug, Serialize)]
pub(super) struct OpCountRecord {
    pub name: &'static str,
    pub model: &'static str,
    pub batch: usize,
    pub stage: usize,
    /// Thought passes of the stage-k step (the stage-0 step has none).
    pub latent_passes: usize,
    /// Operators of a stage-0 training step, forward and backward.
    pub ops_stage0: u64,
    /// Operators of the stage-k training step on the same samples.
    pub ops_stage_k: u64,
    /// `(ops_stage_k - ops_stage0) / k`.
    pub ops_per_latent_pass: f64,
    /// Operators of an update after the last backward pass, gradient clipping included.
    pub optimizer_ops_per_step: u64,
}

/// A checkpoint's checksums against its save (`checkpoint_hash`).
#[derive(Debug, Serialize)]
pub(super) struct HashRecord {
    pub name: &'static str,
    pub model: &'static str,
    pub batch: usize,
    pub stage: usize,
    /// Bytes of the checkpoint's files (the manifest's input).
    pub checkpoint_bytes: usize,
    /// A whole save, written, fsynced and renamed, the manifest included.
    pub save_s: f64,
    /// The manifest alone, from the same bytes in memory.
    pub hash_s: f64,
    pub hash_share_of_save: f64,
    pub hash_gb_per_s: f64,
    /// A file the size of a 1B model's f32 weights, checked as a load checks it.
    pub file_1b_bytes: u64,
    pub file_1b_hash_s: f64,
    pub file_1b_gb_per_s: f64,
}

/// Data-parallel optimizer steps (`ddp_step`).
#[derive(Debug, Serialize)]
pub(super) struct DdpRecord {
    pub name: &'static str,
    pub model: &'static str,
    pub stage: usize,
    /// Samples per micro-batch.
    pub micro_batch: usize,
    /// Micro-batches per optimizer step, shared out among the ranks.
    pub micro_batches_per_step: usize,
    pub ranks: usize,
    /// Whether the optimizer state is sharded across the ranks (ZeRO-1).
    pub sharded: bool,
    /// Bytes of the optimizer state this rank holds (its part when sharded).
    pub optimizer_state_bytes: i64,
    pub threads_per_rank: usize,
    pub steps: usize,
    pub median_step_s: f64,
    pub tokens_per_s: f64,
    /// The collectives' share of the step (the all-reduce, or the reduce-scatter and the
    /// all-gather), timed from when the ranks have met.
    pub allreduce_share: f64,
    /// Rank 0's share of the step spent waiting for the other ranks to finish their
    /// backward pass (micro-batches of different lengths), before the all-reduce.
    pub rank_wait_share: f64,
    pub peak_rss_mb: f64,
}

/// One JSON line of any record: the text the bench prints and writes. Keys come out as a
/// JSON object's do (sorted), so a line reads the same whatever the record's field order.
pub(super) fn json_line(record: &impl Serialize) -> String {
    serde_json::to_value(record).expect("records serialise").to_string()
}

/// The fields of a result line (ours, or the reference's) that the summary and the
/// comparison read; a figure the line lacks (or holds as null) is `None`.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct ResultLine {
    pub name: String,
    pub model: String,
    pub stage: u64,
    #[serde(default)]
    pub batch: Option<u64>,
    #[serde(default)]
    pub gradient_checkpointing: Option<bool>,
    #[serde(default)]
    pub ratio: Option<f64>,
    #[serde(default)]
    pub samples_per_s: Option<f64>,
    #[serde(default)]
    pub median_s: Option<f64>,
    #[serde(default)]
    pub collate_share: Option<f64>,
    #[serde(default)]
    pub tokens_per_s: Option<f64>,
    #[serde(default)]
    pub allreduce_share: Option<f64>,
    #[serde(default)]
    pub median_step_s: Option<f64>,
    #[serde(default)]
    pub optimizer_state_bytes: Option<i64>,
    #[serde(default)]
    pub peak_rss_mb: Option<f64>,
    #[serde(default)]
    pub ops_per_latent_pass: Option<f64>,
    #[serde(default)]
    pub optimizer_ops_per_step: Option<f64>,
    #[serde(default)]
    pub hash_share_of_save: Option<f64>,
}
