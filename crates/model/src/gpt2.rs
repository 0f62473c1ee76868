//! GPT-2 (Radford et al. 2019) on libtorch, written for hidden-state recycling.
//!
//! The file reads top-down like the architecture: config, the two layer kinds HF's GPT-2
//! uses (LayerNorm, `Conv1D`), attention, MLP, block, model. Parameter names and layouts
//! equal the keys of an HF `GPT2LMHeadModel` checkpoint (`transformer.h.{i}.attn.c_attn.weight`,
//! ...). HF stores every projection as a `Conv1D` whose weight is `(in, out)`; we keep that
//! layout and compute `b + x @ w` in one `addmm`, so loading and saving never transpose.
//! Learned position embeddings are added before the first block; the LM head is tied to
//! `wte`. Inside the blocks a pass's tokens are the rows of one (N, C) matrix (see
//! [`PassInputs`]); only attention sees them as a (B, T) grid.

use serde::{Deserialize, Serialize};
use tch::nn::{self, Init};
use tch::{Kind, Tensor};

use crate::attention::cached_attention;
use crate::causal_lm::{CausalLm, ModelShape, PassInputs};
use crate::embedding::{copy_rows, grow_rows};
use crate::KvCache;

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

    /// LibTorch's kernel itself (`layer_norm` wraps it in views).
    fn forward(&self, x: &Tensor) -> Tensor {
        let dim = *x.size().last().expect("non-scalar input");
        x.native_layer_norm([dim], Some(&self.weight), Some(&self.bias), self.eps).0
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

    /// Tokens (N, in) to (N, out): `bias + x @ weight`, one operator as HF's `addmm`.
    fn forward(&self, x: &Tensor) -> Tensor {
        self.bias.addmm(x, &self.weight)
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

    /// Attention of the tokens `x` (N, C) of columns `[queries_from, T)` over every key:
    /// returns their outputs, (n, C). Keys and values are computed (and cached) for all T
    /// columns.
    fn forward(
        &self,
        x: &Tensor,
        pass: &PassInputs,
        layer: usize,
        cache: Option<&mut KvCache>,
        queries_from: i64,
    ) -> Tensor {
        let qkv = pass.grid(&self.c_attn.forward(x), 0); // (B, T, 3C)
        let (b, t, _) = qkv.size3().expect("(B, T, 3C)");
        // (3, B, nh, T, hs): query, key and value heads as views of the one projection
        let heads = qkv.view([b, t, 3, self.n_head, -1]).permute([2, 0, 3, 1, 4]);
        let [q, k, v]: [Tensor; 3] = heads.unbind(0).try_into().expect("three parts");
        let q = if queries_from == 0 { q } else { q.narrow(2, queries_from, t - queries_from) };
        let dropout = if pass.train { self.attn_pdrop } else { 0.0 };
        let y = cached_attention(&q, (k, v), layer, cache, pass.bias, dropout); // (B, tq, C)
        let y = pass.tokens(&y, queries_from); // (n, C)
        crate::dropout(&self.c_proj.forward(&y), self.resid_pdrop, pass.train)
    }
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
        crate::dropout(&self.c_proj.forward(&h), self.resid_pdrop, train)
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

    /// The outputs of the tokens `x` (N, C) of columns `[outputs_from, T)`, (n, C); the keys
    /// and values of every column still enter the cache.
    fn forward(
        &self,
        x: &Tensor,
        pass: &PassInputs,
        layer: usize,
        cache: Option<&mut KvCache>,
        outputs_from: i64,
    ) -> Tensor {
        let attn = self.attn.forward(&self.ln_1.forward(x), pass, layer, cache, outputs_from);
        let x = pass.columns_from(x, outputs_from) + attn;
        &x + self.mlp.forward(&self.ln_2.forward(&x), pass.train)
    }
}

/// GPT-2 with a tied LM head. Its variables live in the `VarStore` passed to [`Gpt2::new`]
/// under `transformer.*`, exactly the HF checkpoint keys.
#[derive(Debug)]
pub struct Gpt2 {
    config: Gpt2Config,
    wte: Tensor, // (V, C) token embeddings, also the LM head
    wpe: Tensor, // (n_positions, C) position embeddings
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
}

impl CausalLm for Gpt2 {
    fn shape(&self) -> ModelShape {
        let c = &self.config;
        ModelShape {
            vocab_size: c.vocab_size,
            hidden_size: c.n_embd,
            n_layer: c.n_layer,
            max_positions: c.n_positions,
        }
    }

    fn hf_config(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).expect("a config always serialises")
    }

    /// Files saved from a bare `GPT2Model` lack the `transformer.` prefix; attention-mask
    /// buffers of older files and the tied head carry no parameters.
    fn variable_for(&self, key: &str) -> Option<String> {
        if key == "lm_head.weight"
            || key.ends_with(".attn.bias")
            || key.ends_with(".attn.masked_bias")
        {
            return None;
        }
        Some(if key.starts_with("transformer.") {
            key.to_string()
        } else {
            format!("transformer.{key}")
        })
    }

    fn embed(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.wte, ids, -1, false, false)
    }

    /// The tied LM head.
    fn lm_head(&self, hidden: &Tensor) -> Tensor {
        hidden.matmul(&self.wte.tr())
    }

    fn kind(&self) -> Kind {
        self.wte.kind()
    }

    /// The position embeddings of `position_ids`, (B, T, C).
    fn position_tables(&self, position_ids: &Tensor) -> Vec<Tensor> {
        vec![Tensor::embedding(&self.wpe, position_ids, -1, false, false)]
    }

    fn resize_token_embeddings(&mut self, new_vocab: usize, init_from: i64) {
        grow_rows(&mut self.wte, new_vocab, init_from);
        self.config.vocab_size = new_vocab;
    }

    fn copy_token_embedding(&mut self, tokens: &[i64], source: i64) {
        copy_rows(&self.wte, tokens, source);
    }

    fn applies_dropout(&self) -> bool {
        let c = &self.config;
        c.embd_pdrop > 0.0 || c.attn_pdrop > 0.0 || c.resid_pdrop > 0.0
    }

    /// Token plus position embeddings, with embedding dropout.
    fn block_input(&self, embeds: &Tensor, pass: &PassInputs) -> Tensor {
        let pos = &pass.position_tables(|| self.position_tables(pass.position_ids))[0]; // (B, T, C)
        crate::dropout(&(embeds + pos), self.config.embd_pdrop, pass.train)
    }

    fn block(
        &self,
        layer: usize,
        x: &Tensor,
        pass: &PassInputs,
        cache: Option<&mut KvCache>,
        outputs_from: i64,
    ) -> Tensor {
        self.h[layer].forward(x, pass, layer, cache, outputs_from)
    }

    fn final_norm(&self, x: &Tensor) -> Tensor {
        self.ln_f.forward(x)
    }
}
