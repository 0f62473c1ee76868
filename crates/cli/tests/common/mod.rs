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

/// `eval` of checkpoint `ckpt` under `config`, on its first two samples, with `extra`
/// arguments.
pub fn eval_two(config: &Path, ckpt: &Path, extra: &[&str]) -> Output {
    let (config, ckpt) = (config.to_str().unwrap(), ckpt.to_str().unwrap());
    let mut args = vec!["eval", "--config", config, "--checkpoint", ckpt, "--limit", "2"];
    args.extend_from_slice(extra);
    coconut(&args).output().unwrap()
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

/// Copies the folder `src` to `dst`, recursively.
pub fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap().flatten() {
        let target = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The lines of a run's `metrics.jsonl` without what depends on the machine's speed
/// (`tokens_per_s`, `seconds`, at any depth).
pub fn metrics_without_timings(run: &Path) -> Vec<serde_json::Value> {
    fn strip(value: &mut serde_json::Value) {
        if let serde_json::Value::Object(map) = value {
            map.remove("tokens_per_s");
            map.remove("seconds");
            map.values_mut().for_each(strip);
        }
    }
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|line| {
            let mut value: serde_json::Value = serde_json::from_str(line).unwrap();
            strip(&mut value);
            value
        })
        .collect()
}

/// Two runs wrote the same `metrics.jsonl`, line for line, in every field but the timings.
pub fn assert_same_metrics(a: &Path, b: &Path) {
    let (a, b) = (metrics_without_timings(a), metrics_without_timings(b));
    assert_eq!(a.len(), b.len(), "as many lines");
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x, y, "line {i} differs");
    }
}
