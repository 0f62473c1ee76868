//! `coconut import-config`: the TOML on stdout parses as a run config, the decisions go to
//! stderr, and an unknown key ends the command with an error naming the file and the key.

use std::path::{Path, PathBuf};
use std::process::Command;

use coconut_trainer::RunConfig;

fn official(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/official/args").join(name)
}

fn import_config(file: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_coconut"))
        .arg("import-config")
        .arg(file)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn an_official_args_file_becomes_a_run_config_on_stdout() {
    let out = import_config(&official("prontoqa_coconut.yaml"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let config =
        RunConfig::parse(&String::from_utf8(out.stdout).unwrap(), Path::new("out.toml")).unwrap();
    assert_eq!(config.name, "prontoqa-coconut");
    assert_eq!(config.train.grad_accum, 4);
    assert!(stderr.contains("reset_optimizer: True -> train.optimizer_reset = \"epoch\""));
    assert!(stderr.lines().count() >= 20, "one line per decision:\n{stderr}");
}

#[test]
fn an_unknown_key_fails_naming_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mine.yaml");
    let text = std::fs::read_to_string(official("prosqa_coconut.yaml")).unwrap();
    std::fs::write(&file, format!("{text}\nwarmup: 10\n")).unwrap();
    let out = import_config(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no TOML on failure");
    assert!(stderr.contains("mine.yaml") && stderr.contains("`warmup`"), "{stderr}");
}
