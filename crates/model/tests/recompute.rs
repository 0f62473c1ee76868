//! Gradient checkpointing in the model. A binary of its own: dropout draws from torch's
//! process-wide generator, which tests running side by side in one process would share.

mod common;

use coconut_model::testing::{assert_close, tiny_models};
use coconut_model::{causal_bias, CausalLm, KvCache, Packing, PassInputs, RecomputedPass};
use coconut_testing::{assert_close as assert_scalar_close, Tolerance};
use common::gpt2;
use tch::{Device, Kind, Tensor};

/// Adds `grads` to `sums`, skipping undefined gradients.
fn accumulate(sums: &mut [Tensor], grads: Vec<Tensor>) {
    for (sum, g) in sums.iter_mut().zip(grads) {
        if g.defined() {
            *sum = if sum.defined() { &*sum + g } else { g };
        }
    }
}

/// The parameter gradients of `loss` when `pass` was recomputed: down to the pass's outputs,
/// through the pass block by block, then from its inputs through the graph before it.
fn gradients_through(
    loss: &Tensor,
    pass: &RecomputedPass,
    model: &dyn CausalLm,
    params: &[&Tensor],
) -> Vec<Tensor> {
    let n = params.len();
    let mut inputs = params.to_vec();
    inputs.extend(pass.outputs());
    let mut grads = Tensor::run_backward(&[loss], &inputs, true, false);
    let output_grads = grads.split_off(n);
    let mut calls = 0;
    let input_grads = pass.backward(model, &output_grads, |scalar, block_inputs| {
        calls += 1;
        let mut inputs = params.to_vec();
        inputs.extend(block_inputs);
        let mut block_grads = Tensor::run_backward(&[scalar], &inputs, false, false);
        let block_input_grads = block_grads.split_off(n);
        accumulate(&mut grads, block_grads);
        block_input_grads
    });
    assert_eq!(calls, model.shape().n_layer, "one recomputed block at a time");
    let pass_inputs = pass.inputs();
    assert_eq!(input_grads.len(), pass_inputs.len());
    let root = pass_inputs
        .iter()
        .zip(&input_grads)
        .filter(|(_, g)| g.defined())
        .map(|(t, g)| (*t * g).sum(Kind::Float))
        .reduce(|a, b| a + b)
        .expect("the pass's embeddings get a gradient");
    accumulate(&mut grads, Tensor::run_backward(&[&root], params, false, false));
    grads
}

/// A pass whose blocks are recomputed in the backward pass gives the same outputs, cache
/// and parameter gradients as one that keeps its activations, with dropout on (the
/// recomputed blocks must draw the same masks): as the first pass, whose keys and values a
/// later cached pass reads, and as the later pass, reading the keys and values of a first
/// pass that kept its activations. For every architecture.
#[test]
fn a_recomputed_pass_gives_the_same_values_and_gradients() {
    for (arch, vs, model) in tiny_models(256, 2, 0.1, 11) {
        let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        recompute_against_kept(arch, model.as_ref(), &named, false);
        recompute_against_kept(arch, model.as_ref(), &named, true);
    }
}

/// With `packed`, the first pass runs over its real tokens alone (see [`Packing`]).
fn recompute_against_kept(
    arch: &str,
    model: &dyn CausalLm,
    named: &[(String, Tensor)],
    packed: bool,
) {
    let params: Vec<&Tensor> = named.iter().map(|(_, p)| p).collect();
    let fixture = gpt2();
    let (ids, mask, pos) = fixture.decode_inputs();
    let bias = causal_bias(mask, Kind::Float);
    let (b, t) = ids.size2().unwrap();
    let real: Vec<bool> =
        Vec::<i64>::try_from(mask.view([-1])).unwrap().iter().map(|&m| m != 0).collect();
    assert!(real.iter().any(|r| !r), "the rows are padded");
    let packing = Packing::new(&real, b as usize, t as usize, t as usize - 2, Device::Cpu);
    let packing = packed.then_some(&packing);
    let next = ids.narrow(1, 0, 2);
    let next_pos = Tensor::cat(&[pos.narrow(1, -1, 1) + 1, pos.narrow(1, -1, 1) + 2], 1);
    let next_bias = Tensor::cat(&[mask, &mask.narrow(1, 0, 2).ones_like()], 1);
    // (B, 1, 2, t + 2): the two new columns' rows of the longer sequence's bias.
    let next_bias = causal_bias(&next_bias, Kind::Float).narrow(2, t, 2);
    // A loss over the first pass's last two columns and over a second pass of two columns
    // that reads the first's cache.
    let loss = |first: &Tensor, second: &Tensor| {
        let weights = first.ones_like().cumsum(2, Kind::Float);
        (first * weights).sum(Kind::Float) + (second * second).sum(Kind::Float)
    };
    let first_pass = || PassInputs::new(pos, &bias, true).outputs_from(t - 2).packed(packing);
    let first_kept =
        |cache: &mut KvCache| model.forward_pass(&model.embed(ids), &first_pass(), Some(cache));
    let second_kept = |cache: &mut KvCache| {
        model.forward_embeds(&model.embed(&next), &next_pos, &next_bias, Some(cache), true)
    };

    tch::manual_seed(5);
    let mut cache = KvCache::new();
    let first = first_kept(&mut cache);
    let kept_loss = loss(&first, &second_kept(&mut cache));
    let kept = Tensor::run_backward(&[&kept_loss], &params, false, false);

    for recompute_first in [true, false] {
        tch::manual_seed(5);
        let mut cache = KvCache::new();
        let (recomputed_loss, pass) = if recompute_first {
            let (first, pass) =
                model.forward_recomputed(&model.embed(ids), &first_pass(), &mut cache);
            (loss(&first, &second_kept(&mut cache)), pass)
        } else {
            let first = first_kept(&mut cache);
            let second_pass = PassInputs::new(&next_pos, &next_bias, true);
            let (second, pass) =
                model.forward_recomputed(&model.embed(&next), &second_pass, &mut cache);
            (loss(&first, &second), pass)
        };
        let grads = gradients_through(&recomputed_loss, &pass, model, &params);
        let (a, b) = (kept_loss.double_value(&[]), recomputed_loss.double_value(&[]));
        let tol = Tolerance::scaled(1e-4);
        let case = format!("{arch}, first recomputed {recompute_first}, packed {packed}");
        assert_scalar_close(b, a, tol, &format!("{case}: loss"));
        for ((name, _), (a, b)) in named.iter().zip(kept.iter().zip(&grads)) {
            // An untied head takes no part in the hidden states the loss reads.
            if name == "lm_head.weight" {
                assert!(!a.defined() && !b.defined(), "{case}: {name}");
                continue;
            }
            assert!(a.defined() && b.defined(), "{case}: {name}: no gradient");
            assert_close(b, a, tol, &format!("{case}: {name}"));
        }
    }
}
