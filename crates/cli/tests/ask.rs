//! `coconut ask` on a trained checkpoint generates what `coconut eval` generates for the same
//! question and thought count, and `--set` reaches the config of `train-all-stages`.

mod common;

use std::path::Path;
use std::process::Output;

use common::{coconut, fixture_samples, succeed, write_config};

/// `coconut args...`, which must succeed.
fn ok(args: &[&str]) -> Output {
    succeed(coconut(args))
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
    let config = write_config(dir.path(), "ask", "");
    let config = config.to_str().unwrap();
    // `--set` reaches the config: three epochs where the file says two; the final stage is 2.
    std::fs::write(
        config,
        std::fs::read_to_string(config).unwrap().replace("num_epochs = 3", "num_epochs = 2"),
    )
    .unwrap();
    ok(&["train-all-stages", "--config", config, "--set", "train.num_epochs=3"]);
    let run = dir.path().join("ask");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("checkpoints/e003-s0000024/train_state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["config"]["train"]["num_epochs"], 3);
    let ckpt = run.join("checkpoints/e003-s0000024");
    let ckpt = ckpt.to_str().unwrap();

    let eval_dir = dir.path().join("eval");
    ok(&[
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
    let predictions = json_lines(&eval_dir.join("predictions_ask-e003-s0000024_valid.jsonl"));
    assert_eq!(predictions.len(), 4);
    let samples: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture_samples()).unwrap()).unwrap();
    let mut texts = Vec::new();
    for (p, sample) in predictions.iter().zip(&samples) {
        assert_eq!(p["thoughts"], 2);
        let question = sample["question"].as_str().unwrap();
        let out = ok(&["ask", "--checkpoint", ckpt, "--json", question]);
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
    let out = ok(&["ask", "--checkpoint", ckpt, "--thoughts", "0", "--json", question]);
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["slots"], 0);
    assert!(reply["thoughts"].as_array().unwrap().is_empty());
}
