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

use std::cell::OnceCell;

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

/// What one forward pass gives every block besides its input: its positions and attention
/// bias, train mode, the columns whose outputs are read, and optionally its packing and the
/// position tables made once for the whole batch.
///
/// ```text
/// PassInputs::new(&position_ids, &bias, train)   // every column read, no packing
///     .outputs_from(t - 1)                       // only the last column's hidden state
/// ```
#[derive(Debug)]
pub struct PassInputs<'a> {
    /// (B, T) absolute positions of the pass's columns (they skip left padding).
    pub position_ids: &'a Tensor,
    /// (B, 1, T, T_past + T) additive attention bias in the model's kind, see
    /// [`crate::causal_bias`].
    pub bias: &'a Tensor,
    /// Train mode: dropout applies.
    pub train: bool,
    /// The first column whose hidden state the caller reads: the pass returns the columns
    /// `[outputs_from, T)` (see `forward_embeds` on [`CausalLm`]).
    pub outputs_from: i64,
    /// The pass's real tokens, when its blocks skip the padding (see [`Packing`]).
    packing: Option<&'a Packing>,
    /// [`CausalLm::position_tables`] of the pass's columns, made at the first use unless
    /// given.
    position_tables: OnceCell<Vec<Tensor>>,
}

impl<'a> PassInputs<'a> {
    /// The inputs of a pass whose every column is read, without packing.
    pub fn new(position_ids: &'a Tensor, bias: &'a Tensor, train: bool) -> Self {
        Self {
            position_ids,
            bias,
            train,
            outputs_from: 0,
            packing: None,
            position_tables: OnceCell::new(),
        }
    }

    /// Only the hidden states of columns `[from, T)` are read.
    pub fn outputs_from(mut self, from: i64) -> Self {
        self.outputs_from = from;
        self
    }

    /// The blocks run over the real tokens that `packing` (made for this pass's
    /// `outputs_from`) lists, when there is one.
    pub fn packed(mut self, packing: Option<&'a Packing>) -> Self {
        self.packing = packing;
        self
    }

    /// The position tables of the pass's columns, cut from tables made once for the whole
    /// batch (see [`CausalLm::position_tables`]).
    pub fn with_position_tables(self, tables: Vec<Tensor>) -> Self {
        let _ = self.position_tables.set(tables);
        self
    }

    /// The pass's packing, if any.
    pub fn packing(&self) -> Option<&'a Packing> {
        self.packing
    }

    /// The position tables of the pass's columns: those given, or `make()` for the first
    /// block that asks.
    pub fn position_tables(&self, make: impl FnOnce() -> Vec<Tensor>) -> &[Tensor] {
        self.position_tables.get_or_init(make)
    }

    /// Of a block's input `x` (every token of the pass, (N, W)), those of the columns
    /// `[from, T)`, where `from` is 0 or the pass's `outputs_from`.
    pub fn columns_from(&self, x: &Tensor, from: i64) -> Tensor {
        match self.packing {
            Some(packing) => packing.columns_from(x, from),
            None if from == 0 => x.shallow_clone(),
            None => {
                let (b, t) = self.grid_size();
                let w = x.size()[1];
                x.view([b, t, w]).narrow(1, from, t - from).reshape([-1, w])
            }
        }
    }

    /// Tokens (n, W) of the columns `[from, T)` (see [`PassInputs::columns_from`]) in their
    /// grid, (B, T - from, W), for attention; zero at padding.
    pub fn grid(&self, tokens: &Tensor, from: i64) -> Tensor {
        match self.packing {
            Some(packing) => packing.grid(tokens, from),
            None => {
                let (b, t) = self.grid_size();
                tokens.view([b, t - from, -1])
            }
        }
    }

    /// The tokens (n, W) of a grid (B, T - from, W) of the columns `[from, T)`: the inverse
    /// of [`PassInputs::grid`] on real tokens.
    pub fn tokens(&self, grid: &Tensor, from: i64) -> Tensor {
        match self.packing {
            Some(packing) => packing.tokens(grid, from),
            None => grid.reshape([-1, *grid.size().last().expect("a grid has a last dimension")]),
        }
    }

    /// (B, T) of the pass's grid.
    fn grid_size(&self) -> (i64, i64) {
        self.position_ids.size2().expect("(B, T) positions")
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

    /// The kind of the parameters, in which the model computes: activations follow the
    /// weights, and nothing is cast inside a pass. To compute in bf16, the variables are cast
    /// once (`VarStore::bfloat16`); a trainer keeps f32 masters of its own.
    fn kind(&self) -> Kind;

    /// What the architecture derives from positions, for the (B, T) `position_ids` of a
    /// whole batch, each table with the columns at dimension 1 (a pass reads its columns
    /// with `narrow(1, ..)`), in the model's kind: GPT-2's position embeddings (B, T, C), the
    /// rotary cosines and sines of the Llama family (B, T, 1, head_dim).
    fn position_tables(&self, position_ids: &Tensor) -> Vec<Tensor>;

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

    /// The first block's input, (B, T, C): the input embeddings plus whatever the
    /// architecture adds before the blocks (GPT-2's position embeddings, embedding dropout).
    fn block_input(&self, embeds: &Tensor, pass: &PassInputs) -> Tensor;

    /// Block `layer` over the pass's tokens `x`, (N, C) (every cell of the (B, T) grid, or
    /// its real tokens alone when the pass is packed): returns the outputs of the tokens of
    /// columns `[outputs_from, T)` (see [`PassInputs::columns_from`]). Position-wise work
    /// runs on those rows; attention sees the grid through [`PassInputs::grid`] and
    /// [`PassInputs::tokens`]. The keys and values of all T columns enter `cache` (when
    /// given) before attention reads everything the cache holds for this layer.
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
        self.forward_pass(embeds, &PassInputs::new(position_ids, bias, train), cache)
    }

    /// [`forward_embeds`](#method.forward_embeds) with everything a pass may say about
    /// itself: returns the hidden states of columns `[pass.outputs_from, T)`,
    /// (B, T - outputs_from, C), equal to the full result's last columns.
    ///
    /// Nothing after the last block's keys and values depends on an earlier column, so the
    /// last block runs its queries, attention output and MLP for the read columns only.
    /// With two layers and a loss on the answer alone that skips about a third of the work
    /// of a training step; a prompt's forward before decoding needs one column. Every
    /// column's keys and values still enter the cache.
    ///
    /// With a packing, the blocks run over the real tokens alone; the result is the same at
    /// real tokens and zero at padding.
    pub fn forward_pass(
        &self,
        embeds: &Tensor,
        pass: &PassInputs,
        cache: Option<&mut KvCache>,
    ) -> Tensor {
        let seed = self.dropout_seed(pass.train);
        self.run_blocks(embeds, pass, cache, seed, &mut |_, _| {})
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
        seed: Option<i64>,
        on_block_output: &mut dyn FnMut(usize, &Tensor),
    ) -> Tensor {
        let (t, outputs_from) = (embeds.size()[1], pass.outputs_from);
        assert!((0..t).contains(&outputs_from), "outputs_from {outputs_from} outside 0..{t}");
        reseed(seed, 0);
        let mut x = pass.tokens(&self.block_input(embeds, pass), 0); // (N, C)
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
