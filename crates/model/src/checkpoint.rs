//! Loading and saving HF checkpoint folders: `config.json` and `model.safetensors` (or
//! shards listed by `model.safetensors.index.json`) in the `save_pretrained` layout, so a
//! folder saved here loads unchanged with `AutoModelForCausalLM.from_pretrained(dir)`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use tch::{nn, Device, Kind, Tensor};

use crate::error::ModelError;
use crate::gpt2::{Gpt2, Gpt2Config};
use crate::llama::{Llama, LlamaConfig};
use crate::CausalLm;

/// File name of the configuration inside a checkpoint folder.
pub const CONFIG_FILE: &str = "config.json";
/// File name of the weights inside a checkpoint folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Index of a checkpoint whose weights are split over several files (shards).
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";

/// The architectures a `config.json` can name, by `model_type` or by `architectures`.
const ARCHITECTURES: &[(&str, &str, Family)] = &[
    ("gpt2", "GPT2LMHeadModel", Family::Gpt2),
    ("llama", "LlamaForCausalLM", Family::Llama),
    ("qwen2", "Qwen2ForCausalLM", Family::Llama),
];

#[derive(Debug, Clone, Copy)]
enum Family {
    Gpt2,
    Llama,
}

/// Reads `dir/config.json` and builds the model it describes, freshly initialised, in `vs`.
pub fn model_from_config(vs: &nn::VarStore, dir: &Path) -> Result<Box<dyn CausalLm>, ModelError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|error| ModelError::Io { path: path.clone(), error })?;
    let config_error = |message: String| ModelError::Config { path: path.clone(), message };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| config_error(e.to_string()))?;
    let model_type = json.get("model_type").and_then(|v| v.as_str());
    let architectures: Vec<&str> = json
        .get("architectures")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let family = ARCHITECTURES
        .iter()
        .find(|(ty, arch, _)| model_type == Some(*ty) || architectures.contains(arch))
        .map(|(_, _, family)| *family)
        .ok_or_else(|| {
            let known: Vec<&str> = ARCHITECTURES.iter().map(|(ty, _, _)| *ty).collect();
            config_error(format!(
                "unsupported model: model_type {model_type:?}, architectures {architectures:?} \
                 (supported model types: {})",
                known.join(", ")
            ))
        })?;
    Ok(match family {
        Family::Gpt2 => {
            let config: Gpt2Config =
                serde_json::from_value(json).map_err(|e| config_error(e.to_string()))?;
            config.validate().map_err(config_error)?;
            Box::new(Gpt2::new(&vs.root(), &config))
        }
        Family::Llama => {
            let config = LlamaConfig::from_hf(json).map_err(config_error)?;
            Box::new(Llama::new(&vs.root(), &config))
        }
    })
}

/// Builds a model in `vs` from the HF checkpoint folder `dir`: `config.json` names the
/// architecture (GPT-2, Llama or Qwen2), the weights come from `model.safetensors` or from
/// the shards that `model.safetensors.index.json` lists.
///
/// Every parameter must be present with the right shape and only finite values, and no
/// unknown tensor may remain; errors name the file and the tensor. Buffers that are not
/// parameters and a tied head's copy are skipped. Weights stored as f16 or bf16 are
/// converted to the VarStore's kind one tensor at a time from a memory map of the file, so
/// loading never holds a second copy of the weights.
pub fn load_pretrained(vs: &nn::VarStore, dir: &Path) -> Result<Box<dyn CausalLm>, ModelError> {
    let model = model_from_config(vs, dir)?;
    let variables = vs.variables();
    let mut loaded = HashSet::new();
    let files = weight_files(dir)?;
    for path in &files {
        copy_file_into(path, model.as_ref(), &variables, &mut loaded)?;
    }
    let mut names: Vec<&String> = variables.keys().filter(|n| !loaded.contains(*n)).collect();
    names.sort();
    if let Some(name) = names.first() {
        let path = if files.len() == 1 { files[0].clone() } else { dir.join(WEIGHTS_INDEX_FILE) };
        return Err(ModelError::MissingTensor { path, name: name.to_string() });
    }
    Ok(model)
}

/// The weight files of a folder: the shards its index lists, or `model.safetensors`.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index = dir.join(WEIGHTS_INDEX_FILE);
    if !index.exists() {
        return Ok(vec![dir.join(WEIGHTS_FILE)]);
    }
    let invalid = |message: String| ModelError::Weights { path: index.clone(), message };
    let text = std::fs::read_to_string(&index)
        .map_err(|error| ModelError::Io { path: index.clone(), error })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| invalid("no weight_map object".to_string()))?;
    let mut shards = BTreeSet::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| invalid(format!("{name}: not a file name")))?;
        if file.contains('/') || file.contains('\\') || file == ".." {
            return Err(invalid(format!("{name}: shard {file:?} is outside the folder")));
        }
        shards.insert(dir.join(file));
    }
    Ok(shards.into_iter().collect())
}

/// Copies every tensor of one safetensors file into its variable, checking names, shapes
/// and values; `loaded` collects the variables filled so far.
fn copy_file_into(
    path: &Path,
    model: &dyn CausalLm,
    variables: &HashMap<String, Tensor>,
    loaded: &mut HashSet<String>,
) -> Result<(), ModelError> {
    let io_error = |error| ModelError::Io { path: path.to_path_buf(), error };
    let invalid = |message: String| ModelError::Weights { path: path.to_path_buf(), message };
    let file = std::fs::File::open(path).map_err(io_error)?;
    // SAFETY: the map is read-only and lives until the end of this function; a checkpoint
    // file changed by another process while it loads could give torn values, which the
    // checks below cannot rule out but no Rust invariant depends on.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_error)?;
    let tensors = SafeTensors::deserialize(&map).map_err(|e| invalid(e.to_string()))?;
    let mut names = tensors.names();
    names.sort();
    for key in names {
        let view = tensors.tensor(key).map_err(|e| invalid(e.to_string()))?;
        let Some(name) = model.variable_for(key) else { continue };
        let Some(var) = variables.get(&name) else {
            return Err(ModelError::UnexpectedTensor {
                path: path.to_path_buf(),
                name: key.to_string(),
            });
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        if shape != var.size() {
            return Err(ModelError::ShapeMismatch {
                path: path.to_path_buf(),
                name: key.to_string(),
                expected: var.size(),
                found: shape,
            });
        }
        let kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            other => return Err(invalid(format!("tensor {key} has unsupported dtype {other:?}"))),
        };
        let src = Tensor::f_from_data_size(view.data(), &shape, kind)
            .map_err(|e| invalid(format!("tensor {key}: {e}")))?;
        if !is_finite(&src) {
            return Err(ModelError::NonFiniteTensor {
                path: path.to_path_buf(),
                name: key.to_string(),
            });
        }
        tch::no_grad(|| var.shallow_clone().copy_(&src.to_kind(var.kind())));
        loaded.insert(name);
    }
    Ok(())
}

/// Writes `dir/config.json` and `dir/model.safetensors` (f32, `format: pt` metadata as
/// `save_pretrained` writes it). The folder is created if needed.
///
/// A plain writer; durable, atomic folders are the trainer's checkpoint writer's job, which
/// writes the same bytes ([`pretrained_files`]).
pub fn save_pretrained(
    vs: &nn::VarStore,
    model: &dyn CausalLm,
    dir: &Path,
) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir)
        .map_err(|error| ModelError::Io { path: dir.to_path_buf(), error })?;
    for (name, bytes) in pretrained_files(vs.variables(), model) {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|error| ModelError::Io { path, error })?;
    }
    Ok(())
}

/// The files of an HF model folder as bytes, by file name: `config.json`, then
/// `model.safetensors` (`variables`, the model's by name, as f32, `format: pt` metadata). A
/// trainer passes its f32 masters when the model computes in bf16.
pub fn pretrained_files(
    variables: impl IntoIterator<Item = (String, Tensor)>,
    model: &dyn CausalLm,
) -> Vec<(&'static str, Vec<u8>)> {
    let json = serde_json::to_string_pretty(&model.hf_config()).expect("JSON always prints");
    let named: Vec<(String, Tensor)> =
        variables.into_iter().map(|(name, t)| (name, t.detach().to_kind(Kind::Float))).collect();
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

/// Whether every value of a tensor is finite (integer tensors always are).
pub fn is_finite(tensor: &Tensor) -> bool {
    if !tensor.is_floating_point() {
        return true;
    }
    tensor.isfinite().all().int64_value(&[]) != 0
}
