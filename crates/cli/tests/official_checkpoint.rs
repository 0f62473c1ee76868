//! `scripts/convert_official_checkpoint.py` on checkpoints written the way the official
//! Coconut run.py writes them (made by `scripts/make_official_fixture.py` with torch and
//! transformers): the converted folder loads with `load_model_dir` and our forward gives the
//! logits transformers computed. The converter runs with `python3` and the standard library
//! only; a machine without `python3` fails this test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use coconut_model::causal_bias;
use coconut_model::testing::assert_close;
use coconut_testing::Tolerance;
use coconut_trainer::load_model_dir;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

/// The id of `<<`, whose embedding initialises the rows of added tokens.
const INIT_ID: i64 = 16791;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn official() -> PathBuf {
    root().join("fixtures/official")
}

/// Runs `python3 scripts/convert_official_checkpoint.py CKPT --base BASE --out OUT`.
fn convert(ckpt: &Path, base: &Path, out: &Path) -> Output {
    Command::new("python3")
        .current_dir(root())
        .arg("scripts/convert_official_checkpoint.py")
        .arg(ckpt)
        .arg("--base")
        .arg(base)
        .arg("--out")
        .arg(out)
        .output()
        .expect("python3 must be installed to run the checkpoint converter")
}

fn converted(ckpt: &str, out: &Path) {
    let output = convert(&official().join(ckpt), &root().join("fixtures/tiny-gpt2"), out);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "converting {ckpt} failed:\n{stderr}");
    assert!(stderr.contains("wrote"), "{stderr}");
}

fn floats(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(items) => items.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap()],
        other => panic!("expected numbers, found {other}"),
    }
}

fn ints(v: &Value) -> Vec<i64> {
    floats(v).into_iter().map(|x| x as i64).collect()
}

/// Loads the converted folder and compares the forward with transformers' values.
fn check_against_transformers(case: &str, dir: &Path) -> Tensor {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(official().join("expected.json")).unwrap())
            .unwrap();
    let e = &expected[case];
    let ids = ints(&e["input_ids"]);
    let columns = Tensor::from_slice(&ints(&e["columns"]));
    let t = ids.len() as i64;
    assert!(ids.contains(&50259), "the input holds a <|latent|>");

    let loaded = load_model_dir(dir, Device::Cpu, "<<").unwrap();
    let special = loaded.tokenizer.special();
    assert_eq!(
        [special.start_latent, special.end_latent, special.latent, special.pause],
        [50257, 50258, 50259, 50260],
        "{case}: the official token ids"
    );
    assert_eq!(loaded.model.shape().vocab_size, 50261, "{case}");

    let ids = Tensor::from_slice(&ids).view([1, t]);
    let positions = Tensor::arange(t, (Kind::Int64, Device::Cpu)).unsqueeze(0);
    let bias = causal_bias(&ids.ones_like(), Kind::Float);
    let (logits, hidden) =
        tch::no_grad(|| loaded.model.forward(&ids, &positions, &bias, None, false));
    let n_cols = columns.size()[0];
    let want_logits = Tensor::from_slice(&floats(&e["logits"])).view([1, t, n_cols]);
    let want_hidden = Tensor::from_slice(&floats(&e["hidden"])).view([1, t, -1]);
    let tol = Tolerance::scaled(1e-4);
    assert_close(&hidden, &want_hidden, tol, &format!("{case}: last hidden state"));
    assert_close(
        &logits.index_select(2, &columns),
        &want_logits,
        tol,
        &format!("{case}: logits against transformers"),
    );
    loaded.vs.variables()["transformer.wte.weight"].detach()
}

fn row(wte: &Tensor, id: i64) -> Vec<f32> {
    Vec::<f32>::try_from(wte.get(id)).unwrap()
}

#[test]
fn a_coconut_checkpoint_converts_and_matches_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("coconut");
    converted("coconut_checkpoint_tiny.pt", &out);
    let wte = check_against_transformers("coconut", &out);
    // The trained rows of the three official tokens are kept (they moved away from `<<`),
    // and the converter gave <pause> the row of `<<`.
    for id in [50257, 50258, 50259] {
        assert_ne!(row(&wte, id), row(&wte, INIT_ID), "row {id}");
    }
    assert_eq!(row(&wte, 50260), row(&wte, INIT_ID));
}

#[test]
fn a_cot_checkpoint_in_bf16_with_views_converts_and_matches_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cot");
    converted("cot_checkpoint_tiny.pt", &out);
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["vocab_size"], 50257, "a CoT checkpoint keeps GPT-2's rows");
    let wte = check_against_transformers("cot", &out);
    // load_model_dir grew the embedding by the four tokens, from `<<`.
    for id in 50257..=50260 {
        assert_eq!(row(&wte, id), row(&wte, INIT_ID), "row {id}");
    }
}

#[test]
fn the_converter_refuses_what_it_does_not_understand_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let refused = |output: Output| {
        assert!(!output.status.success(), "the converter accepted it");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };

    // Not a torch archive.
    let json = official().join("expected.json");
    let base = root().join("fixtures/tiny-gpt2");
    let err = refused(convert(&json, &base, &dir.path().join("a")));
    assert!(err.contains("expected.json") && err.contains("not a torch zip"), "{err}");

    // A base model with another layer count: the first missing key is named.
    let base3 = dir.path().join("base3");
    std::fs::create_dir(&base3).unwrap();
    let config = std::fs::read_to_string(base.join("config.json")).unwrap();
    std::fs::write(base3.join("config.json"), config.replace("\"n_layer\": 2", "\"n_layer\": 3"))
        .unwrap();
    std::fs::copy(base.join("tokenizer.json"), base3.join("tokenizer.json")).unwrap();
    let ckpt = official().join("coconut_checkpoint_tiny.pt");
    let err = refused(convert(&ckpt, &base3, &dir.path().join("b")));
    assert!(
        err.contains("coconut_checkpoint_tiny.pt")
            && err.contains("base_causallm.transformer.h.2.ln_1.weight"),
        "{err}"
    );

    // A key GPT-2 does not have: the archive rewritten with `ln_f` renamed `ln_g`.
    let renamed = dir.path().join("renamed.pt");
    let script = r#"
import sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
    for info in zin.infolist():
        data = zin.read(info.filename)
        if info.filename.endswith("/data.pkl"):
            data = data.replace(b"transformer.ln_f.bias", b"transformer.ln_g.bias")
        zout.writestr(info, data)
"#;
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(official().join("cot_checkpoint_tiny.pt"))
        .arg(&renamed)
        .status()
        .expect("python3 must be installed");
    assert!(status.success());
    let err = refused(convert(&renamed, &base, &dir.path().join("c")));
    assert!(err.contains("renamed.pt") && err.contains("transformer.ln_g.bias"), "{err}");
}
