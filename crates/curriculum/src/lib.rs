//! Coconut data: loaders, tokenization, the stage-k curriculum and batching.
//!
//! Pure Rust and model-free (no tch): the trainer and evaluator turn [`Batch`] vectors into
//! tensors. The algorithm is specified in docs/DESIGN.md ("Data", "Tokens", "Curriculum",
//! "Batching") and follows the reference implementation (facebookresearch/coconut).
//!
//! Every item is at the crate root; the files split it by concern:
//! - `data.rs`: [`Sample`] and the Coconut JSON, iCoT line and GSM8k JSONL formats;
//! - `tokenizer/`: a model folder's HF [`Tokenizer`], its BOS, EOS, padding and stop ids
//!   read from the folder, with the latent and pause tokens added; or one trained here;
//! - `curriculum.rs`: the stage-k training sequence and labels of every [`Mode`], and the
//!   evaluation prompt;
//! - `batch.rs`: padding that lines up the latents of every row, and shuffled index batches.

#![warn(missing_docs)]

mod batch;
mod curriculum;
mod data;
mod error;
mod tokenizer;

pub use batch::{
    batches, collate_prompts, collate_training, length_grouped_batches, Batch, LENGTH_GROUP_WINDOW,
};
pub use curriculum::{
    eval_prompt, prompt_slots, prompt_with_slots, sample_stage, tokenize_samples, training_sample,
    CurriculumConfig, Mode, StagedSample, TokenizedSample, IGNORE_INDEX,
};
pub use data::{
    load_coconut_json, load_gsm8k_jsonl, load_icot_lines, load_samples, save_samples, Sample,
};
pub use error::CurriculumError;
pub use tokenizer::{
    SpecialTokens, Tokenizer, END_LATENT, EOS, GENERATION_CONFIG_FILE, LATENT, MIN_TRAINED_VOCAB,
    MODEL_CONFIG_FILE, PAUSE, START_LATENT, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE,
    TRAINING_TEXT_BYTES, TRAINING_WORD_BYTES,
};
