//! `coconut check-device`: every correctness check passes with the CPU as the device (the
//! comparison proves the plumbing: the command, the models of every architecture, the
//! checkpoint round trip, the bf16 step), and a CUDA device that this build or machine
//! cannot use is one line saying why, then `device_check=fail`.

mod common;

use std::process::Output;

use common::{coconut, fixture_samples};

/// `coconut check-device --device DEVICE --skip-timings` on the committed fixtures.
fn check_device(device: &str) -> Output {
    let tokenizer = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/tiny-gpt2/tokenizer.json");
    let data = fixture_samples();
    coconut(&["check-device", "--device", device, "--skip-timings", "--data"])
        .arg(data)
        .arg("--tokenizer")
        .arg(tokenizer)
        .output()
        .unwrap()
}

/// The lines a check-device run printed on stdout.
fn lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout).lines().map(str::to_string).collect()
}

#[test]
fn every_check_passes_on_the_cpu() {
    let output = check_device("cpu");
    let lines = lines(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{lines:#?}\n{stderr}");
    assert_eq!(lines.last().map(String::as_str), Some("device_check=pass"), "{lines:#?}");
    let checks: Vec<&String> = lines.iter().filter(|l| l.contains(": ok (")).collect();
    for name in ["loss_and_gradients", "adamw_step", "generation", "checkpoint", "bf16_step"] {
        for arch in ["gpt2", "llama", "qwen2"] {
            let prefix = format!("{name}[{arch}]: ok (");
            assert!(checks.iter().any(|l| l.starts_with(&prefix)), "{prefix} missing: {lines:#?}");
        }
    }
    assert!(!lines.iter().any(|l| l.contains("FAIL")), "{lines:#?}");
    let backend = coconut_trainer::cuda_backend_version().map_or("absent", |_| "compiled");
    assert!(lines.contains(&format!("cuda_backend={backend}")), "{lines:#?}");
}

#[test]
fn an_unusable_cuda_device_is_one_line() {
    // A device index no machine has: the build without CUDA says so, the CUDA build says
    // the device is missing.
    let output = check_device("cuda:63");
    let lines = lines(&output);
    assert!(!output.status.success(), "{lines:#?}");
    assert_eq!(lines.last().map(String::as_str), Some("device_check=fail"), "{lines:#?}");
    let expected = match coconut_trainer::cuda_backend_version() {
        None => "device: FAIL (device \"cuda:63\": this binary was built without CUDA: cargo xtask setup --cuda)",
        Some(_) => "device: FAIL (device \"cuda:63\": no CUDA device 63 (",
    };
    assert!(lines.iter().any(|l| l.starts_with(expected)), "{lines:#?}");
    assert!(!String::from_utf8_lossy(&output.stderr).contains("panicked"));
}
