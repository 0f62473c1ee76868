//! `coconut ask` on a trained checkpoint generates what `coconut eval` generates for the same
//! question and thought count, and `--set` reaches the config of `train-all-stages`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture_samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/datasets/prosqa/prosqa_valid.json")
}

/// A run of three epochs that ends at stage 2: two continuous thoughts per prompt.
fn write_config(dir: &Path) -> PathBuf {
    let data = fixture_samples();
    let text = format!(
        r#"
name = "ask"
output_dir = "{out}"
[data]
train = "{data}"
valid = "{data}"
max_train_samples = 32
[model]
n_layer = 1
n_embd = 32
n_head = 2
vocab_size = 300
n_positions = 1024
[curriculum]
max_latent_stage = 2
epochs_per_stage = 1
[train]
num_epochs = 2
batch_size = 8
lr = 1e-3
threads = 1
[eval]
every_epoch = false
max_new_tokens = 24
"#,
        out = dir.display(),
        data = data.display()
    );
    let path = dir.join("ask.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn coconut(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_coconut"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "coconut {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn ask_generates_what_eval_generates() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let config = config.to_str().unwrap();
    // `--set` raises the epochs to three: the final stage is 2.
    coconut(&["train-all-stages", "--config", config, "--set", "train.num_epochs=3"]);
    let run = dir.path().join("ask");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("checkpoints/e003-s0000012/train_state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["config"]["train"]["num_epochs"], 3);
    let ckpt = run.join("checkpoints/e003-s0000012");
    let ckpt = ckpt.to_str().unwrap();

    let eval_dir = dir.path().join("eval");
    coconut(&[
        "eval",
        "--config",
        config,
        "--checkpoint",
        ckpt,
        "--limit",
        "4",
        "--batch-size",
        "3",
        "--out",
        eval_dir.to_str().unwrap(),
    ]);
    let predictions = json_lines(&eval_dir.join("predictions_ask-e003-s0000012_valid.jsonl"));
    assert_eq!(predictions.len(), 4);
    let samples: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture_samples()).unwrap()).unwrap();
    let mut texts = Vec::new();
    for (p, sample) in predictions.iter().zip(&samples) {
        assert_eq!(p["thoughts"], 2);
        let question = sample["question"].as_str().unwrap();
        let out = coconut(&["ask", "--checkpoint", ckpt, "--json", question]);
        let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(reply["slots"], 2);
        assert_eq!(reply["thoughts"].as_array().unwrap().len(), 2);
        assert_eq!(reply["generated"], p["generated"], "{question}");
        assert_eq!(reply["answer"], p["prediction"]);
        texts.push(reply["generated"].as_str().unwrap().to_string());
    }
    assert!(texts.iter().any(|t| !t.is_empty()), "the model generates something");

    // Without thoughts the prompt differs, and so does what the model reads.
    let question = samples[0]["question"].as_str().unwrap();
    let out = coconut(&["ask", "--checkpoint", ckpt, "--thoughts", "0", "--json", question]);
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["slots"], 0);
    assert!(reply["thoughts"].as_array().unwrap().is_empty());
}
