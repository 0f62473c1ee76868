//! The Llama family on libtorch: Llama 2 and 3.x, and Qwen2/2.5 (Llama with biases on the
//! query, key and value projections). DeepSeek-R1 distills are one or the other.
//!
//! The file reads top-down like the architecture: config, rotary embeddings, RMSNorm and
//! linear layers, attention with grouped key-value heads, the SwiGLU MLP, block, model.
//! Parameter names and layouts equal the keys of an HF `LlamaForCausalLM` checkpoint
//! (`model.layers.{i}.self_attn.q_proj.weight`, weights stored (out, in)). Positions enter
//! only through the rotation of queries and keys, so the KV cache holds rotated keys.

use serde::Deserialize;
use tch::nn::{self, Init};
use tch::{Kind, Tensor};

use crate::attention::cached_attention;
use crate::causal_lm::{CausalLm, ModelShape, PassInputs};
use crate::embedding::{copy_rows, grow_rows};
use crate::KvCache;

/// The HF `config.json` of a Llama or Qwen2 model: the fields the forward reads, parsed,
/// and the whole file kept to be written back (so a saved checkpoint keeps its spelling).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Vocabulary size, added tokens included.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// MLP inner size.
    pub intermediate_size: usize,
    /// Number of blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key-value heads (fewer than query heads with grouped-query attention).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// The longest sequence the model is meant for.
    pub max_position_embeddings: usize,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// The rotary embedding's frequencies.
    pub rope: Rope,
    /// Biases on the query, key and value projections (Qwen2; `attention_bias` in Llama
    /// also puts one on the output projection).
    pub qkv_bias: bool,
    /// A bias on the attention's output projection (Llama's `attention_bias`).
    pub o_bias: bool,
    /// Biases on the MLP's projections (Llama's `mlp_bias`).
    pub mlp_bias: bool,
    /// Whether the LM head is the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Dropout on the attention probabilities (train mode only).
    pub attention_dropout: f64,
    /// The whole `config.json`, written back with `vocab_size` updated.
    pub hf: serde_json::Map<String, serde_json::Value>,
}

/// Rotary position embeddings: the base and the scaling of Llama 3.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope {
    /// The base of the frequencies (`rope_theta`).
    pub theta: f64,
    /// Llama 3's frequency-dependent scaling, when configured.
    pub llama3: Option<Llama3Scaling>,
}

/// Llama 3's `rope_scaling`: low frequencies divided by `factor`, high ones kept, a smooth
/// blend between, measured against the original context length.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Llama3Scaling {
    /// Divisor of the low frequencies.
    pub factor: f64,
    /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are scaled.
    pub low_freq_factor: f64,
    /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
    pub high_freq_factor: f64,
    /// The context length the model was first trained at.
    pub original_max_position_embeddings: f64,
}

/// What `config.json` holds, with transformers' defaults.
#[derive(Deserialize)]
struct HfFields {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: usize,
    #[serde(default = "default_rms_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_act")]
    hidden_act: String,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_dropout: f64,
    #[serde(default)]
    use_sliding_window: bool,
}

fn default_max_positions() -> usize {
    2048
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_act() -> String {
    "silu".to_string()
}

impl LlamaConfig {
    /// Parses an HF `config.json` of `model_type` `llama` or `qwen2`. The rotary settings
    /// may be spelled `rope_theta` and `rope_scaling` or, as newer files do,
    /// `rope_parameters` (holding `rope_theta` and `rope_type`).
    pub fn from_hf(json: serde_json::Value) -> Result<Self, String> {
        let serde_json::Value::Object(hf) = json.clone() else {
            return Err("config.json is not a JSON object".to_string());
        };
        let f: HfFields = serde_json::from_value(json).map_err(|e| e.to_string())?;
        if f.hidden_act != "silu" {
            return Err(format!("unsupported hidden_act {:?} (Llama uses silu)", f.hidden_act));
        }
        if f.use_sliding_window {
            return Err("sliding-window attention (use_sliding_window) is not supported".into());
        }
        let heads = f.num_attention_heads;
        let kv_heads = f.num_key_value_heads.unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(format!(
                "num_attention_heads ({heads}) must be a positive multiple of num_key_value_heads ({kv_heads})"
            ));
        }
        let head_dim = f.head_dim.unwrap_or(f.hidden_size / heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(format!("head_dim ({head_dim}) must be positive and even (rotary pairs)"));
        }
        if f.vocab_size == 0 || f.num_hidden_layers == 0 || f.intermediate_size == 0 {
            return Err(
                "vocab_size, num_hidden_layers and intermediate_size must be positive".into()
            );
        }
        let qwen2 = f.model_type.as_deref() == Some("qwen2")
            || hf.get("architectures").is_some_and(|a| a.to_string().contains("Qwen2"));
        Ok(Self {
            vocab_size: f.vocab_size,
            hidden_size: f.hidden_size,
            intermediate_size: f.intermediate_size,
            num_hidden_layers: f.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            max_position_embeddings: f.max_position_embeddings,
            rms_norm_eps: f.rms_norm_eps,
            rope: Rope::from_hf(f.rope_theta, f.rope_scaling, f.rope_parameters)?,
            qkv_bias: qwen2 || f.attention_bias,
            o_bias: !qwen2 && f.attention_bias,
            mlp_bias: f.mlp_bias,
            tie_word_embeddings: f.tie_word_embeddings,
            attention_dropout: f.attention_dropout,
            hf,
        })
    }

    /// A Llama-shaped config for a model trained from scratch: tied embeddings (as Llama
    /// 3.2 1B), rotary base 10,000, no biases, with the HF fields transformers needs to load
    /// the saved checkpoint.
    pub fn new(shape: &LlamaShape) -> Result<Self, String> {
        let s = shape;
        Self::from_hf(serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": s.vocab_size,
            "hidden_size": s.hidden_size,
            "intermediate_size": s.intermediate_size,
            "num_hidden_layers": s.n_layer,
            "num_attention_heads": s.n_head,
            "num_key_value_heads": s.n_kv_head,
            "head_dim": s.hidden_size / s.n_head.max(1),
            "max_position_embeddings": s.max_positions,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "hidden_act": "silu",
            "tie_word_embeddings": true,
            "attention_bias": false,
            "attention_dropout": s.attention_dropout,
            "initializer_range": 0.02,
            "use_cache": true,
        }))
    }
}

/// The sizes of a Llama trained from scratch ([`LlamaConfig::new`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LlamaShape {
    /// Vocabulary size, added tokens included.
    pub vocab_size: usize,
    /// The longest sequence.
    pub max_positions: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// Number of blocks.
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key-value heads (a divisor of `n_head`).
    pub n_kv_head: usize,
    /// MLP inner size.
    pub intermediate_size: usize,
    /// Dropout on the attention probabilities.
    pub attention_dropout: f64,
}

impl Rope {
    fn from_hf(
        theta: Option<f64>,
        scaling: Option<serde_json::Value>,
        parameters: Option<serde_json::Value>,
    ) -> Result<Self, String> {
        // The newer spelling holds everything in one object.
        let (theta, scaling) = match parameters {
            Some(p) if !p.is_null() => {
                (p.get("rope_theta").and_then(|t| t.as_f64()).or(theta), Some(p))
            }
            _ => (theta, scaling),
        };
        let theta = theta.unwrap_or(10000.0);
        let rope_type = scaling
            .as_ref()
            .and_then(|s| s.get("rope_type").or_else(|| s.get("type")))
            .and_then(|t| t.as_str())
            .unwrap_or("default");
        let llama3 = match rope_type {
            "default" => None,
            "llama3" => Some(
                serde_json::from_value(scaling.expect("a rope_type comes from it"))
                    .map_err(|e| format!("llama3 rope scaling: {e}"))?,
            ),
            other => return Err(format!("unsupported rope_type {other:?} (default, llama3)")),
        };
        Ok(Self { theta, llama3 })
    }

    /// The rotation frequency of each pair of a head's dimensions: (head_dim / 2).
    fn inverse_frequencies(&self, head_dim: i64) -> Vec<f64> {
        let base: Vec<f64> = (0..head_dim / 2)
            .map(|i| 1.0 / self.theta.powf(2.0 * i as f64 / head_dim as f64))
            .collect();
        let Some(s) = self.llama3 else { return base };
        let low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
        let high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
        base.into_iter()
            .map(|f| {
                let wavelen = 2.0 * std::f64::consts::PI / f;
                if wavelen < high_freq_wavelen {
                    f
                } else if wavelen > low_freq_wavelen {
                    f / s.factor
                } else {
                    let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * f / s.factor + smooth * f
                }
            })
            .collect()
    }
}

/// The rotary tables of `position_ids` (B, T): the cosines and the signed sines of every
/// column's angles, (B, T, 1, head_dim) each, in `kind`; the angles in f32 whatever the kind,
/// as transformers computes them. With the sines' first half negated, a rotation is
/// `x cos + roll(x, head_dim / 2) sin` (see [`rotate`]).
fn rotary_tables(inv_freq: &Tensor, position_ids: &Tensor, kind: Kind) -> Vec<Tensor> {
    let angles = position_ids.to_kind(Kind::Float).unsqueeze(-1) * inv_freq; // (B, T, hd/2)
    let cos = angles.cos();
    let sin = angles.sin();
    let cos = Tensor::cat(&[&cos, &cos], -1); // (B, T, hd)
    let signed_sin = Tensor::cat(&[-&sin, sin], -1);
    vec![cos.unsqueeze(2).to_kind(kind), signed_sin.unsqueeze(2).to_kind(kind)]
}

/// Rotates the heads `x` (B, T, n, hd) of the columns `[from, T)` of a pass whose rotary
/// tables are `tables`: each head's halves (x1, x2) become (x1 cos - x2 sin, x2 cos + x1 sin),
/// HF's `x * cos + rotate_half(x) * sin`, with the half swap a roll of the last dimension.
fn rotate(x: &Tensor, tables: &[Tensor], from: i64) -> Tensor {
    let (cos, sin) = if from == 0 {
        (tables[0].shallow_clone(), tables[1].shallow_clone())
    } else {
        let t = tables[0].size()[1] - from;
        (tables[0].narrow(1, from, t), tables[1].narrow(1, from, t))
    };
    let half = *x.size().last().expect("heads") / 2;
    (x * cos).addcmul(&x.roll([half], [-1]), &sin)
}

/// RMSNorm: normalised in f32, then scaled by `weight` in the input's kind.
#[derive(Debug)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(vs: nn::Path, dim: i64, eps: f64) -> Self {
        Self { weight: vs.var("weight", &[dim], Init::Const(1.0)), eps }
    }

    /// LibTorch's `rms_norm`: in bf16 it normalises in f32 and scales in bf16, as HF does.
    fn forward(&self, x: &Tensor) -> Tensor {
        let dim = *x.size().last().expect("non-scalar input");
        x.rms_norm([dim], Some(&self.weight), self.eps)
    }
}

/// A linear map whose weight is stored (out, in), as `torch.nn.Linear`.
#[derive(Debug)]
struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    fn new(vs: nn::Path, n_in: i64, n_out: i64, bias: bool) -> Self {
        let init = Init::Randn { mean: 0.0, stdev: 0.02 };
        Self {
            weight: vs.var("weight", &[n_out, n_in], init),
            bias: bias.then(|| vs.var("bias", &[n_out], Init::Const(0.0))),
        }
    }

    /// Tokens (N, in) to (N, out).
    fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

/// Causal self-attention with grouped key-value heads and rotary positions.
#[derive(Debug)]
struct Attention {
    q_proj: Linear, // (nh * hd, C)
    k_proj: Linear, // (n_kv * hd, C)
    v_proj: Linear, // (n_kv * hd, C)
    o_proj: Linear, // (C, nh * hd)
    n_head: i64,
    n_kv_head: i64,
    dropout: f64,
}

impl Attention {
    fn new(vs: nn::Path, cfg: &LlamaConfig) -> Self {
        let c = cfg.hidden_size as i64;
        let (nh, n_kv, hd) =
            (cfg.num_attention_heads as i64, cfg.num_key_value_heads as i64, cfg.head_dim as i64);
        Self {
            q_proj: Linear::new(&vs / "q_proj", c, nh * hd, cfg.qkv_bias),
            k_proj: Linear::new(&vs / "k_proj", c, n_kv * hd, cfg.qkv_bias),
            v_proj: Linear::new(&vs / "v_proj", c, n_kv * hd, cfg.qkv_bias),
            o_proj: Linear::new(&vs / "o_proj", nh * hd, c, cfg.o_bias),
            n_head: nh,
            n_kv_head: n_kv,
            dropout: cfg.attention_dropout,
        }
    }

    /// Attention of the tokens `x` (N, C) of columns `[queries_from, T)` over every key:
    /// returns their outputs, (n, C). Keys and values are computed (and cached) for all T
    /// columns.
    fn forward(
        &self,
        x: &Tensor,
        rotary: &[Tensor],
        pass: &PassInputs,
        layer: usize,
        cache: Option<&mut KvCache>,
        queries_from: i64,
    ) -> Tensor {
        // (B, T, n, hd): heads in the grid, rotated, then (B, n, T, hd) for attention
        let heads = |projected: &Tensor, n: i64, from: i64| {
            let grid = pass.grid(projected, from);
            let (b, t, _) = grid.size3().expect("(B, T, n * hd)");
            grid.view([b, t, n, -1])
        };
        let q = self.q_proj.forward(&pass.columns_from(x, queries_from));
        let q = rotate(&heads(&q, self.n_head, queries_from), rotary, queries_from);
        let k = rotate(&heads(&self.k_proj.forward(x), self.n_kv_head, 0), rotary, 0);
        let v = heads(&self.v_proj.forward(x), self.n_kv_head, 0);
        let (q, k, v) = (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2));
        let dropout = if pass.train { self.dropout } else { 0.0 };
        let y = cached_attention(&q, (k, v), layer, cache, pass.bias, dropout); // (B, tq, nh*hd)
        self.o_proj.forward(&pass.tokens(&y, queries_from))
    }
}

/// The gated feed-forward network: down(silu(gate(x)) * up(x)).
#[derive(Debug)]
struct Mlp {
    gate_proj: Linear, // (I, C)
    up_proj: Linear,   // (I, C)
    down_proj: Linear, // (C, I)
}

impl Mlp {
    fn new(vs: nn::Path, cfg: &LlamaConfig) -> Self {
        let (c, i) = (cfg.hidden_size as i64, cfg.intermediate_size as i64);
        Self {
            gate_proj: Linear::new(&vs / "gate_proj", c, i, cfg.mlp_bias),
            up_proj: Linear::new(&vs / "up_proj", c, i, cfg.mlp_bias),
            down_proj: Linear::new(&vs / "down_proj", i, c, cfg.mlp_bias),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.down_proj.forward(&(self.gate_proj.forward(x).silu() * self.up_proj.forward(x)))
    }
}

/// A pre-RMSNorm transformer block.
#[derive(Debug)]
struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    fn new(vs: nn::Path, cfg: &LlamaConfig) -> Self {
        let (c, eps) = (cfg.hidden_size as i64, cfg.rms_norm_eps);
        Self {
            input_layernorm: RmsNorm::new(&vs / "input_layernorm", c, eps),
            self_attn: Attention::new(&vs / "self_attn", cfg),
            post_attention_layernorm: RmsNorm::new(&vs / "post_attention_layernorm", c, eps),
            mlp: Mlp::new(&vs / "mlp", cfg),
        }
    }

    /// The outputs of the tokens `x` (N, C) of columns `[outputs_from, T)`, (n, C); the keys
    /// and values of every column still enter the cache.
    fn forward(
        &self,
        x: &Tensor,
        rotary: &[Tensor],
        pass: &PassInputs,
        layer: usize,
        cache: Option<&mut KvCache>,
        outputs_from: i64,
    ) -> Tensor {
        let normed = self.input_layernorm.forward(x);
        let attn = self.self_attn.forward(&normed, rotary, pass, layer, cache, outputs_from);
        let x = pass.columns_from(x, outputs_from) + attn;
        &x + self.mlp.forward(&self.post_attention_layernorm.forward(&x))
    }
}

/// A Llama-family model. Its variables live in the `VarStore` passed to [`Llama::new`] under
/// `model.*` and, when untied, `lm_head.weight`: exactly the HF checkpoint keys.
#[derive(Debug)]
pub struct Llama {
    config: LlamaConfig,
    embed_tokens: Tensor, // (V, C)
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Option<Tensor>, // (V, C) when untied
    inv_freq: Tensor,        // (hd / 2) rotary frequencies, f32, on the model's device
}

impl Llama {
    /// A freshly initialised model (normal(0, 0.02) weights, zero biases, unit norms).
    pub fn new(vs: &nn::Path, config: &LlamaConfig) -> Self {
        let model = vs / "model";
        let (v, c) = (config.vocab_size as i64, config.hidden_size as i64);
        let init = Init::Randn { mean: 0.0, stdev: 0.02 };
        let inv_freq = config.rope.inverse_frequencies(config.head_dim as i64);
        Self {
            config: config.clone(),
            embed_tokens: (&model / "embed_tokens").var("weight", &[v, c], init),
            layers: (0..config.num_hidden_layers)
                .map(|i| Block::new(&model / "layers" / i, config))
                .collect(),
            norm: RmsNorm::new(&model / "norm", c, config.rms_norm_eps),
            lm_head: (!config.tie_word_embeddings)
                .then(|| (vs / "lm_head").var("weight", &[v, c], init)),
            inv_freq: Tensor::from_slice(&inv_freq).to_kind(Kind::Float).to_device(vs.device()),
        }
    }

    /// The model's configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The embedding matrix and, when untied, the LM head: every matrix with a row per token.
    fn token_matrices(&mut self) -> impl Iterator<Item = &mut Tensor> {
        std::iter::once(&mut self.embed_tokens).chain(self.lm_head.as_mut())
    }
}

impl CausalLm for Llama {
    fn shape(&self) -> ModelShape {
        let c = &self.config;
        ModelShape {
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            n_layer: c.num_hidden_layers,
            max_positions: c.max_position_embeddings,
        }
    }

    fn hf_config(&self) -> serde_json::Value {
        let mut hf = self.config.hf.clone();
        hf.insert("vocab_size".into(), self.config.vocab_size.into());
        serde_json::Value::Object(hf)
    }

    /// Older files hold the rotary frequencies as a buffer; a tied head's copy is the
    /// embedding; files saved from a bare `LlamaModel` lack the `model.` prefix.
    fn variable_for(&self, key: &str) -> Option<String> {
        if key.ends_with("rotary_emb.inv_freq") {
            return None;
        }
        if key == "lm_head.weight" {
            return (!self.config.tie_word_embeddings).then(|| key.to_string());
        }
        Some(if key.starts_with("model.") { key.to_string() } else { format!("model.{key}") })
    }

    fn embed(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.embed_tokens, ids, -1, false, false)
    }

    fn lm_head(&self, hidden: &Tensor) -> Tensor {
        let weight = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        hidden.matmul(&weight.tr())
    }

    fn kind(&self) -> Kind {
        self.embed_tokens.kind()
    }

    /// The rotary tables, see `rotary_tables`.
    fn position_tables(&self, position_ids: &Tensor) -> Vec<Tensor> {
        rotary_tables(&self.inv_freq, position_ids, self.kind())
    }

    fn resize_token_embeddings(&mut self, new_vocab: usize, init_from: i64) {
        for matrix in self.token_matrices() {
            grow_rows(matrix, new_vocab, init_from);
        }
        self.config.vocab_size = new_vocab;
    }

    fn copy_token_embedding(&mut self, tokens: &[i64], source: i64) {
        for matrix in self.token_matrices() {
            copy_rows(matrix, tokens, source);
        }
    }

    fn applies_dropout(&self) -> bool {
        self.config.attention_dropout > 0.0
    }

    /// The embeddings themselves: positions enter through the rotation inside attention.
    fn block_input(&self, embeds: &Tensor, _pass: &PassInputs) -> Tensor {
        embeds.shallow_clone()
    }

    fn block(
        &self,
        layer: usize,
        x: &Tensor,
        pass: &PassInputs,
        cache: Option<&mut KvCache>,
        outputs_from: i64,
    ) -> Tensor {
        let rotary = pass.position_tables(|| self.position_tables(pass.position_ids));
        self.layers[layer].forward(x, rotary, pass, layer, cache, outputs_from)
    }

    fn final_norm(&self, x: &Tensor) -> Tensor {
        self.norm.forward(x)
    }
}
