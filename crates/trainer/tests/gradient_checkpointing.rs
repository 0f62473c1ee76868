//! Gradient checkpointing in the training loss. A binary of its own: dropout draws from
//! torch's process-wide generator, which tests running side by side in one process would
//! share.

mod common;

use std::collections::BTreeMap;

use coconut_curriculum::{collate_training, training_sample, CurriculumConfig, Mode};
use coconut_model::testing::assert_close;
use coconut_model::testing::tiny_models;
use coconut_testing::assert_close as assert_scalar_close;
use coconut_trainer::gradients::Gradients;
use coconut_trainer::{training_loss, DeviceBatch};
use common::{latent_batch, samples, SAME, SPECIAL};
use tch::{Device, Tensor};

/// Gradient checkpointing recomputes the first and the final pass in the backward pass: the
/// loss and every gradient are those of the passes that keep their activations. With
/// dropout on; with thoughts (rows with 3, 1 and 2, so the loss also reads thought passes),
/// with one thought (no thought pass between the two) and without (one pass); with one
/// layer and two; over two weighted micro-batches (the second draws its dropout masks after
/// the first's backward pass).
#[test]
fn gradient_checkpointing_gives_the_same_loss_and_gradients() {
    let batch_at = |mode: Mode, stage: usize| {
        let config = CurriculumConfig { mode, ..CurriculumConfig::default() };
        let staged: Vec<_> =
            samples().iter().map(|s| training_sample(&config, &SPECIAL, s, stage)).collect();
        collate_training(&staged, &SPECIAL)
    };
    let one_thought = batch_at(Mode::Coconut, 1);
    assert!(one_thought.latent_columns.iter().all(|c| c.len() == 1));
    let batches = [latent_batch(), one_thought, batch_at(Mode::Cot, 0)];
    for (arch, vs, model) in [1, 2].into_iter().flat_map(|n| tiny_models(44, n, 0.1, 7)) {
        let model = model.as_ref();
        let n_layer = model.shape().n_layer;
        for (index, batch) in batches.iter().enumerate() {
            let batch = DeviceBatch::new(batch, Device::Cpu, model.kind());
            let run = |checkpointing: bool| {
                let mut grads = Gradients::new(vs.variables());
                tch::manual_seed(3);
                let mut losses = Vec::new();
                for _micro_batch in 0..2 {
                    let loss = training_loss(model, &batch, checkpointing);
                    losses.push(loss.value.double_value(&[]));
                    loss.backward(model, &mut grads, 0.5);
                }
                let grads: BTreeMap<String, Tensor> = grads.sums();
                (losses, grads)
            };
            let case = format!("{arch}, {n_layer} layers, batch {index}");
            let (kept_losses, kept) = run(false);
            let (recomputed_losses, recomputed) = run(true);
            assert_ne!(kept_losses[0], kept_losses[1], "{case}: dropout differs per micro-batch");
            for (a, b) in kept_losses.iter().zip(&recomputed_losses) {
                assert_scalar_close(*b, *a, SAME, &format!("{case}: loss"));
            }
            assert_eq!(kept.len(), vs.variables().len(), "{case}: every parameter gets a gradient");
            assert_eq!(kept.keys().collect::<Vec<_>>(), recomputed.keys().collect::<Vec<_>>());
            for (name, a) in &kept {
                assert_close(&recomputed[name], a, SAME, &format!("{case}: gradient of {name}"));
            }
        }
    }
}
