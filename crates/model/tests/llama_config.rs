//! What the Llama family reads from an HF folder: both spellings of the rotary settings,
//! Llama 3's frequency scaling, sharded bf16 weights, and clear errors for what is not
//! supported or broken.

use std::path::{Path, PathBuf};

use coconut_model::{load_pretrained, LlamaConfig, ModelError, WEIGHTS_INDEX_FILE};
use tch::nn::VarStore;
use tch::Device;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures").join(name)
}

fn config_json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("config.json")).unwrap())
        .unwrap()
}

#[test]
fn both_spellings_of_the_rotary_settings_parse_alike() {
    // tiny-llama spells them rope_theta + rope_scaling; move them into rope_parameters.
    let old = config_json("tiny-llama");
    let mut new = old.clone();
    let object = new.as_object_mut().unwrap();
    let mut parameters = object.remove("rope_scaling").unwrap();
    parameters["rope_theta"] = object.remove("rope_theta").unwrap();
    object.insert("rope_parameters".into(), parameters);
    let (a, b) = (LlamaConfig::from_hf(old).unwrap(), LlamaConfig::from_hf(new).unwrap());
    assert_eq!(a.rope, b.rope);
    assert_eq!(a.rope.theta, 500000.0);
    let scaling = a.rope.llama3.expect("llama3 scaling");
    assert_eq!((scaling.factor, scaling.original_max_position_embeddings), (8.0, 64.0));
    // Qwen2's file uses the newer spelling without scaling.
    let qwen = LlamaConfig::from_hf(config_json("tiny-qwen2")).unwrap();
    assert_eq!((qwen.rope.theta, qwen.rope.llama3), (1_000_000.0, None));
    assert!(qwen.qkv_bias && !qwen.o_bias && qwen.tie_word_embeddings);
}

#[test]
fn unsupported_settings_are_errors_that_say_what() {
    let with = |key: &str, value: serde_json::Value| {
        let mut json = config_json("tiny-qwen2");
        json[key] = value;
        LlamaConfig::from_hf(json).unwrap_err()
    };
    let e = with("rope_parameters", serde_json::json!({"rope_type": "yarn", "factor": 4.0}));
    assert!(e.contains("yarn"), "{e}");
    assert!(with("use_sliding_window", true.into()).contains("sliding"));
    assert!(with("hidden_act", "gelu".into()).contains("gelu"));
    assert!(with("num_key_value_heads", 3.into()).contains("num_key_value_heads"));
}

#[test]
fn an_unknown_architecture_names_the_file_and_the_type() {
    let dir = tempfile::tempdir().unwrap();
    let mut json = config_json("tiny-qwen2");
    json["model_type"] = "mamba".into();
    json["architectures"] = serde_json::json!(["MambaForCausalLM"]);
    std::fs::write(dir.path().join("config.json"), json.to_string()).unwrap();
    let err = load_pretrained(&VarStore::new(Device::Cpu), dir.path()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ModelError::Config { .. }), "{text}");
    assert!(text.contains("config.json") && text.contains("mamba"), "{text}");
    assert!(text.contains("llama") && text.contains("qwen2") && text.contains("gpt2"), "{text}");
}

#[test]
fn sharded_bf16_weights_load_as_f32_and_a_missing_shard_is_named() {
    let vs = VarStore::new(Device::Cpu);
    let model = load_pretrained(&vs, &fixture("tiny-llama")).unwrap();
    assert_eq!(model.shape().n_layer, 2);
    assert!(vs.variables().values().all(|v| v.kind() == tch::Kind::Float));
    assert!(vs.variables().contains_key("lm_head.weight"), "untied head");

    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("tiny-llama")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let index = std::fs::read_to_string(dir.path().join(WEIGHTS_INDEX_FILE)).unwrap();
    let shard = index.split('"').find(|s| s.starts_with("model-0000")).unwrap().to_string();
    std::fs::remove_file(dir.path().join(&shard)).unwrap();
    let err = load_pretrained(&VarStore::new(Device::Cpu), dir.path()).unwrap_err();
    assert!(matches!(err, ModelError::Io { .. }) && err.to_string().contains(&shard), "{err}");
}
