//! `train.precision`: a run records the precision it resolved to, a resume keeps it (`auto`
//! accepts it, an explicit other one is refused), and bf16 trains on a CPU.

mod common;

use std::path::Path;
use std::process::Command;

use common::{last_checkpoint, succeed, train, write_config, write_config_with_model};

/// `train-all-stages` on `config` for `n` epochs.
fn epochs(config: &Path, n: usize) -> Command {
    let mut command = train(config);
    command.args(["--set", &format!("train.num_epochs={n}")]);
    command
}

/// The precision recorded in a checkpoint's training state.
fn recorded(ckpt: &Path) -> &'static str {
    coconut_trainer::checkpoint::read_state(ckpt).unwrap().precision().name()
}

#[test]
fn a_resumed_run_keeps_its_precision() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "bf16", "precision = \"bf16\"");
    succeed(epochs(&config, 1));
    let run = dir.path().join("bf16");
    assert_eq!(recorded(&last_checkpoint(&run)), "bf16");
    let losses = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(!losses.contains("NaN") && losses.contains("\"loss\""), "{losses}");

    // One more epoch with the precision left to `auto`: the run continues in bf16.
    let text = std::fs::read_to_string(&config).unwrap().replace("precision = \"bf16\"\n", "");
    std::fs::write(&config, text).unwrap();
    succeed(epochs(&config, 2));
    assert_eq!(recorded(&last_checkpoint(&run)), "bf16");

    // An explicit other precision would make it another run: refused, naming the key.
    let out = epochs(&config, 3).args(["--set", "train.precision=f32"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("train.precision: bf16 then, f32 now"), "{err}");
}

#[test]
fn the_old_bf16_key_is_read_and_both_keys_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "old", "bf16 = false");
    succeed(epochs(&config, 1));
    assert_eq!(recorded(&last_checkpoint(&dir.path().join("old"))), "f32");

    let both = write_config(dir.path(), "both", "bf16 = true\nprecision = \"bf16\"");
    let out = train(&both).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("train.precision and train.bf16 are both set"), "{err}");
    assert!(err.contains("both.toml"), "the error names the file: {err}");
}

/// `auto` takes bf16 on a CPU with native bf16 for a model at least
/// `MIN_CPU_BF16_WIDTH` wide, f32 otherwise: a narrower model is faster in f32 there.
#[test]
fn auto_resolves_by_the_cpu_and_the_width() {
    let dir = tempfile::tempdir().unwrap();
    let native = coconut_trainer::native_bf16(tch::Device::Cpu);
    let wide = coconut_trainer::MIN_CPU_BF16_WIDTH;
    for (name, width, bf16) in [("narrow", 32, false), ("wide", wide, native)] {
        let model = format!(
            "n_layer = 1\nn_embd = {width}\nn_head = 2\nn_positions = 1024\nvocab_size = 300"
        );
        let config = write_config_with_model(dir.path(), name, &model, "");
        succeed(epochs(&config, 1));
        let expected = if bf16 { "bf16" } else { "f32" };
        assert_eq!(recorded(&last_checkpoint(&dir.path().join(name))), expected, "{name}");
    }
}
