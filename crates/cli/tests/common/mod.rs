//! What the binary's test files share: a small run config on the committed ProsQA fixture,
//! and the `coconut` command.
#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn fixture_samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/datasets/prosqa/prosqa_valid.json")
}

/// The `[model]` section of [`write_config`]: a one-layer GPT-2 trained from scratch.
pub const SMALL_GPT2: &str = "n_layer = 1
n_embd = 32
n_head = 2
vocab_size = 300
n_positions = 1024";

/// A small run of 3 epochs of 8 steps (32 samples, batches of 4) ending at stage 2 (two
/// thoughts); `extra` adds lines to `[train]`.
pub fn write_config(dir: &Path, name: &str, extra: &str) -> PathBuf {
    write_config_with_model(dir, name, SMALL_GPT2, extra)
}

/// [`write_config`] with the lines of `[model]` given.
pub fn write_config_with_model(dir: &Path, name: &str, model: &str, extra: &str) -> PathBuf {
    let data = fixture_samples();
    let text = format!(
        r#"
name = "{name}"
output_dir = "{out}"
[data]
train = "{data}"
valid = "{data}"
max_train_samples = 32
max_valid_samples = 4
[model]
{model}
[curriculum]
max_latent_stage = 2
epochs_per_stage = 1
[train]
num_epochs = 3
batch_size = 4
lr = 1e-3
threads = 1
{extra}
[eval]
every_epoch = false
max_new_tokens = 8
"#,
        out = dir.display(),
        data = data.display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

pub fn coconut(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coconut"));
    cmd.args(args).env("RUST_LOG", "warn");
    cmd
}

pub fn train(config: &Path) -> Command {
    coconut(&["train-all-stages", "--config", config.to_str().unwrap()])
}

pub fn succeed(mut cmd: Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{:?}: {}", cmd, String::from_utf8_lossy(&out.stderr));
    out
}

/// The newest checkpoint of a run folder.
pub fn last_checkpoint(run: &Path) -> PathBuf {
    coconut_trainer::checkpoint::list_checkpoints(&run.join("checkpoints"))
        .pop()
        .expect("a checkpoint")
}

/// The training-step lines of a run's `metrics.jsonl` so far.
pub fn step_lines(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"kind\":\"step\""))
        .count()
}

/// A checkpoint's weights, by name.
pub fn weights(ckpt: &Path) -> Vec<(String, tch::Tensor)> {
    let mut w = tch::Tensor::read_safetensors(ckpt.join("model.safetensors")).unwrap();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

/// Two checkpoints hold bit-identical weights.
pub fn assert_same_weights(a: &Path, b: &Path) {
    let (a, b) = (weights(a), weights(b));
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x.equal(y), "{name} differs");
    }
}
