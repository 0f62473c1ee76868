//! Every architecture through the command line as a user runs it: a Llama trained from
//! scratch, and the Llama and Qwen2 folders made by transformers fine-tuned, each trained
//! through the stages, stopped by SIGTERM and resumed to the weights of an uninterrupted
//! run, then evaluated from its checkpoint. The checkpoints are HF folders that keep the
//! tokenizer's special-token choices.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use coconut_curriculum::Tokenizer;
use coconut_trainer::checkpoint::read_state;
use common::{
    assert_same_weights, coconut, last_checkpoint, step_lines, succeed, train,
    write_config_with_model,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// Trains `model` straight through, and again with a SIGTERM after two steps and a rerun;
/// both must end with the same weights. Returns the straight run's folder.
fn train_stop_and_resume(dir: &Path, case: &str, model: &str) -> PathBuf {
    let straight = write_config_with_model(dir, &format!("{case}-straight"), model, "");
    succeed(train(&straight));
    let stopped = write_config_with_model(dir, &format!("{case}-stopped"), model, "");
    let run = dir.join(format!("{case}-stopped"));
    let child = train(&stopped).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    while step_lines(&run) < 2 {
        assert!(started.elapsed() < Duration::from_secs(120), "{case}: no training step");
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(128 + 15),
        "{case}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    succeed(train(&stopped));
    let straight_run = dir.join(format!("{case}-straight"));
    assert_same_weights(&last_checkpoint(&straight_run), &last_checkpoint(&run));
    straight_run
}

#[test]
fn every_architecture_trains_resumes_and_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    let pretrained = |name: &str| format!("pretrained = {:?}", fixtures().join(name));
    let cases = [
        (
            "llama-scratch",
            "architecture = \"llama\"\nn_layer = 1\nn_embd = 32\nn_head = 4\nn_kv_head = 2\n\
             vocab_size = 300\nn_positions = 1024"
                .to_string(),
            "llama",
        ),
        ("llama", pretrained("tiny-llama"), "llama"),
        ("qwen2", pretrained("tiny-qwen2"), "qwen2"),
    ];
    for (case, model, model_type) in &cases {
        let run = train_stop_and_resume(dir.path(), case, model);
        let ckpt = last_checkpoint(&run);
        assert_eq!(read_state(&ckpt).unwrap().global_step, 24, "{case}");
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(ckpt.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["model_type"], *model_type, "{case}");

        // The checkpoint keeps the special-token choices of the folder it started from.
        let saved = Tokenizer::from_model_dir(&ckpt).unwrap();
        if *case != "llama-scratch" {
            let original =
                Tokenizer::from_model_dir(&fixtures().join(format!("tiny-{case}"))).unwrap();
            assert_eq!(saved.special(), original.special(), "{case}");
            assert_eq!(saved.stop_ids(), original.stop_ids(), "{case}");
        }
        assert_eq!(saved.special().bos.is_some(), *case == "llama", "{case}: BOS");

        let config_path = run.parent().unwrap().join(format!("{case}-straight.toml"));
        let out = succeed(coconut(&[
            "eval",
            "--config",
            config_path.to_str().unwrap(),
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--limit",
            "4",
        ]));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("accuracy"), "{case}: {stdout}");
    }
}
