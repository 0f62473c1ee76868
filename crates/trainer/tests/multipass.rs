//! The multi-pass forward against a naive implementation that recomputes the whole prefix
//! without a cache at every pass: same loss, same gradients for every parameter, for every
//! architecture.

mod common;

use coconut_curriculum::{collate_training, training_sample, Batch, CurriculumConfig, Mode};
use coconut_model::testing::assert_close;
use coconut_model::testing::tiny_models;
use coconut_model::{causal_bias, CausalLm, KvCache};
use coconut_testing::{assert_close as assert_scalar_close, Tolerance};
use coconut_trainer::adamw::{AdamW, AdamWConfig};
use coconut_trainer::gradients::Gradients;
use coconut_trainer::{coconut_loss, latent_hidden_states, pass_ranges, DeviceBatch};
use common::{latent_batch, samples, SAME, SPECIAL};
use tch::{nn::VarStore, Device, Kind, Reduction, Tensor};

/// One tiny model of every architecture, without dropout.
fn models() -> Vec<(&'static str, VarStore, Box<dyn CausalLm>)> {
    tiny_models(44, 2, 0.0, 7)
}

/// The naive Coconut forward: before thought i, the whole sequence is recomputed from
/// scratch and the hidden state before each i-th latent is written into its embedding.
fn naive_loss(model: &dyn CausalLm, batch: &Batch) -> Tensor {
    let (b, t) = (batch.batch_size as i64, batch.seq_len as i64);
    let ids = Tensor::from_slice(&batch.input_ids).view([b, t]);
    let mask = Tensor::from_slice(&batch.attention_mask).view([b, t]);
    let pos = Tensor::from_slice(&batch.position_ids).view([b, t]);
    let labels = Tensor::from_slice(&batch.labels).view([b, t]);
    let bias = causal_bias(&mask, Kind::Float);
    let mut embeds = model.embed(&ids);
    for i in 0..batch.max_latents() {
        let hidden = model.forward_embeds(&embeds, &pos, &bias, None, true);
        let mut rows = Vec::new();
        for (r, cols) in batch.latent_columns.iter().enumerate() {
            let row = embeds.get(r as i64);
            rows.push(match cols.get(i) {
                Some(&c) => {
                    let c = c as i64;
                    let thought = hidden.get(r as i64).get(c - 1).unsqueeze(0);
                    Tensor::cat(&[row.narrow(0, 0, c), thought, row.narrow(0, c + 1, t - c - 1)], 0)
                }
                None => row,
            });
        }
        embeds = Tensor::stack(&rows, 0);
    }
    let hidden = model.forward_embeds(&embeds, &pos, &bias, None, true);
    let logits = model.lm_head(&hidden); // (B, T, V): every position, as the reference does
    let v = logits.size()[2];
    logits.narrow(1, 0, t - 1).reshape([-1, v]).cross_entropy_loss::<Tensor>(
        &labels.narrow(1, 1, t - 1).reshape([-1]),
        None,
        Reduction::Mean,
        -100,
        0.0,
    )
}

fn gradients(vs: &VarStore, loss: &Tensor) -> Vec<(String, Tensor)> {
    for v in vs.trainable_variables() {
        let mut v = v;
        v.zero_grad();
    }
    loss.backward();
    let mut grads: Vec<(String, Tensor)> =
        vs.variables().into_iter().map(|(n, v)| (n, v.grad().copy())).collect();
    grads.sort_by(|a, b| a.0.cmp(&b.0));
    grads
}

#[test]
fn multipass_equals_naive_recompute_in_loss_and_gradients() {
    for (arch, vs, model) in models() {
        let model = model.as_ref();
        let batch = latent_batch();
        let fast = coconut_loss(model, &DeviceBatch::new(&batch, Device::Cpu, Kind::Float), true);
        let fast_grads = gradients(&vs, &fast);
        let naive = naive_loss(model, &batch);
        let naive_grads = gradients(&vs, &naive);
        let (a, b) = (fast.double_value(&[]), naive.double_value(&[]));
        assert_scalar_close(a, b, SAME, &format!("{arch}: loss against the naive recompute"));
        assert_eq!(fast_grads.len(), naive_grads.len());
        for ((name, g1), (_, g2)) in fast_grads.iter().zip(&naive_grads) {
            assert_close(g1, g2, SAME, &format!("{arch}: gradient of {name}"));
            let total = g1.abs().sum(Kind::Float).double_value(&[]);
            assert!(total > 0.0, "{arch}: {name} got no gradient");
        }
    }
}

#[test]
fn one_pass_per_thought_plus_one() {
    assert_eq!(pass_ranges(5, 0, 20), [(0, 20)]);
    assert_eq!(pass_ranges(5, 1, 20), [(0, 5), (5, 20)]);
    assert_eq!(pass_ranges(5, 3, 20), [(0, 5), (5, 6), (6, 7), (7, 20)]);
}

#[test]
fn without_latents_it_is_a_plain_forward() {
    let config = CurriculumConfig { mode: Mode::Cot, ..CurriculumConfig::default() };
    let staged: Vec<_> =
        samples().iter().map(|s| training_sample(&config, &SPECIAL, s, 0)).collect();
    let batch = collate_training(&staged, &SPECIAL);
    assert_eq!(batch.max_latents(), 0);
    for (arch, _vs, model) in models() {
        let device_batch = DeviceBatch::new(&batch, Device::Cpu, Kind::Float);
        let fast = coconut_loss(model.as_ref(), &device_batch, true).double_value(&[]);
        let plain = naive_loss(model.as_ref(), &batch).double_value(&[]);
        assert_scalar_close(fast, plain, SAME, &format!("{arch}: loss against a plain forward"));
    }
}

#[test]
fn a_later_token_does_not_change_earlier_thoughts() {
    for (_arch, _vs, model) in models() {
        a_later_token_does_not_change_earlier_thoughts_of(model.as_ref());
    }
}

fn a_later_token_does_not_change_earlier_thoughts_of(model: &dyn CausalLm) {
    let batch = latent_batch();
    let thoughts = |batch: &Batch| {
        let hidden = latent_hidden_states(
            model,
            &DeviceBatch::new(batch, Device::Cpu, Kind::Float),
            &mut KvCache::new(),
            false,
            0,
        );
        // Thought i of row 0 is the hidden state just before its i-th latent column.
        let cols: Vec<i64> = batch.latent_columns[0].iter().map(|&c| c as i64 - 1).collect();
        hidden.get(0).index_select(0, &Tensor::from_slice(&cols))
    };
    let before = thoughts(&batch);
    let mut changed = batch.clone();
    let last_real = (0..changed.seq_len).rev().find(|&c| changed.attention_mask[c] == 1).unwrap();
    changed.input_ids[last_real] = (changed.input_ids[last_real] + 5) % 38 + 1;
    let after = thoughts(&changed);
    assert!(before.equal(&after), "a token after the thoughts changed them");
    // ... while a question token does change them.
    let mut changed = batch.clone();
    let first_real = (0..changed.seq_len).find(|&c| changed.attention_mask[c] == 1).unwrap();
    changed.input_ids[first_real] = (changed.input_ids[first_real] + 5) % 38 + 1;
    assert!(!before.equal(&thoughts(&changed)));
}

#[test]
fn bf16_compute_keeps_f32_masters_and_tracks_the_f32_loss_and_gradients() {
    for (arch, vs, model) in models() {
        let model = model.as_ref();
        let batch = DeviceBatch::new(&latent_batch(), Device::Cpu, Kind::Float);
        // Dropout off: both runs must see the same network.
        let f32_loss = coconut_loss(model, &batch, false);
        let mut f32_grads = Gradients::new(vs.variables());
        f32_grads.backward(&f32_loss);
        let f32_grads = f32_grads.sums();
        // From here the model computes in bf16: its variables are copies of f32 masters.
        let config = AdamWConfig { lr: 1e-3, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0 };
        let optimizer = AdamW::new(vs.variables(), config, Kind::BFloat16);
        assert_eq!(model.kind(), Kind::BFloat16, "{arch}");
        let batch = DeviceBatch::new(&latent_batch(), Device::Cpu, model.kind());
        let bf16_loss = coconut_loss(model, &batch, false);
        let mut grads = Gradients::new(vs.variables());
        grads.backward(&bf16_loss);
        let (b, f) = (bf16_loss.double_value(&[]), f32_loss.double_value(&[]));
        let tol = Tolerance::new(0.02, 0.0);
        assert_scalar_close(b, f, tol, &format!("{arch}: bf16 loss against f32"));
        let norm = |t: &Tensor| t.norm().double_value(&[]);
        let total = f32_grads.values().map(|g| norm(g).powi(2)).sum::<f64>().sqrt();
        let masters: std::collections::BTreeMap<String, Tensor> =
            optimizer.masters().unwrap().into_iter().collect();
        for (name, expected) in f32_grads {
            // The masters stay f32, and the gradients are summed in f32, within bf16's
            // precision of f32's (some are zero up to rounding, as a key bias's: those are
            // judged against the whole).
            assert_eq!(masters[&name].kind(), Kind::Float, "{arch}: {name}");
            let got = grads.get(&name).unwrap_or_else(|| panic!("{arch}: {name}: no gradient"));
            assert_eq!(got.kind(), Kind::Float, "{arch}: {name}");
            let difference = norm(&(got - &expected));
            let allowed = 0.05 * norm(&expected) + 1e-3 * total;
            assert!(
                difference <= allowed,
                "{arch}: {name}: bf16 gradient {difference:.2e} off f32's (allowed {allowed:.2e})"
            );
        }
    }
}
