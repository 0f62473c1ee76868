//! GPT-2 (Radford et al. 2019) on libtorch, written for hidden-state recycling.
//!
//! The model reads top-down like the architecture: config, attention, MLP, block, model.
//! Parameter names and layouts equal the keys of an HF `GPT2LMHeadModel` checkpoint
//! (`transformer.h.{i}.attn.c_attn.weight`, ...). HF stores every projection as a `Conv1D`
//! whose weight is `(in, out)`; we keep that layout and compute `x @ w + b`, so loading and
//! saving never transpose. The LM head is tied to `wte`.
//!
//! What Coconut needs from the model, and nothing more: `embed(ids)`, a forward over input
//! embeddings with explicit position ids, an additive attention bias and an explicit
//! [`KvCache`], returning the last hidden state after `ln_f` (the continuous thought), an LM
//! head that can be applied to any subset of those hidden states, and, for gradient
//! checkpointing, the same forward with its blocks recomputed in the backward pass
//! ([`Gpt2::forward_recomputed`]).

use serde::{Deserialize, Serialize};
use tch::nn::{self, Init};
use tch::{Device, Kind, Tensor};

/// The HF `config.json` of a GPT-2 model. Fields we do not use are kept in `extra` and
/// written back unchanged, so a saved checkpoint carries the original configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    /// Vocabulary size, including added tokens.
    pub vocab_size: usize,
    /// Largest number of positions (rows of `wpe`).
    pub n_positions: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Number of attention heads.
    pub n_head: usize,
    /// MLP inner size; `None` means 4 * n_embd.
    #[serde(default)]
    pub n_inner: Option<usize>,
    /// Epsilon of every LayerNorm.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// Activation of the MLP; GPT-2 uses `gelu_new` (the tanh approximation).
    #[serde(default = "default_activation")]
    pub activation_function: String,
    /// Dropout on the sum of token and position embeddings (train mode only).
    #[serde(default)]
    pub embd_pdrop: f64,
    /// Dropout on attention probabilities (train mode only).
    #[serde(default)]
    pub attn_pdrop: f64,
    /// Dropout on each residual branch (train mode only).
    #[serde(default)]
    pub resid_pdrop: f64,
    /// Every other key of the HF file, preserved verbatim.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_eps() -> f64 {
    1e-5
}

fn default_activation() -> String {
    "gelu_new".to_string()
}

impl Gpt2Config {
    /// A GPT-2-shaped config for a model trained from scratch (no dropout), with the HF
    /// fields that `transformers` needs to load the saved checkpoint.
    pub fn new(
        vocab_size: usize,
        n_positions: usize,
        n_embd: usize,
        n_layer: usize,
        n_head: usize,
    ) -> Self {
        let extra = serde_json::json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "n_ctx": n_positions,
            "initializer_range": 0.02,
            "scale_attn_weights": true,
            "use_cache": true,
        });
        let serde_json::Value::Object(extra) = extra else { unreachable!("a JSON object literal") };
        Self {
            vocab_size,
            n_positions,
            n_embd,
            n_layer,
            n_head,
            n_inner: None,
            layer_norm_epsilon: 1e-5,
            activation_function: default_activation(),
            embd_pdrop: 0.0,
            attn_pdrop: 0.0,
            resid_pdrop: 0.0,
            extra,
        }
    }

    /// Checks the shape constraints the forward relies on.
    pub fn validate(&self) -> Result<(), String> {
        if self.n_head == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            return Err(format!(
                "n_embd ({}) must be a multiple of n_head ({})",
                self.n_embd, self.n_head
            ));
        }
        if self.activation_function != "gelu_new" && self.activation_function != "gelu" {
            return Err(format!("unsupported activation_function {:?}", self.activation_function));
        }
        if self.vocab_size == 0 || self.n_layer == 0 || self.n_positions == 0 {
            return Err("vocab_size, n_layer and n_positions must be positive".to_string());
        }
        Ok(())
    }

    fn inner_size(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }
}

/// The keys and values of every layer for the positions processed so far, kept outside the
/// model so that the caller decides what to keep: Coconut runs one pass per thought and each
/// pass attends to everything before it.
///
/// With gradients (training) the first forward call's keys and values (the question) stay a
/// chunk of their own: concatenating them with later ones would keep a full copy of the
/// prefix alive for the backward pass at every thought, so attention reads the chunks side
/// by side instead. Without gradients (decoding) they are written into a preallocated buffer
/// that grows by doubling, so a new token costs no copy of the past.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    /// Every call's keys and values stay a chunk of their own, with or without gradients:
    /// a recomputed pass reads its own back (see [`Gpt2::forward_recomputed`]).
    separate_chunks: bool,
}

#[derive(Debug, Default)]
struct LayerCache {
    chunks: Vec<(Tensor, Tensor)>, // with gradients: (B, nh, T_chunk, hs) twice, see `append`
    buffer: Option<(Tensor, Tensor)>, // without: (B, nh, capacity, hs) twice
    len: i64,                      // positions held
}

impl LayerCache {
    /// Everything held, as chunks.
    fn views(&self) -> Vec<(Tensor, Tensor)> {
        match &self.buffer {
            Some((k, v)) => vec![(k.narrow(2, 0, self.len), v.narrow(2, 0, self.len))],
            None => {
                self.chunks.iter().map(|(k, v)| (k.shallow_clone(), v.shallow_clone())).collect()
            }
        }
    }
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of cached positions (columns).
    pub fn len(&self) -> i64 {
        self.layers.first().map_or(0, |l| l.len)
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the first `len` positions and drops the rest.
    pub fn truncate(&mut self, len: i64) {
        for layer in &mut self.layers {
            if layer.buffer.is_none() && !layer.chunks.is_empty() {
                let (k, v) = concat(&layer.chunks);
                layer.chunks = vec![(k.narrow(2, 0, len), v.narrow(2, 0, len))];
            }
            layer.len = layer.len.min(len);
        }
    }

    /// Appends the new keys and values of `layer` and returns everything that layer holds.
    pub fn append(&mut self, layer: usize, k: Tensor, v: Tensor) -> Vec<(Tensor, Tensor)> {
        if self.layers.len() <= layer {
            self.layers.resize_with(layer + 1, LayerCache::default);
        }
        let separate_chunks = self.separate_chunks;
        let cache = &mut self.layers[layer];
        let t = k.size()[2];
        if separate_chunks {
            cache.chunks.push((k.contiguous(), v.contiguous()));
            cache.len += t;
            return cache.views();
        }
        if k.requires_grad() || !cache.chunks.is_empty() {
            if let Some((kb, vb)) = cache.buffer.take() {
                cache.chunks.push((kb.narrow(2, 0, cache.len), vb.narrow(2, 0, cache.len)));
            }
            // Contiguous chunks let every later pass's matmuls read them in place (a strided
            // view would be copied, and the copy kept for the backward pass, at every pass).
            // Everything after the first chunk (the question) is one chunk: the thoughts are
            // a column each, and one chunk per thought would cost every later pass a few
            // small operations per thought.
            let merged = if cache.chunks.len() >= 2 {
                let (pk, pv) = cache.chunks.pop().expect("two chunks");
                (Tensor::cat(&[pk, k], 2), Tensor::cat(&[pv, v], 2))
            } else {
                (k.contiguous(), v.contiguous())
            };
            cache.chunks.push(merged);
            cache.len += t;
            return cache.views();
        }
        let capacity = cache.buffer.as_ref().map_or(0, |(kb, _)| kb.size()[2]);
        if cache.len + t > capacity {
            let mut size = k.size();
            size[2] = (2 * (cache.len + t)).max(64);
            let grown = (
                Tensor::zeros(&size, (k.kind(), k.device())),
                Tensor::zeros(&size, (v.kind(), v.device())),
            );
            if let Some((kb, vb)) = &cache.buffer {
                grown.0.narrow(2, 0, cache.len).copy_(&kb.narrow(2, 0, cache.len));
                grown.1.narrow(2, 0, cache.len).copy_(&vb.narrow(2, 0, cache.len));
            }
            cache.buffer = Some(grown);
        }
        let (kb, vb) = cache.buffer.as_ref().expect("allocated above");
        kb.narrow(2, cache.len, t).copy_(&k);
        vb.narrow(2, cache.len, t).copy_(&v);
        cache.len += t;
        cache.views()
    }

    /// Stacks the rows of caches filled without gradients (decoding) into one cache of
    /// their longest length, each shorter one left-padded with zero keys and values. The
    /// caller masks the padded columns, as it does a left-padded prompt's.
    ///
    /// # Panics
    /// If a cache holds gradient chunks, or the caches differ in layer count.
    pub fn stack_left_padded(caches: &[KvCache]) -> KvCache {
        let len = caches.iter().map(KvCache::len).max().unwrap_or(0);
        let n_layers = caches.first().map_or(0, |c| c.layers.len());
        let layers = (0..n_layers)
            .map(|layer| {
                let (mut keys, mut values) = (Vec::new(), Vec::new());
                for cache in caches {
                    assert_eq!(cache.layers.len(), n_layers, "caches of different models");
                    let held = &cache.layers[layer];
                    let (k, v) =
                        held.buffer.as_ref().expect("a decoding cache (no gradient chunks)");
                    for (buffer, out) in [(k, &mut keys), (v, &mut values)] {
                        let mut size = buffer.size(); // (B_i, nh, capacity_i, hs)
                        size[2] = 2 * len; // room to decode as much again before growing
                        let padded = Tensor::zeros(&size, (buffer.kind(), buffer.device()));
                        padded
                            .narrow(2, len - held.len, held.len)
                            .copy_(&buffer.narrow(2, 0, held.len));
                        out.push(padded);
                    }
                }
                LayerCache {
                    chunks: Vec::new(),
                    buffer: Some((Tensor::cat(&keys, 0), Tensor::cat(&values, 0))),
                    len,
                }
            })
            .collect();
        KvCache { layers, separate_chunks: false }
    }

    /// A cache whose layers hold `past` (each layer's chunks) and to which every call adds a
    /// chunk of its own.
    fn with_separate_chunks(past: Vec<Vec<(Tensor, Tensor)>>) -> KvCache {
        let layers = past
            .into_iter()
            .map(|chunks| LayerCache {
                len: chunks.iter().map(|(k, _)| k.size()[2]).sum(),
                chunks,
                buffer: None,
            })
            .collect();
        KvCache { layers, separate_chunks: true }
    }

    /// Every layer's chunks (see [`KvCache`]).
    fn chunks_per_layer(&self, n_layer: usize) -> Vec<Vec<(Tensor, Tensor)>> {
        (0..n_layer).map(|l| self.layers.get(l).map_or_else(Vec::new, LayerCache::views)).collect()
    }

    /// Selects rows of the batch (for example the rows still decoding).
    pub fn index_rows(&mut self, rows: &Tensor) {
        for layer in &mut self.layers {
            for (k, v) in layer.chunks.iter_mut().chain(layer.buffer.iter_mut()) {
                *k = k.index_select(0, rows);
                *v = v.index_select(0, rows);
            }
        }
    }
}

/// The chunks of one layer as one (keys, values) pair.
fn concat(chunks: &[(Tensor, Tensor)]) -> (Tensor, Tensor) {
    let (ks, vs): (Vec<&Tensor>, Vec<&Tensor>) = chunks.iter().map(|(k, v)| (k, v)).unzip();
    (Tensor::cat(&ks, 2), Tensor::cat(&vs, 2))
}

/// Builds the additive attention bias for a whole sequence: causal plus key padding.
///
/// `attention_mask` is (B, T) with 1 for real tokens and 0 for padding. The result is
/// (B, 1, T, T): 0 where query t may attend to key s (s <= t and s is real), a large negative
/// number elsewhere. A large finite number rather than -inf keeps the softmax of a padded
/// query row (which sees no real key) finite, so padding never produces NaN.
pub fn causal_bias(attention_mask: &Tensor, kind: Kind) -> Tensor {
    let (_, t) = attention_mask.size2().expect("attention_mask must be (B, T)");
    let device = attention_mask.device();
    let causal = Tensor::ones([t, t], (Kind::Bool, device)).tril(0); // (T, T)
    let keys = attention_mask.to_kind(Kind::Bool).unsqueeze(1).unsqueeze(1); // (B, 1, 1, T)
    let allowed = keys.logical_and(&causal); // (B, 1, T, T)
    Tensor::zeros(allowed.size(), (kind, device)).masked_fill(&allowed.logical_not(), NEG_INF)
}

/// The bias for one query column that may see every real key (incremental decoding):
/// `attention_mask` is (B, T_keys); the result is (B, 1, 1, T_keys).
pub fn padding_bias(attention_mask: &Tensor, kind: Kind) -> Tensor {
    let masked = attention_mask.eq(0).unsqueeze(1).unsqueeze(1); // (B, 1, 1, Tk)
    Tensor::zeros(masked.size(), (kind, attention_mask.device())).masked_fill(&masked, NEG_INF)
}

/// Large enough to zero a softmax weight, small enough not to overflow f32 or bf16.
const NEG_INF: f64 = -1e9;

/// LayerNorm over the last dimension, named like the checkpoint (`weight`, `bias`).
#[derive(Debug)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn new(vs: nn::Path, dim: i64, eps: f64) -> Self {
        Self {
            weight: vs.var("weight", &[dim], Init::Const(1.0)),
            bias: vs.var("bias", &[dim], Init::Const(0.0)),
            eps,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let dim = *x.size().last().expect("non-scalar input");
        let (w, b) = (self.weight.to_kind(x.kind()), self.bias.to_kind(x.kind()));
        x.layer_norm([dim], Some(&w), Some(&b), self.eps, true)
    }
}

/// HF's `Conv1D`: a linear map whose weight is stored (in, out).
#[derive(Debug)]
struct Conv1D {
    weight: Tensor, // (in, out)
    bias: Tensor,   // (out)
}

impl Conv1D {
    fn new(vs: nn::Path, n_in: i64, n_out: i64, std: f64) -> Self {
        Self {
            weight: vs.var("weight", &[n_in, n_out], Init::Randn { mean: 0.0, stdev: std }),
            bias: vs.var("bias", &[n_out], Init::Const(0.0)),
        }
    }

    /// Computes in the kind of `x` (the f32 master weights are cast for bf16 compute).
    fn forward(&self, x: &Tensor) -> Tensor {
        x.matmul(&self.weight.to_kind(x.kind())) + self.bias.to_kind(x.kind())
    }
}

/// Multi-head causal self-attention with an external KV cache.
#[derive(Debug)]
struct Attention {
    c_attn: Conv1D, // (C, 3C): query, key and value in one projection
    c_proj: Conv1D, // (C, C)
    n_head: i64,
    attn_pdrop: f64,
    resid_pdrop: f64,
}

impl Attention {
    fn new(vs: nn::Path, cfg: &Gpt2Config, proj_std: f64) -> Self {
        let c = cfg.n_embd as i64;
        Self {
            c_attn: Conv1D::new(&vs / "c_attn", c, 3 * c, 0.02),
            c_proj: Conv1D::new(&vs / "c_proj", c, c, proj_std),
            n_head: cfg.n_head as i64,
            attn_pdrop: cfg.attn_pdrop,
            resid_pdrop: cfg.resid_pdrop,
        }
    }

    /// Attention of the queries of columns `[queries_from, T)` over every key: returns
    /// (B, T - queries_from, C). Keys and values are computed (and cached) for all T columns.
    fn forward(
        &self,
        x: &Tensor,
        bias: &Tensor,
        layer: usize,
        cache: Option<&mut KvCache>,
        train: bool,
        queries_from: i64,
    ) -> Tensor {
        let (b, t, c) = x.size3().expect("attention input must be (B, T, C)");
        let (hs, tq) = (c / self.n_head, t - queries_from);
        let heads = |z: &Tensor| {
            let len = z.size()[1];
            z.view([b, len, self.n_head, hs]).transpose(1, 2) // (B, nh, len, hs)
        };
        let qkv = self.c_attn.forward(x).split(c, 2); // 3 x (B, T, C)
        let q = heads(&qkv[0].narrow(1, queries_from, tq)); // (B, nh, tq, hs)
        let (k, v) = (heads(&qkv[1]), heads(&qkv[2]));
        // With a cache, the new keys and values join those of every earlier position.
        let chunks = match cache {
            Some(cache) => cache.append(layer, k, v),
            None => vec![(k, v)],
        };
        let dropout = if train { self.attn_pdrop } else { 0.0 };
        // (B, 1, tq, T_past + T), in the compute kind (a bias broadcast over queries stays so)
        let bias =
            if queries_from > 0 { bias.narrow(2, queries_from, tq) } else { bias.shallow_clone() };
        let bias = bias.to_kind(q.kind());
        let y = match chunks.as_slice() {
            [(k, v)] => Tensor::scaled_dot_product_attention(
                &q,
                k,
                v,
                Some(&bias),
                dropout,
                false,
                None,
                false,
            ),
            _ => chunked_attention(&q, &chunks, &bias, dropout, train),
        }; // (B, nh, tq, hs)
        let y = y.transpose(1, 2).contiguous().view([b, tq, c]); // (B, tq, C)
        self.c_proj.forward(&y).dropout(self.resid_pdrop, train)
    }
}

/// Attention over keys and values held in several chunks, without concatenating them:
/// softmax(q K^T / sqrt(hs) + bias) V with the scores of every chunk side by side.
fn chunked_attention(
    q: &Tensor,
    chunks: &[(Tensor, Tensor)],
    bias: &Tensor,
    dropout: f64,
    train: bool,
) -> Tensor {
    let hs = *q.size().last().expect("(B, nh, T, hs)");
    let scores: Vec<Tensor> = chunks.iter().map(|(k, _)| q.matmul(&k.transpose(-2, -1))).collect(); // (B, nh, T, T_chunk) each
    let scores = Tensor::cat(&scores, -1) / (hs as f64).sqrt() + bias; // (B, nh, T, T_all)
    let probs = scores.softmax(-1, scores.kind()).dropout(dropout, train);
    let mut start = 0;
    let mut y: Option<Tensor> = None;
    for (_, v) in chunks {
        let len = v.size()[2];
        let part = probs.narrow(-1, start, len).matmul(v); // (B, nh, T, hs)
        y = Some(match y {
            Some(acc) => acc + part,
            None => part,
        });
        start += len;
    }
    y.expect("at least one chunk")
}

/// The position-wise feed-forward network.
#[derive(Debug)]
struct Mlp {
    c_fc: Conv1D,   // (C, 4C)
    c_proj: Conv1D, // (4C, C)
    approximate: &'static str,
    resid_pdrop: f64,
}

impl Mlp {
    fn new(vs: nn::Path, cfg: &Gpt2Config, proj_std: f64) -> Self {
        let (c, inner) = (cfg.n_embd as i64, cfg.inner_size() as i64);
        let approximate = if cfg.activation_function == "gelu" { "none" } else { "tanh" };
        Self {
            c_fc: Conv1D::new(&vs / "c_fc", c, inner, 0.02),
            c_proj: Conv1D::new(&vs / "c_proj", inner, c, proj_std),
            approximate,
            resid_pdrop: cfg.resid_pdrop,
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let h = self.c_fc.forward(x).gelu(self.approximate);
        self.c_proj.forward(&h).dropout(self.resid_pdrop, train)
    }
}

/// A pre-LayerNorm transformer block.
#[derive(Debug)]
struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn new(vs: nn::Path, cfg: &Gpt2Config) -> Self {
        // GPT-2 scales the init of residual projections by 1/sqrt(2 * n_layer).
        let proj_std = 0.02 / (2.0 * cfg.n_layer as f64).sqrt();
        let c = cfg.n_embd as i64;
        Self {
            ln_1: LayerNorm::new(&vs / "ln_1", c, cfg.layer_norm_epsilon),
            attn: Attention::new(&vs / "attn", cfg, proj_std),
            ln_2: LayerNorm::new(&vs / "ln_2", c, cfg.layer_norm_epsilon),
            mlp: Mlp::new(&vs / "mlp", cfg, proj_std),
        }
    }

    /// The block's output for columns `[outputs_from, T)`, (B, T - outputs_from, C); the
    /// keys and values of every column still enter the cache.
    fn forward(
        &self,
        x: &Tensor,
        bias: &Tensor,
        layer: usize,
        cache: Option<&mut KvCache>,
        train: bool,
        outputs_from: i64,
    ) -> Tensor {
        let attn =
            self.attn.forward(&self.ln_1.forward(x), bias, layer, cache, train, outputs_from);
        let x = x.narrow(1, outputs_from, x.size()[1] - outputs_from) + attn;
        &x + self.mlp.forward(&self.ln_2.forward(&x), train)
    }
}

/// Sets torch's seed to `seed + stream` (see [`Gpt2::dropout_seed`]).
fn reseed(seed: Option<i64>, stream: usize) {
    if let Some(seed) = seed {
        tch::manual_seed(seed.wrapping_add(stream as i64));
    }
}

/// GPT-2 with a tied LM head. Its variables live in the `VarStore` passed to [`Gpt2::new`]
/// under `transformer.*`, exactly the HF checkpoint keys.
#[derive(Debug)]
pub struct Gpt2 {
    config: Gpt2Config,
    compute: Kind, // kind of activations and matmuls; parameters keep their own kind
    wte: Tensor,   // (V, C) token embeddings, also the LM head
    wpe: Tensor,   // (n_positions, C) position embeddings
    h: Vec<Block>,
    ln_f: LayerNorm,
}

impl Gpt2 {
    /// A freshly initialised model (GPT-2's initialisation: normal(0, 0.02), residual
    /// projections scaled down, LayerNorms at identity).
    pub fn new(vs: &nn::Path, config: &Gpt2Config) -> Self {
        let vs = vs / "transformer";
        let c = config.n_embd as i64;
        let init = Init::Randn { mean: 0.0, stdev: 0.02 };
        Self {
            config: config.clone(),
            compute: Kind::Float,
            wte: (&vs / "wte").var("weight", &[config.vocab_size as i64, c], init),
            wpe: (&vs / "wpe").var("weight", &[config.n_positions as i64, c], init),
            h: (0..config.n_layer).map(|i| Block::new(&vs / "h" / i, config)).collect(),
            ln_f: LayerNorm::new(&vs / "ln_f", c, config.layer_norm_epsilon),
        }
    }

    /// The model's configuration.
    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    /// Computes activations in `kind` (bf16 on a GPU) while the parameters keep their own
    /// kind: weights are cast where they are used, so gradients and optimizer updates stay
    /// in f32 (mixed precision without autocast).
    pub fn set_compute_kind(&mut self, kind: Kind) {
        self.compute = kind;
    }

    /// Sets the embedding rows (and so the tied head rows) of `tokens` to the embedding of
    /// `source`, as for freshly added tokens.
    pub fn copy_token_embedding(&mut self, tokens: &[i64], source: i64) {
        tch::no_grad(|| {
            let row = self.wte.get(source); // (C)
            for &t in tokens {
                self.wte.get(t).copy_(&row);
            }
        });
    }

    /// Token embeddings: (B, T) ids to (B, T, C).
    pub fn embed(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.wte, ids, -1, false, false)
    }

    /// The transformer over input embeddings.
    ///
    /// - `embeds`: (B, T, C), usually `embed(ids)` with some columns replaced by thoughts.
    /// - `position_ids`: (B, T), absolute positions (they skip left padding).
    /// - `bias`: (B, 1, T, T_past + T) additive attention bias, see [`causal_bias`].
    /// - `cache`: the keys and values of earlier positions, extended in place by this call.
    ///
    /// Returns the last hidden state after `ln_f`, (B, T, C): the input of the LM head and,
    /// in Coconut, the continuous thought.
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        position_ids: &Tensor,
        bias: &Tensor,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Tensor {
        self.forward_embeds_from(embeds, position_ids, bias, cache, train, 0)
    }

    /// [`Gpt2::forward_embeds`] when only the hidden states of columns `[outputs_from, T)`
    /// are read: returns (B, T - outputs_from, C), equal to the full result's last columns.
    ///
    /// Nothing after the last block's keys and values depends on an earlier column, so the
    /// last block runs its queries, attention output and MLP for the read columns only.
    /// With two layers and a loss on the answer alone that skips about a third of the work
    /// of a training step; a prompt's forward before decoding needs one column. Every
    /// column's keys and values still enter the cache.
    pub fn forward_embeds_from(
        &self,
        embeds: &Tensor,
        position_ids: &Tensor,
        bias: &Tensor,
        cache: Option<&mut KvCache>,
        train: bool,
        outputs_from: i64,
    ) -> Tensor {
        let seed = self.dropout_seed(train);
        self.run_blocks(embeds, position_ids, bias, cache, train, outputs_from, seed, |_, _| {})
    }

    /// The forward pass itself, with the dropout `seed` given; `on_block_output(layer, x)`
    /// sees every block's output.
    #[allow(clippy::too_many_arguments)]
    fn run_blocks(
        &self,
        embeds: &Tensor,
        position_ids: &Tensor,
        bias: &Tensor,
        mut cache: Option<&mut KvCache>,
        train: bool,
        outputs_from: i64,
        seed: Option<i64>,
        mut on_block_output: impl FnMut(usize, &Tensor),
    ) -> Tensor {
        let t = embeds.size()[1];
        assert!((0..t).contains(&outputs_from), "outputs_from {outputs_from} outside 0..{t}");
        reseed(seed, 0);
        let mut x = self.input_embeddings(embeds, position_ids, train);
        for (layer, block) in self.h.iter().enumerate() {
            reseed(seed, layer + 1);
            let from = self.block_outputs_from(layer, outputs_from);
            x = block.forward(&x, bias, layer, cache.as_deref_mut(), train, from);
            on_block_output(layer, &x);
        }
        self.ln_f.forward(&x) // (B, T - outputs_from, C)
    }

    /// The first block's input: token plus position embeddings, in the compute kind.
    fn input_embeddings(&self, embeds: &Tensor, position_ids: &Tensor, train: bool) -> Tensor {
        let pos = Tensor::embedding(&self.wpe, position_ids, -1, false, false); // (B, T, C)
        (embeds + pos).to_kind(self.compute).dropout(self.config.embd_pdrop, train)
    }

    /// The first column whose output block `layer` computes: every column but in the last
    /// block, whose output only `ln_f` and the caller read.
    fn block_outputs_from(&self, layer: usize, outputs_from: i64) -> i64 {
        if layer + 1 == self.h.len() {
            outputs_from
        } else {
            0
        }
    }

    /// A forward pass draws one seed when it applies dropout, and reseeds torch from it
    /// before the embeddings (stream 0) and before each block (stream `layer + 1`). A block
    /// recomputed in the backward pass ([`RecomputedPass`]) then draws the same masks.
    fn dropout_seed(&self, train: bool) -> Option<i64> {
        let c = &self.config;
        let drops = train && (c.embd_pdrop > 0.0 || c.attn_pdrop > 0.0 || c.resid_pdrop > 0.0);
        drops.then(draw_seed)
    }

    /// [`Gpt2::forward_embeds_from`] with gradient checkpointing: the pass runs without
    /// autograd and keeps only each block's input and each layer's keys and values (which
    /// later passes read), and [`RecomputedPass::backward`] recomputes one block at a time.
    /// The activations held for the backward pass shrink from every block's to one block's,
    /// for one more forward.
    ///
    /// The returned hidden states and the keys and values appended to `cache` are leaves that
    /// require gradients: the backward pass of whatever reads them stops there and yields the
    /// gradients `RecomputedPass::backward` starts from. It ends with the gradients of the
    /// pass's own inputs, `embeds` and the keys and values `cache` held before the call.
    pub fn forward_recomputed(
        &self,
        embeds: &Tensor,
        position_ids: &Tensor,
        bias: &Tensor,
        cache: &mut KvCache,
        train: bool,
        outputs_from: i64,
    ) -> (Tensor, RecomputedPass) {
        let n_layer = self.h.len();
        let past = cache.chunks_per_layer(n_layer);
        let seed = self.dropout_seed(train);
        let mut block_inputs = Vec::with_capacity(n_layer - 1);
        let mut scratch = KvCache::with_separate_chunks(shallow_clones(&past));
        let keep_input_of_next = |layer: usize, x: &Tensor| {
            if layer + 1 < n_layer {
                block_inputs.push(x.shallow_clone());
            }
        };
        let hidden = tch::no_grad(|| {
            let cache = Some(&mut scratch);
            self.run_blocks(
                embeds,
                position_ids,
                bias,
                cache,
                train,
                outputs_from,
                seed,
                keep_input_of_next,
            )
        });
        let keys_values: Vec<(Tensor, Tensor)> = scratch
            .layers
            .iter()
            .map(|layer| {
                let (k, v) = layer.chunks.last().expect("the pass's own chunk");
                (leaf(k), leaf(v))
            })
            .collect();
        for (layer, (k, v)) in keys_values.iter().enumerate() {
            cache.append(layer, k.shallow_clone(), v.shallow_clone());
        }
        let pass = RecomputedPass {
            embeds: embeds.shallow_clone(),
            position_ids: position_ids.shallow_clone(),
            bias: bias.shallow_clone(),
            train,
            outputs_from,
            seed,
            past,
            block_inputs,
            hidden: leaf(&hidden),
            keys_values,
        };
        (pass.hidden.shallow_clone(), pass)
    }

    /// The tied LM head: hidden states (..., C) to logits (..., V).
    pub fn lm_head(&self, hidden: &Tensor) -> Tensor {
        hidden.matmul(&self.wte.to_kind(hidden.kind()).tr())
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

    /// Grows the vocabulary to `new_vocab` rows (for added tokens such as the latent
    /// markers), initialising every new row of `wte` (and so of the tied head) to the
    /// embedding of the existing token `init_from`. A no-op when the size already matches.
    pub fn resize_token_embeddings(&mut self, new_vocab: usize, init_from: i64) {
        let old = self.config.vocab_size as i64;
        let new = new_vocab as i64;
        assert!(new >= old, "the vocabulary can only grow ({old} -> {new})");
        assert!((0..old).contains(&init_from), "init token {init_from} is outside the vocabulary");
        if new == old {
            return;
        }
        tch::no_grad(|| {
            let extra = self.wte.get(init_from).unsqueeze(0).expand([new - old, -1], false); // (new-old, C)
            let grown = Tensor::cat(&[self.wte.detach(), extra.contiguous()], 0); // (new, C)
                                                                                  // set_data swaps the storage under the same variable, so the VarStore (and an
                                                                                  // optimizer created afterwards) sees the grown matrix.
            self.wte.set_data(&grown);
        });
        self.config.vocab_size = new_vocab;
    }
}

/// A seed drawn from torch's generator (so that seeding torch makes it reproducible).
pub fn draw_seed() -> i64 {
    Tensor::randint(1 << 62, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0])
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

fn shallow_clones(chunks: &[Vec<(Tensor, Tensor)>]) -> Vec<Vec<(Tensor, Tensor)>> {
    chunks
        .iter()
        .map(|l| l.iter().map(|(k, v)| (k.shallow_clone(), v.shallow_clone())).collect())
        .collect()
}

/// A forward pass run by [`Gpt2::forward_recomputed`]: what its backward pass needs to
/// recompute the activations it did not keep.
#[derive(Debug)]
pub struct RecomputedPass {
    embeds: Tensor, // the input, as the caller's graph made it
    position_ids: Tensor,
    bias: Tensor,
    train: bool,
    outputs_from: i64,
    seed: Option<i64>,
    past: Vec<Vec<(Tensor, Tensor)>>, // every layer's earlier keys and values, as the cache held them
    block_inputs: Vec<Tensor>,        // the input of every block but the first, without autograd
    hidden: Tensor,                   // leaf: the pass's output
    keys_values: Vec<(Tensor, Tensor)>, // leaves: every layer's keys and values
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
        model: &Gpt2,
        output_grads: &[Tensor],
        mut backprop: impl FnMut(&Tensor, &[&Tensor]) -> Vec<Tensor>,
    ) -> Vec<Tensor> {
        let n_layer = model.h.len();
        assert_eq!(n_layer, self.block_inputs.len() + 1, "a pass of another model");
        assert_eq!(output_grads.len(), 1 + 2 * n_layer, "one gradient per output");
        let mut past_grads: Vec<Vec<Tensor>> = (0..n_layer).map(|_| Vec::new()).collect();
        let mut grad_out = output_grads[0].shallow_clone(); // of the last block's output
        for layer in (0..n_layer).rev() {
            // The block's inputs as fresh leaves: its graph ends there.
            let input = leaf(if layer == 0 { &self.embeds } else { &self.block_inputs[layer - 1] });
            let past: Vec<(Tensor, Tensor)> =
                self.past[layer].iter().map(|(k, v)| (leaf(k), leaf(v))).collect();
            let x = if layer == 0 {
                reseed(self.seed, 0);
                model.input_embeddings(&input, &self.position_ids, self.train)
            } else {
                input.shallow_clone()
            };
            reseed(self.seed, layer + 1);
            // Only this layer's earlier keys and values are read.
            let layers = (0..n_layer)
                .map(|l| {
                    let chunks = if l == layer { past.as_slice() } else { &[] };
                    chunks.iter().map(|(k, v)| (k.shallow_clone(), v.shallow_clone())).collect()
                })
                .collect();
            let mut scratch = KvCache::with_separate_chunks(layers);
            let from = model.block_outputs_from(layer, self.outputs_from);
            let mut y =
                model.h[layer].forward(&x, &self.bias, layer, Some(&mut scratch), self.train, from);
            if layer + 1 == n_layer {
                y = model.ln_f.forward(&y);
            }
            let (k, v) = scratch.layers[layer].chunks.last().expect("the block's own chunk");
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
