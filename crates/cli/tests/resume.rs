//! A run killed mid-epoch and restarted continues from its last checkpoint and ends with
//! the same weights as an uninterrupted run with the same seed; its report is complete.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tch::Tensor;

fn write_config(dir: &Path, name: &str) -> PathBuf {
    let data = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/datasets/prosqa/prosqa_valid.json");
    let text = format!(
        r#"
name = "{name}"
output_dir = "{out}"
[data]
train = "{data}"
valid = "{data}"
max_train_samples = 64
max_valid_samples = 4
[model]
n_layer = 2
n_embd = 64
n_head = 2
vocab_size = 300
n_positions = 1024
[curriculum]
max_latent_stage = 2
epochs_per_stage = 1
[train]
num_epochs = 3
batch_size = 4
lr = 1e-3
threads = 1
save_every_steps = 1
keep_last = 0
[eval]
every_epoch = false
max_new_tokens = 16
"#,
        out = dir.display(),
        data = data.display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn coconut(config: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coconut"));
    cmd.args(["train-all-stages", "--config"]).arg(config).env("RUST_LOG", "warn");
    cmd
}

fn final_weights(run: &Path) -> Vec<(String, Tensor)> {
    let ckpts = run.join("checkpoints");
    let mut names: Vec<PathBuf> =
        std::fs::read_dir(&ckpts).unwrap().flatten().map(|e| e.path()).collect();
    names.sort();
    let last = names.iter().rev().find(|p| p.join("train_state.json").exists()).unwrap();
    assert!(last.ends_with("e003-s0000048"), "{}", last.display());
    let mut w = Tensor::read_safetensors(last.join("model.safetensors")).unwrap();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

#[test]
fn a_killed_run_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let straight = write_config(dir.path(), "straight");
    assert!(coconut(&straight).status().unwrap().success());

    let killed = write_config(dir.path(), "killed");
    let run = dir.path().join("killed");
    let mut child = coconut(&killed).spawn().unwrap();
    // Kill (SIGKILL, no chance to clean up) once the second epoch has checkpointed a step.
    let started = Instant::now();
    loop {
        let in_epoch_1 = std::fs::read_dir(run.join("checkpoints"))
            .map(|d| {
                d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("e001-s00000"))
            })
            .unwrap_or(false);
        if in_epoch_1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!run.join("summary.json").exists(), "the run finished before it was killed");

    assert!(coconut(&killed).status().unwrap().success());
    let (a, b) = (final_weights(&dir.path().join("straight")), final_weights(&run));
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x.equal(y), "{name} differs after resume");
    }
    for file in
        ["summary.json", "report.md", "loss.svg", "accuracy.svg", "metrics.jsonl", "config.toml"]
    {
        assert!(run.join(file).exists(), "{file} missing");
    }
}

#[test]
fn bad_configs_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "bad");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("lr = 1e-3", "lr = 1e-3\nlearning_rate = 2");
    std::fs::write(&path, text).unwrap();
    let out = coconut(&path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("learning_rate"), "{err}");

    // A paper config without the pretrained GPT-2 names the key and the file.
    let paper = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/prosqa-coconut.toml");
    let out = coconut(&paper).current_dir(dir.path()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("prosqa-coconut.toml") && err.contains("model.pretrained"), "{err}");
}
