//! Gradient checkpointing in the training loss. A binary of its own: dropout draws from
//! torch's process-wide generator, which tests running side by side in one process would
//! share.

mod common;

use std::collections::BTreeMap;

use coconut_curriculum::{collate_training, training_sample, CurriculumConfig, Mode};
use coconut_model::{Gpt2, Gpt2Config};
use coconut_trainer::adamw::{AdamW, AdamWConfig};
use coconut_trainer::{training_loss, DeviceBatch};
use common::{latent_batch, samples, SPECIAL};
use tch::{nn::VarStore, Device, Kind, Tensor};

/// Gradient checkpointing recomputes the first and the final pass in the backward pass: the
/// loss and every gradient are those of the passes that keep their activations, with dropout
/// on, with thoughts (rows with 3, 1 and 2, so the loss also reads thought passes) and
/// without (one pass), and with a micro-batch weight.
#[test]
fn gradient_checkpointing_gives_the_same_loss_and_gradients() {
    let mut config = Gpt2Config::new(44, 64, 16, 2, 2);
    (config.embd_pdrop, config.attn_pdrop, config.resid_pdrop) = (0.1, 0.1, 0.1);
    tch::manual_seed(7);
    let vs = VarStore::new(Device::Cpu);
    let model = Gpt2::new(&vs.root(), &config);
    let cot = CurriculumConfig { mode: Mode::Cot, ..CurriculumConfig::default() };
    let cot_batch = collate_training(
        &samples().iter().map(|s| training_sample(&cot, &SPECIAL, s, 0)).collect::<Vec<_>>(),
        &SPECIAL,
    );
    for batch in [latent_batch(), cot_batch] {
        let batch = DeviceBatch::new(&batch, Device::Cpu, Kind::Float);
        let run = |checkpointing: bool| {
            let adamw = AdamWConfig { lr: 1e-3, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0 };
            let mut optimizer = AdamW::new(vs.variables(), adamw);
            tch::manual_seed(3);
            let loss = training_loss(&model, &batch, checkpointing);
            let value = loss.value.double_value(&[]);
            loss.backward(&model, &mut optimizer, 0.5);
            let grads: BTreeMap<String, Tensor> =
                optimizer.gradients().iter().map(|(n, g)| (n.clone(), g.shallow_clone())).collect();
            (value, grads)
        };
        let (kept_loss, kept) = run(false);
        let (recomputed_loss, recomputed) = run(true);
        assert!((kept_loss - recomputed_loss).abs() < 1e-6, "{kept_loss} vs {recomputed_loss}");
        assert_eq!(kept.len(), vs.variables().len(), "every parameter gets a gradient");
        assert_eq!(kept.keys().collect::<Vec<_>>(), recomputed.keys().collect::<Vec<_>>());
        for (name, a) in &kept {
            let diff = (a - &recomputed[name]).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "gradient of {name} differs by {diff}");
        }
    }
}
