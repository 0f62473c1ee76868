//! Loading and saving HF GPT-2 checkpoint folders: `config.json` and `model.safetensors`
//! in the `save_pretrained` layout (`transformer.` prefix, Conv1D weights, tied head), so a
//! folder saved here loads unchanged with `GPT2LMHeadModel.from_pretrained(dir)`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use tch::{nn, Device, Kind, Tensor};

use crate::gpt2::{Gpt2, Gpt2Config};
use crate::ModelError;

/// File name of the configuration inside a checkpoint folder.
pub const CONFIG_FILE: &str = "config.json";
/// File name of the weights inside a checkpoint folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Reads and validates `dir/config.json`.
pub fn load_config(dir: &Path) -> Result<Gpt2Config, ModelError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|error| ModelError::Io { path: path.clone(), error })?;
    let config: Gpt2Config = serde_json::from_str(&text)
        .map_err(|source| ModelError::Config { path: path.clone(), message: source.to_string() })?;
    config.validate().map_err(|message| ModelError::Config { path, message })?;
    Ok(config)
}

/// Builds a model in `vs` from the checkpoint folder `dir`.
///
/// Every parameter must be present with the right shape and only finite values, and no
/// unknown tensor may remain; errors name the file and the tensor. HF buffers that are not parameters
/// (`attn.bias`, `attn.masked_bias`) and the tied `lm_head.weight` are skipped. Weights
/// stored as f16 or bf16 are converted to the VarStore's kind.
pub fn load_pretrained(vs: &nn::VarStore, dir: &Path) -> Result<Gpt2, ModelError> {
    let config = load_config(dir)?;
    let model = Gpt2::new(&vs.root(), &config);
    let path = dir.join(WEIGHTS_FILE);
    let tensors = read_weights(&path)?;
    copy_into(vs, tensors, &path)?;
    Ok(model)
}

/// Writes `dir/config.json` and `dir/model.safetensors` (f32, `format: pt` metadata as
/// `save_pretrained` writes it). The folder is created if needed.
///
/// A plain writer; durable, atomic folders are the trainer's checkpoint writer's job, which
/// writes the same bytes ([`pretrained_files`]).
pub fn save_pretrained(vs: &nn::VarStore, model: &Gpt2, dir: &Path) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir)
        .map_err(|error| ModelError::Io { path: dir.to_path_buf(), error })?;
    for (name, bytes) in pretrained_files(vs, model) {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|error| ModelError::Io { path, error })?;
    }
    Ok(())
}

/// The files of an HF model folder as bytes, by file name: `config.json`, then
/// `model.safetensors` (every variable as f32, `format: pt` metadata).
pub fn pretrained_files(vs: &nn::VarStore, model: &Gpt2) -> Vec<(&'static str, Vec<u8>)> {
    let json = serde_json::to_string_pretty(model.config()).expect("a config always serialises");
    let named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(name, t)| (name, t.detach().to_kind(Kind::Float)))
        .collect();
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let weights = serialize_tensors(&named, Some(metadata)).expect("f32 tensors always serialise");
    vec![(CONFIG_FILE, json.into_bytes()), (WEIGHTS_FILE, weights)]
}

/// Serialises named tensors (any device) to safetensors bytes, sorted by name, keeping each
/// tensor's dtype. Errors name a tensor whose kind safetensors cannot hold.
pub fn serialize_tensors(
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>, String> {
    let mut buffers = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let dtype = match tensor.kind() {
            Kind::Float => Dtype::F32,
            Kind::Double => Dtype::F64,
            Kind::Half => Dtype::F16,
            Kind::BFloat16 => Dtype::BF16,
            Kind::Int64 => Dtype::I64,
            Kind::Int => Dtype::I32,
            Kind::Int16 => Dtype::I16,
            Kind::Int8 => Dtype::I8,
            Kind::Uint8 => Dtype::U8,
            Kind::Bool => Dtype::BOOL,
            other => return Err(format!("tensor {name} has unsupported kind {other:?}")),
        };
        let tensor = tensor.detach().to_device(Device::Cpu).contiguous();
        let numel = tensor.numel();
        let mut bytes = vec![0u8; numel * tensor.kind().elt_size_in_bytes()];
        tensor.f_copy_data_u8(&mut bytes, numel).map_err(|e| format!("tensor {name}: {e}"))?;
        let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
        buffers.push((name.as_str(), dtype, shape, bytes));
    }
    buffers.sort_by(|a, b| a.0.cmp(b.0));
    let mut views = Vec::with_capacity(buffers.len());
    for (name, dtype, shape, bytes) in &buffers {
        let view = TensorView::new(*dtype, shape.clone(), bytes)
            .map_err(|e| format!("tensor {name}: {e}"))?;
        views.push((*name, view));
    }
    safetensors::serialize(views, metadata).map_err(|e| e.to_string())
}

/// Reads every tensor of a safetensors file, keyed by its HF name with the `transformer.`
/// prefix (files saved from a bare `GPT2Model` lack it).
fn read_weights(path: &Path) -> Result<BTreeMap<String, Tensor>, ModelError> {
    let bytes =
        std::fs::read(path).map_err(|error| ModelError::Io { path: path.to_path_buf(), error })?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| ModelError::Weights { path: path.to_path_buf(), message: e.to_string() })?;
    let mut tensors = BTreeMap::new();
    for (name, view) in file.tensors() {
        if is_skipped(&name) {
            continue;
        }
        let kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            other => {
                return Err(ModelError::Weights {
                    path: path.to_path_buf(),
                    message: format!("tensor {name} has unsupported dtype {other:?}"),
                })
            }
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let tensor = Tensor::f_from_data_size(view.data(), &shape, kind).map_err(|e| {
            ModelError::Weights { path: path.to_path_buf(), message: format!("tensor {name}: {e}") }
        })?;
        let name =
            if name.starts_with("transformer.") { name } else { format!("transformer.{name}") };
        tensors.insert(name, tensor);
    }
    Ok(tensors)
}

/// Attention-mask buffers of older HF files and the tied head carry no parameters.
fn is_skipped(name: &str) -> bool {
    name == "lm_head.weight" || name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias")
}

/// Copies file tensors into the VarStore, checking the key set and every shape.
fn copy_into(
    vs: &nn::VarStore,
    mut tensors: BTreeMap<String, Tensor>,
    path: &Path,
) -> Result<(), ModelError> {
    let file = PathBuf::from(path);
    let variables = vs.variables();
    let mut names: Vec<&String> = variables.keys().collect();
    names.sort();
    for name in names {
        let var = &variables[name];
        let Some(src) = tensors.remove(name) else {
            return Err(ModelError::MissingTensor { path: file, name: name.clone() });
        };
        if src.size() != var.size() {
            return Err(ModelError::ShapeMismatch {
                path: file,
                name: name.clone(),
                expected: var.size(),
                found: src.size(),
            });
        }
        if !is_finite(&src) {
            return Err(ModelError::NonFiniteTensor { path: file, name: name.clone() });
        }
        tch::no_grad(|| var.shallow_clone().copy_(&src.to_kind(var.kind())));
    }
    if let Some(name) = tensors.into_keys().next() {
        return Err(ModelError::UnexpectedTensor { path: file, name });
    }
    Ok(())
}

/// Whether every value of a tensor is finite (integer tensors always are).
pub fn is_finite(tensor: &Tensor) -> bool {
    if !tensor.is_floating_point() {
        return true;
    }
    tensor.isfinite().all().int64_value(&[]) != 0
}
