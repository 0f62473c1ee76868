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
        .map_err(|source| ModelError::Io { path: path.clone(), source })?;
    let config: Gpt2Config = serde_json::from_str(&text)
        .map_err(|source| ModelError::Config { path: path.clone(), message: source.to_string() })?;
    config.validate().map_err(|message| ModelError::Config { path, message })?;
    Ok(config)
}

/// Builds a model in `vs` from the checkpoint folder `dir`.
///
/// Every parameter must be present with the right shape and no unknown tensor may remain;
/// errors name the file and the tensor. HF buffers that are not parameters
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
pub fn save_pretrained(vs: &nn::VarStore, model: &Gpt2, dir: &Path) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir)
        .map_err(|source| ModelError::Io { path: dir.to_path_buf(), source })?;
    let config_path = dir.join(CONFIG_FILE);
    let json = serde_json::to_string_pretty(model.config()).expect("a config always serialises");
    std::fs::write(&config_path, json)
        .map_err(|source| ModelError::Io { path: config_path, source })?;

    let named: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut buffers = Vec::with_capacity(named.len());
    for (name, tensor) in &named {
        let tensor = tensor.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
        let mut bytes = vec![0u8; tensor.numel() * 4];
        tensor.copy_data_u8(&mut bytes, tensor.numel());
        let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
        buffers.push((name.clone(), shape, bytes));
    }
    let views = buffers
        .iter()
        .map(|(name, shape, bytes)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytes)
                .expect("shape and byte count agree");
            (name.as_str(), view)
        })
        .collect::<Vec<_>>();
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let path = dir.join(WEIGHTS_FILE);
    safetensors::serialize_to_file(views, Some(metadata), &path)
        .map_err(|e| ModelError::Weights { path, message: e.to_string() })
}

/// Reads every tensor of a safetensors file, keyed by its HF name with the `transformer.`
/// prefix (files saved from a bare `GPT2Model` lack it).
fn read_weights(path: &Path) -> Result<BTreeMap<String, Tensor>, ModelError> {
    let bytes = std::fs::read(path)
        .map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
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
        tch::no_grad(|| var.shallow_clone().copy_(&src.to_kind(var.kind())));
    }
    if let Some(name) = tensors.into_keys().next() {
        return Err(ModelError::UnexpectedTensor { path: file, name });
    }
    Ok(())
}
