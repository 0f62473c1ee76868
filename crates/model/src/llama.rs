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
use crate::causal_lm::{split_heads, CausalLm, ModelShape, PassInputs};
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
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vocab_size: usize,
        max_positions: usize,
        hidden_size: usize,
        n_layer: usize,
        n_head: usize,
        n_kv_head: usize,
        intermediate_size: usize,
        attention_dropout: f64,
    ) -> Result<Self, String> {
        Self::from_hf(serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": vocab_size,
            "hidden_size": hidden_size,
            "intermediate_size": intermediate_size,
            "num_hidden_layers": n_layer,
            "num_attention_heads": n_head,
            "num_key_value_heads": n_kv_head,
            "head_dim": hidden_size / n_head.max(1),
            "max_position_embeddings": max_positions,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "hidden_act": "silu",
            "tie_word_embeddings": true,
            "attention_bias": false,
            "attention_dropout": attention_dropout,
            "initializer_range": 0.02,
            "use_cache": true,
        }))
    }
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

/// The rotation of one pass's positions: cosines and sines (B, 1, T, head_dim) in the
/// compute kind, and the signed permutation that turns a head's halves (x1, x2) into
/// (-x2, x1), as a matrix (one product instead of four slicing operations per use).
struct Rotation<'p> {
    cos: &'p Tensor,
    sin: &'p Tensor,
    half_swap: Tensor,
}

impl<'p> Rotation<'p> {
    /// Angles computed in f32 whatever the compute kind, as transformers does; once per pass.
    fn new(model: &Llama, pass: &'p PassInputs, kind: Kind) -> Self {
        let derived = pass.from_positions(|| {
            let positions = pass.position_ids.to_kind(Kind::Float).unsqueeze(-1);
            let angles = positions * &model.inv_freq; // (B, T, hd/2)
            let angles = Tensor::cat(&[&angles, &angles], -1).unsqueeze(1); // (B, 1, T, hd)
            vec![angles.cos().to_kind(kind), angles.sin().to_kind(kind)]
        });
        Self { cos: &derived[0], sin: &derived[1], half_swap: model.half_swap.to_kind(kind) }
    }

    /// Rotates heads `x` (B, n, T, hd) of the columns `[from, T)`.
    fn apply(&self, x: &Tensor, from: i64) -> Tensor {
        let (cos, sin) = if from == 0 {
            (self.cos.shallow_clone(), self.sin.shallow_clone())
        } else {
            let t = self.cos.size()[2] - from;
            (self.cos.narrow(2, from, t), self.sin.narrow(2, from, t))
        };
        (x * cos).addcmul(&x.matmul(&self.half_swap), &sin)
    }
}

/// The (hd, hd) matrix M with [x1, x2] M = [-x2, x1] for halves x1, x2 of a head.
fn half_swap_matrix(head_dim: i64) -> Tensor {
    let half = head_dim / 2;
    let m = Tensor::zeros([head_dim, head_dim], (Kind::Float, tch::Device::Cpu));
    for j in 0..half {
        let _ = m.get(j + half).get(j).fill_(-1.0);
        let _ = m.get(j).get(j + half).fill_(1.0);
    }
    m
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

    fn forward(&self, x: &Tensor) -> Tensor {
        if x.kind() == Kind::Float {
            // One fused operation: fewer small operations in every thought's pass.
            let dim = *x.size().last().expect("non-scalar input");
            return x.rms_norm([dim], Some(&self.weight), self.eps);
        }
        let xf = x.to_kind(Kind::Float);
        let variance = xf.square().mean_dim(-1, true, Kind::Float);
        let normed = (xf * (variance + self.eps).rsqrt()).to_kind(x.kind());
        normed * self.weight.to_kind(x.kind())
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

    /// Computes in the kind of `x` (the f32 master weights are cast for bf16 compute).
    fn forward(&self, x: &Tensor) -> Tensor {
        let bias = self.bias.as_ref().map(|b| b.to_kind(x.kind()));
        x.linear(&self.weight.to_kind(x.kind()), bias.as_ref())
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

    /// Attention of the queries of columns `[queries_from, T)` over every key: returns
    /// (B, T - queries_from, C). Keys and values are computed (and cached) for all T columns.
    fn forward(
        &self,
        x: &Tensor,
        rotation: &Rotation,
        pass: &PassInputs,
        layer: usize,
        cache: Option<&mut KvCache>,
        queries_from: i64,
    ) -> Tensor {
        let q = self.q_proj.forward(&pass.columns_from(x, queries_from));
        let q = split_heads(&pass.grid(&q, queries_from), self.n_head); // (B, nh, tq, hd)
        let k = split_heads(&pass.grid(&self.k_proj.forward(x), 0), self.n_kv_head); // (B, n_kv, T, hd)
        let v = split_heads(&pass.grid(&self.v_proj.forward(x), 0), self.n_kv_head);
        let (q, k) = (rotation.apply(&q, queries_from), rotation.apply(&k, 0));
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

    /// The block's output for columns `[outputs_from, T)`, (B, T - outputs_from, C) (real
    /// tokens alone when the pass is packed); the keys and values of every column still
    /// enter the cache.
    fn forward(
        &self,
        x: &Tensor,
        rotation: &Rotation,
        pass: &PassInputs,
        layer: usize,
        cache: Option<&mut KvCache>,
        outputs_from: i64,
    ) -> Tensor {
        let normed = self.input_layernorm.forward(x);
        let attn = self.self_attn.forward(&normed, rotation, pass, layer, cache, outputs_from);
        let x = pass.columns_from(x, outputs_from) + attn;
        &x + self.mlp.forward(&self.post_attention_layernorm.forward(&x))
    }
}

/// A Llama-family model. Its variables live in the `VarStore` passed to [`Llama::new`] under
/// `model.*` and, when untied, `lm_head.weight`: exactly the HF checkpoint keys.
#[derive(Debug)]
pub struct Llama {
    config: LlamaConfig,
    compute: Kind, // kind of activations and matmuls; parameters keep their own kind
    embed_tokens: Tensor, // (V, C)
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Option<Tensor>, // (V, C) when untied
    inv_freq: Tensor,        // (hd / 2) rotary frequencies, f32, on the model's device
    half_swap: Tensor,       // (hd, hd), see `half_swap_matrix`
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
            compute: Kind::Float,
            embed_tokens: (&model / "embed_tokens").var("weight", &[v, c], init),
            layers: (0..config.num_hidden_layers)
                .map(|i| Block::new(&model / "layers" / i, config))
                .collect(),
            norm: RmsNorm::new(&model / "norm", c, config.rms_norm_eps),
            lm_head: (!config.tie_word_embeddings)
                .then(|| (vs / "lm_head").var("weight", &[v, c], init)),
            inv_freq: Tensor::from_slice(&inv_freq).to_kind(Kind::Float).to_device(vs.device()),
            half_swap: half_swap_matrix(config.head_dim as i64).to_device(vs.device()),
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
        hidden.matmul(&weight.to_kind(hidden.kind()).tr())
    }

    fn set_compute_kind(&mut self, kind: Kind) {
        self.compute = kind;
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
        embeds.to_kind(self.compute)
    }

    fn block(
        &self,
        layer: usize,
        x: &Tensor,
        pass: &PassInputs,
        cache: Option<&mut KvCache>,
        outputs_from: i64,
    ) -> Tensor {
        let rotation = Rotation::new(self, pass, x.kind());
        self.layers[layer].forward(x, &rotation, pass, layer, cache, outputs_from)
    }

    fn final_norm(&self, x: &Tensor) -> Tensor {
        self.norm.forward(x)
    }
}
