//! The one interface the trainer and evaluation use, whatever the architecture.
//!
//! An architecture implements [`CausalLm`]: its embedding, its blocks, its final norm and
//! its LM head, plus the bookkeeping of its configuration. Everything built on those pieces
//! is written once, here and in `recompute.rs`, as methods of `dyn CausalLm`: the forward
//! over input embeddings with an explicit KV cache, the `outputs_from` trimming, dropout
//! seeding and gradient checkpointing. A new architecture is one file and one line in
//! [`crate::load_pretrained`]; the trainer, generation and thought inspection do not change.
//!
//! Why a trait object rather than an enum of architectures: the trainer never needs to know
//! which architecture it holds, a fork adds one without editing a `match` in every method,
//! and the cost of dynamic dispatch (a few calls per block per pass) is nothing next to the
//! matrix products behind each call.

use tch::{Device, Kind, Tensor};

use crate::kv_cache::KvCache;
use crate::packing::Packing;

/// The sizes every caller of a model needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    /// Vocabulary size, added tokens included: the rows of the embedding.
    pub vocab_size: usize,
    /// Width of the hidden state (a continuous thought).
    pub hidden_size: usize,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// The longest sequence the model may see (GPT-2's position table; the
    /// `max_position_embeddings` of a rotary model).
    pub max_positions: usize,
}

/// What one forward pass gives every block besides its input.
#[derive(Debug)]
pub struct PassInputs<'a> {
    /// (B, T) absolute positions of the pass's columns (they skip left padding).
    pub position_ids: &'a Tensor,
    /// (B, 1, T, T_past + T) additive attention bias, see [`crate::causal_bias`].
    pub bias: &'a Tensor,
    /// Train mode: dropout applies.
    pub train: bool,
    /// The pass's real tokens, when its blocks skip the padding (see [`Packing`]).
    packing: Option<&'a Packing>,
    /// What an architecture derives from the positions, made once per pass.
    from_positions: std::cell::OnceCell<Vec<Tensor>>,
}

impl<'a> PassInputs<'a> {
    /// The inputs of one pass; with a `packing`, its blocks hold the real tokens alone.
    pub fn new(
        position_ids: &'a Tensor,
        bias: &'a Tensor,
        train: bool,
        packing: Option<&'a Packing>,
    ) -> Self {
        Self { position_ids, bias, train, packing, from_positions: std::cell::OnceCell::new() }
    }

    /// Of a block's input `x` (every token of the pass), those of the columns `[from, T)`,
    /// where `from` is 0 or the pass's `outputs_from`: (n, W) real tokens when the pass is
    /// packed, (B, T - from, W) otherwise.
    pub fn columns_from(&self, x: &Tensor, from: i64) -> Tensor {
        match self.packing {
            Some(packing) => packing.columns_from(x, from),
            None => columns_from(x, from),
        }
    }

    /// Tokens of the columns `[from, T)` (see [`PassInputs::columns_from`]) in their grid,
    /// (B, T - from, W), for attention; zero at padding.
    pub fn grid(&self, tokens: &Tensor, from: i64) -> Tensor {
        match self.packing {
            Some(packing) => packing.grid(tokens, from),
            None => tokens.shallow_clone(),
        }
    }

    /// The tokens of a grid (B, T - from, W) of the columns `[from, T)`: the inverse of
    /// [`PassInputs::grid`] on real tokens.
    pub fn tokens(&self, grid: &Tensor, from: i64) -> Tensor {
        match self.packing {
            Some(packing) => packing.tokens(grid, from),
            None => grid.shallow_clone(),
        }
    }

    /// Tensors an architecture derives from the positions (a rotary model's cosines and
    /// sines): `make` runs for the first block that asks, every later block of the pass
    /// gets the same tensors.
    pub fn from_positions(&self, make: impl FnOnce() -> Vec<Tensor>) -> &[Tensor] {
        self.from_positions.get_or_init(make)
    }
}

/// A causal language model whose last hidden state can be fed back as an input embedding.
///
/// Implementations provide the architecture's pieces; the forward passes built from them
/// are methods of `dyn CausalLm` ([`forward_embeds`](#method.forward_embeds) and the
/// others below), written once for every architecture.
pub trait CausalLm: std::fmt::Debug + Send {
    /// The model's sizes.
    fn shape(&self) -> ModelShape;

    /// The HF `config.json` of the model as it is now (vocabulary grown included), so that
    /// a saved checkpoint loads with transformers' `AutoModelForCausalLM`.
    fn hf_config(&self) -> serde_json::Value;

    /// The variable a tensor of an HF checkpoint file loads into: `Some(variable name)`, or
    /// `None` for tensors that are not parameters here (buffers, a tied head's copy).
    fn variable_for(&self, checkpoint_key: &str) -> Option<String>;

    /// Token embeddings: (B, T) ids to (B, T, C).
    fn embed(&self, ids: &Tensor) -> Tensor;

    /// The LM head: hidden states (..., C) to logits (..., V).
    fn lm_head(&self, hidden: &Tensor) -> Tensor;

    /// Computes activations in `kind` (bf16 on a GPU) while the parameters keep their own
    /// kind: weights are cast where they are used, so gradients and optimizer updates stay
    /// in f32 (mixed precision without autocast).
    fn set_compute_kind(&mut self, kind: Kind);

    /// Grows the vocabulary to `new_vocab` rows (for added tokens such as the latent
    /// markers), initialising every new row of the embedding, and of an untied LM head, to
    /// the row of the existing token `init_from`. A no-op when the size already matches.
    ///
    /// # Panics
    /// If the vocabulary would shrink or `init_from` is outside it.
    fn resize_token_embeddings(&mut self, new_vocab: usize, init_from: i64);

    /// Sets the embedding rows (and LM head rows) of `tokens` to those of `source`, as for
    /// freshly added tokens.
    fn copy_token_embedding(&mut self, tokens: &[i64], source: i64);

    /// Whether train mode draws dropout masks anywhere.
    fn applies_dropout(&self) -> bool;

    /// The first block's input, in the compute kind: the input embeddings plus whatever the
    /// architecture adds before the blocks (GPT-2's position embeddings, embedding dropout).
    fn block_input(&self, embeds: &Tensor, pass: &PassInputs) -> Tensor;

    /// Block `layer` over `x` (B, T, C): returns its output for columns `[outputs_from, T)`,
    /// (B, T - outputs_from, C). The keys and values of all T columns enter `cache` (when
    /// given) before attention reads everything the cache holds for this layer. When the
    /// pass is packed, `x` and the output hold real tokens alone (see
    /// [`PassInputs::columns_from`]): position-wise work goes through those, attention
    /// through [`PassInputs::grid`] and [`PassInputs::tokens`].
    fn block(
        &self,
        layer: usize,
        x: &Tensor,
        pass: &PassInputs,
        cache: Option<&mut KvCache>,
        outputs_from: i64,
    ) -> Tensor;

    /// The norm after the last block, whose output is the last hidden state.
    fn final_norm(&self, x: &Tensor) -> Tensor;
}

impl dyn CausalLm + '_ {
    /// The transformer over input embeddings.
    ///
    /// - `embeds`: (B, T, C), usually `embed(ids)` with some columns replaced by thoughts.
    /// - `position_ids`: (B, T), absolute positions (they skip left padding).
    /// - `bias`: (B, 1, T, T_past + T) additive attention bias, see [`crate::causal_bias`].
    /// - `cache`: the keys and values of earlier positions, extended in place by this call.
    ///
    /// Returns the last hidden state after the final norm, (B, T, C): the input of the LM
    /// head and, in Coconut, the continuous thought.
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        position_ids: &Tensor,
        bias: &Tensor,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Tensor {
        self.forward_embeds_from(embeds, position_ids, bias, cache, train, 0, None)
    }

    /// [`forward_embeds`](#method.forward_embeds) when only the hidden states of columns
    /// `[outputs_from, T)` are read: returns (B, T - outputs_from, C), equal to the full
    /// result's last columns.
    ///
    /// Nothing after the last block's keys and values depends on an earlier column, so the
    /// last block runs its queries, attention output and MLP for the read columns only.
    /// With two layers and a loss on the answer alone that skips about a third of the work
    /// of a training step; a prompt's forward before decoding needs one column. Every
    /// column's keys and values still enter the cache.
    ///
    /// With a `packing` (made for this `outputs_from`), the blocks run over the real tokens
    /// alone; the result is the same at real tokens and zero at padding.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_embeds_from(
        &self,
        embeds: &Tensor,
        position_ids: &Tensor,
        bias: &Tensor,
        cache: Option<&mut KvCache>,
        train: bool,
        outputs_from: i64,
        packing: Option<&Packing>,
    ) -> Tensor {
        let pass = PassInputs::new(position_ids, bias, train, packing);
        let seed = self.dropout_seed(train);
        self.run_blocks(embeds, &pass, cache, outputs_from, seed, &mut |_, _| {})
    }

    /// A plain forward over token ids: returns (logits (B, T, V), hidden (B, T, C)).
    pub fn forward(
        &self,
        ids: &Tensor,
        position_ids: &Tensor,
        bias: &Tensor,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> (Tensor, Tensor) {
        let hidden = self.forward_embeds(&self.embed(ids), position_ids, bias, cache, train);
        (self.lm_head(&hidden), hidden)
    }

    /// The forward pass itself, with the dropout `seed` given; `on_block_output(layer, x)`
    /// sees every block's output.
    pub(crate) fn run_blocks(
        &self,
        embeds: &Tensor,
        pass: &PassInputs,
        mut cache: Option<&mut KvCache>,
        outputs_from: i64,
        seed: Option<i64>,
        on_block_output: &mut dyn FnMut(usize, &Tensor),
    ) -> Tensor {
        let t = embeds.size()[1];
        assert!((0..t).contains(&outputs_from), "outputs_from {outputs_from} outside 0..{t}");
        reseed(seed, 0);
        let mut x = pass.tokens(&self.block_input(embeds, pass), 0);
        for layer in 0..self.shape().n_layer {
            reseed(seed, layer + 1);
            let from = self.block_outputs_from(layer, outputs_from);
            x = self.block(layer, &x, pass, cache.as_deref_mut(), from);
            on_block_output(layer, &x);
        }
        pass.grid(&self.final_norm(&x), outputs_from) // (B, T - outputs_from, C)
    }

    /// The first column whose output block `layer` computes: every column but in the last
    /// block, whose output only the final norm and the caller read.
    pub(crate) fn block_outputs_from(&self, layer: usize, outputs_from: i64) -> i64 {
        if layer + 1 == self.shape().n_layer {
            outputs_from
        } else {
            0
        }
    }

    /// A forward pass draws one seed when it applies dropout, and reseeds torch from it
    /// before the embeddings (stream 0) and before each block (stream `layer + 1`). A block
    /// recomputed in the backward pass ([`crate::RecomputedPass`]) then draws the same masks.
    pub(crate) fn dropout_seed(&self, train: bool) -> Option<i64> {
        (train && self.applies_dropout()).then(draw_seed)
    }
}

/// Sets torch's seed to `seed + stream` (see `dropout_seed`).
pub(crate) fn reseed(seed: Option<i64>, stream: usize) {
    if let Some(seed) = seed {
        tch::manual_seed(seed.wrapping_add(stream as i64));
    }
}

/// A seed drawn from torch's generator (so that seeding torch makes it reproducible).
pub fn draw_seed() -> i64 {
    Tensor::randint(1 << 62, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0])
}

/// Splits (B, T, n * hs) into heads: (B, n, T, hs).
pub(crate) fn split_heads(x: &Tensor, n_heads: i64) -> Tensor {
    let (b, t, width) = x.size3().expect("(B, T, C)");
    x.view([b, t, n_heads, width / n_heads]).transpose(1, 2)
}

/// Joins heads (B, n, T, hs) back into (B, T, n * hs).
pub(crate) fn merge_heads(y: &Tensor) -> Tensor {
    let (b, n, t, hs) = y.size4().expect("(B, n, T, hs)");
    y.transpose(1, 2).contiguous().view([b, t, n * hs])
}

/// Rows `[from, T)` of a (B, T, ...) tensor; the tensor itself when `from` is 0.
pub(crate) fn columns_from(x: &Tensor, from: i64) -> Tensor {
    if from == 0 {
        x.shallow_clone()
    } else {
        x.narrow(1, from, x.size()[1] - from)
    }
}
