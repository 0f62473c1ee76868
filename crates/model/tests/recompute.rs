//! Gradient checkpointing in the model. A binary of its own: dropout draws from torch's
//! process-wide generator, which tests running side by side in one process would share.

mod common;

use coconut_model::{causal_bias, padding_bias, Gpt2, KvCache};
use common::{decode_inputs, fixture_model, max_diff, reference};
use tch::{nn::VarStore, Device, Kind, Tensor};

/// Gradient checkpointing: a pass whose blocks are recomputed in the backward pass gives
/// the same outputs, cache and parameter gradients as one that keeps its activations, with
/// dropout on (the recomputed blocks must draw the same masks) and a later cached pass
/// reading its keys and values.
#[test]
fn a_recomputed_pass_gives_the_same_values_and_gradients() {
    let (_fixture_vs, fixture) = fixture_model();
    let mut config = fixture.config().clone();
    (config.embd_pdrop, config.attn_pdrop, config.resid_pdrop) = (0.1, 0.1, 0.1);
    tch::manual_seed(11);
    let vs = VarStore::new(Device::Cpu);
    let model = Gpt2::new(&vs.root(), &config);
    let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let param_refs: Vec<&Tensor> = params.iter().map(|(_, p)| p).collect();
    let r = reference();
    let (ids, mask, pos) = decode_inputs(&r);
    let bias = causal_bias(mask, Kind::Float);
    let t = ids.size()[1];
    let next = ids.narrow(1, 0, 1);
    let next_pos = pos.narrow(1, -1, 1) + 1;
    let step_bias =
        padding_bias(&Tensor::cat(&[mask, &mask.narrow(1, 0, 1).ones_like()], 1), Kind::Float);
    // A loss over the pass's last two columns and over one more column that reads its cache.
    let loss = |first: &Tensor, cache: &mut KvCache| {
        let second =
            model.forward_embeds(&model.embed(&next), &next_pos, &step_bias, Some(cache), true);
        let weights = first.ones_like().cumsum(2, Kind::Float);
        (first * weights).sum(Kind::Float) + (&second * &second).sum(Kind::Float)
    };

    tch::manual_seed(5);
    let mut cache = KvCache::new();
    let first =
        model.forward_embeds_from(&model.embed(ids), pos, &bias, Some(&mut cache), true, t - 2);
    let kept_loss = loss(&first, &mut cache);
    let kept = Tensor::run_backward(&[&kept_loss], &param_refs, false, false);

    tch::manual_seed(5);
    let mut cache = KvCache::new();
    let (first, pass) = model.forward_recomputed(ids, pos, &bias, &mut cache, true, t - 2);
    let recomputed_loss = loss(&first, &mut cache);
    let mut inputs = param_refs.clone();
    inputs.extend(pass.outputs());
    let mut grads = Tensor::run_backward(&[&recomputed_loss], &inputs, false, false);
    let output_grads = grads.split_off(params.len());
    let mut calls = 0;
    pass.backward(&model, &output_grads, |scalar, block_input| {
        calls += 1;
        let mut inputs = param_refs.clone();
        inputs.extend(block_input);
        let mut block_grads = Tensor::run_backward(&[scalar], &inputs, false, false);
        let input_grad = block_grads.split_off(params.len());
        for (sum, g) in grads.iter_mut().zip(block_grads) {
            if g.defined() {
                *sum = if sum.defined() { &*sum + g } else { g };
            }
        }
        input_grad
    });

    assert_eq!(calls, config.n_layer, "one recomputed block at a time");
    let loss_diff = (kept_loss.double_value(&[]) - recomputed_loss.double_value(&[])).abs();
    assert!(loss_diff < 1e-4 * kept_loss.double_value(&[]).abs(), "loss differs by {loss_diff}");
    for ((name, _), (a, b)) in params.iter().zip(kept.iter().zip(&grads)) {
        assert!(a.defined() && b.defined(), "{name}: no gradient");
        let scale = a.abs().max().double_value(&[]).max(1e-6);
        assert!(max_diff(a, b) < 1e-4 * scale, "{name}: gradients differ");
    }
}
