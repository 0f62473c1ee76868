//! Gradient checkpointing for every architecture: a forward pass that keeps only each
//! block's input and each layer's keys and values, and a backward pass that recomputes one
//! block at a time. The activations held for the backward pass shrink from every block's to
//! one block's, for one more forward.

use tch::{Kind, Tensor};

use crate::causal_lm::{reseed, CausalLm, PassInputs};
use crate::kv_cache::{shallow_clones, KeysValues, KvCache};
use crate::packing::Packing;

impl dyn CausalLm + '_ {
    /// [`forward_pass`](#method.forward_pass) with gradient checkpointing: the pass runs
    /// without autograd and keeps only each block's input and each layer's keys and values
    /// (which later passes read), and [`RecomputedPass::backward`] recomputes one block at a
    /// time.
    ///
    /// The returned hidden states and the keys and values appended to `cache` are leaves that
    /// require gradients: the backward pass of whatever reads them stops there and yields the
    /// gradients `RecomputedPass::backward` starts from. It ends with the gradients of the
    /// pass's own inputs, `embeds` and the keys and values `cache` held before the call.
    pub fn forward_recomputed(
        &self,
        embeds: &Tensor,
        pass: &PassInputs,
        cache: &mut KvCache,
    ) -> (Tensor, RecomputedPass) {
        let n_layer = self.shape().n_layer;
        let past = cache.chunks_per_layer(n_layer);
        let seed = self.dropout_seed(pass.train);
        let mut block_inputs = Vec::with_capacity(n_layer - 1);
        let mut scratch = KvCache::per_call(past.iter().map(|c| shallow_clones(c)).collect());
        let mut keep_input_of_next = |layer: usize, x: &Tensor| {
            if layer + 1 < n_layer {
                block_inputs.push(x.shallow_clone());
            }
        };
        let hidden = tch::no_grad(|| {
            self.run_blocks(embeds, pass, Some(&mut scratch), seed, &mut keep_input_of_next)
        });
        let keys_values: Vec<KeysValues> = (0..n_layer)
            .map(|layer| {
                let (k, v) = scratch.last_chunk(layer);
                (leaf(k), leaf(v))
            })
            .collect();
        for (layer, (k, v)) in keys_values.iter().enumerate() {
            cache.append(layer, k.shallow_clone(), v.shallow_clone());
        }
        let pass = RecomputedPass {
            embeds: embeds.shallow_clone(),
            position_ids: pass.position_ids.shallow_clone(),
            bias: pass.bias.shallow_clone(),
            train: pass.train,
            outputs_from: pass.outputs_from,
            packing: pass.packing().cloned(),
            seed,
            past,
            block_inputs,
            hidden: leaf(&hidden),
            keys_values,
        };
        (pass.hidden.shallow_clone(), pass)
    }
}

/// A scalar whose backward pass sends each gradient to its tensor: the sum of
/// `sum(tensor * gradient)` over the pairs whose gradient is defined (`None` when none is).
/// It continues a backward pass from tensors whose gradients are already known.
pub fn gradient_root<'a>(
    pairs: impl IntoIterator<Item = (&'a Tensor, &'a Tensor)>,
) -> Option<Tensor> {
    pairs
        .into_iter()
        .filter(|(_, g)| g.defined())
        .map(|(t, g)| (t * g).sum(Kind::Float))
        .reduce(|a, b| a + b)
}

/// A detached copy of `t` that requires gradients: where a recomputed pass's graph starts
/// or ends.
fn leaf(t: &Tensor) -> Tensor {
    t.detach().set_requires_grad(true)
}

/// A forward pass run by `forward_recomputed`: what its backward pass needs to recompute
/// the activations it did not keep.
#[derive(Debug)]
pub struct RecomputedPass {
    embeds: Tensor, // the input, as the caller's graph made it
    position_ids: Tensor,
    bias: Tensor,
    train: bool,
    outputs_from: i64,
    packing: Option<Packing>,
    seed: Option<i64>,
    past: Vec<Vec<KeysValues>>, // every layer's earlier keys and values, as the cache held them
    block_inputs: Vec<Tensor>,  // the input of every block but the first, without autograd
    hidden: Tensor,             // leaf: the pass's output
    keys_values: Vec<KeysValues>, // leaves: every layer's keys and values
}

impl RecomputedPass {
    /// What the rest of the computation reads from this pass: the hidden states, then every
    /// layer's keys and values. Their gradients are the input of [`RecomputedPass::backward`].
    pub fn outputs(&self) -> Vec<&Tensor> {
        let kv = self.keys_values.iter().flat_map(|(k, v)| [k, v]);
        std::iter::once(&self.hidden).chain(kv).collect()
    }

    /// What this pass read from the computation before it: the input embeddings, then the
    /// keys and values of earlier positions, layer by layer. [`RecomputedPass::backward`]
    /// returns their gradients, from which the backward pass continues through the caller's
    /// graph.
    pub fn inputs(&self) -> Vec<&Tensor> {
        let past = self.past.iter().flatten().flat_map(|(k, v)| [k, v]);
        std::iter::once(&self.embeds).chain(past).collect()
    }

    /// The backward pass, last block first. `output_grads` are the gradients of
    /// [`RecomputedPass::outputs`] (undefined where nothing read an output). Each block is
    /// recomputed from its saved input under autograd, and `backprop(scalar, inputs)` is
    /// called with a scalar whose gradient is the block's share of the whole backward pass:
    /// it must add the scalar's parameter gradients to the others, and return the gradients
    /// of `inputs` (the block's input and the earlier keys and values it read). Returns the
    /// gradients of [`RecomputedPass::inputs`].
    ///
    /// # Panics
    /// If `model` has another number of layers than the model that ran the pass (it must
    /// be that model, which is not checked further), or the gradients do not match the
    /// outputs.
    pub fn backward(
        &self,
        model: &dyn CausalLm,
        output_grads: &[Tensor],
        mut backprop: impl FnMut(&Tensor, &[&Tensor]) -> Vec<Tensor>,
    ) -> Vec<Tensor> {
        let n_layer = model.shape().n_layer;
        assert_eq!(n_layer, self.block_inputs.len() + 1, "a pass of another model");
        assert_eq!(output_grads.len(), 1 + 2 * n_layer, "one gradient per output");
        // The position tables are made afresh, under autograd: the caller's (made without,
        // or shared by other passes) would not carry the gradient to their parameters.
        let pass = PassInputs::new(&self.position_ids, &self.bias, self.train)
            .outputs_from(self.outputs_from)
            .packed(self.packing.as_ref());
        let mut past_grads: Vec<Vec<Tensor>> = (0..n_layer).map(|_| Vec::new()).collect();
        let mut grad_out = output_grads[0].shallow_clone(); // of the last block's output
        for layer in (0..n_layer).rev() {
            // The block's inputs as fresh leaves: its graph ends there.
            let input = leaf(if layer == 0 { &self.embeds } else { &self.block_inputs[layer - 1] });
            let past: Vec<KeysValues> =
                self.past[layer].iter().map(|(k, v)| (leaf(k), leaf(v))).collect();
            let x = if layer == 0 {
                reseed(self.seed, 0);
                pass.tokens(&model.block_input(&input, &pass), 0)
            } else {
                input.shallow_clone()
            };
            reseed(self.seed, layer + 1);
            // Only this layer's earlier keys and values are read.
            let layers = (0..n_layer)
                .map(|l| if l == layer { shallow_clones(&past) } else { Vec::new() })
                .collect();
            let mut scratch = KvCache::per_call(layers);
            let from = model.block_outputs_from(layer, self.outputs_from);
            let mut y = model.block(layer, &x, &pass, Some(&mut scratch), from);
            if layer + 1 == n_layer {
                y = pass.grid(&model.final_norm(&y), from);
            }
            let (k, v) = scratch.last_chunk(layer);
            let (grad_k, grad_v) = (&output_grads[1 + 2 * layer], &output_grads[2 + 2 * layer]);
            let Some(scalar) = gradient_root([(&y, &grad_out), (k, grad_k), (v, grad_v)]) else {
                grad_out = Tensor::new(); // nothing downstream read this block
                continue;
            };
            let inputs: Vec<&Tensor> =
                std::iter::once(&input).chain(past.iter().flat_map(|(k, v)| [k, v])).collect();
            let mut grads = backprop(&scalar, &inputs).into_iter();
            grad_out = grads.next().unwrap_or_default();
            past_grads[layer] = grads.collect();
        }
        let mut input_grads = vec![grad_out]; // of the embeddings
        for (layer, chunks) in self.past.iter().enumerate() {
            let mut grads = std::mem::take(&mut past_grads[layer]).into_iter();
            input_grads.extend((0..2 * chunks.len()).map(|_| grads.next().unwrap_or_default()));
        }
        input_grads
    }
}
