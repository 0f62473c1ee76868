//! Checks and losses on the data a run holds: whether every sample fits the model, and the
//! teacher-forced validation loss.

use std::path::Path;

use coconut_curriculum::{
    batches, collate_training, training_sample, CurriculumConfig, StagedSample, TokenizedSample,
};
use tch::{Kind, Tensor};

use crate::error::TrainError;
use crate::model_setup::LoadedModel;
use coconut_latent::{coconut_loss, DeviceBatch};

/// Checks that every sample of `file` fits a model of `positions` positions, before any
/// work is spent on it: its longest training form (every step kept, plus the most thoughts
/// and the two markers) and, for a split that is evaluated (`max_new_tokens` given), its
/// longest prompt plus the tokens generation may add. The error names the file and the
/// sample.
pub fn check_sample_lengths(
    file: &Path,
    samples: &[TokenizedSample],
    curriculum: &CurriculumConfig,
    max_new_tokens: Option<usize>,
    positions: usize,
) -> Result<(), TrainError> {
    let thoughts = curriculum.max_thoughts() + 2;
    for (index, s) in samples.iter().enumerate() {
        let steps: usize = s.steps.iter().map(Vec::len).sum();
        let training = s.question.len() + steps + s.answer.len() + thoughts;
        let generation = max_new_tokens.map_or(0, |n| s.question.len() + thoughts + n);
        let needed = training.max(generation);
        if needed > positions {
            let what = if generation > training {
                format!("{} for its prompt and eval.max_new_tokens", needed)
            } else {
                format!("{needed} in training")
            };
            return Err(TrainError::SampleTooLong {
                path: file.to_path_buf(),
                index,
                message: format!(
                    "needs {what}, the model has {positions}: raise model.n_positions or shorten the data"
                ),
            });
        }
    }
    Ok(())
}

/// The loss of the stage-`stage` training sequences of `samples` (no gradients), averaged
/// over their supervised tokens: the paper's validation loss.
pub fn teacher_forced_loss(
    loaded: &LoadedModel,
    curriculum: &CurriculumConfig,
    samples: &[TokenizedSample],
    stage: usize,
    batch_size: usize,
) -> f64 {
    let (total, tokens) = teacher_forced_sums(loaded, curriculum, samples, stage, batch_size);
    total / tokens.max(1.0)
}

/// [`teacher_forced_loss`] as the sum of the supervised tokens' losses and their number.
pub(crate) fn teacher_forced_sums(
    loaded: &LoadedModel,
    curriculum: &CurriculumConfig,
    samples: &[TokenizedSample],
    stage: usize,
    batch_size: usize,
) -> (f64, f64) {
    let special = loaded.tokenizer.special();
    // The sum stays on the device, read once at the end.
    let (mut total, mut tokens) = (Tensor::zeros([], (Kind::Float, loaded.vs.device())), 0i64);
    tch::no_grad(|| {
        for indices in batches(samples.len(), batch_size, None, 0) {
            let staged: Vec<StagedSample> = indices
                .iter()
                .map(|&i| training_sample(curriculum, &special, &samples[i], stage))
                .collect();
            let batch = DeviceBatch::new(
                &collate_training(&staged, &special),
                loaded.vs.device(),
                loaded.model.kind(),
            );
            let count = batch.supervised_tokens();
            if count > 0 {
                total += coconut_loss(loaded.model.as_ref(), &batch, false) * count as f64;
                tokens += count;
            }
        }
    });
    (total.double_value(&[]), tokens as f64)
}
