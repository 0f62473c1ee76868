//! The bytes of a model folder: what `save_pretrained` writes is `pretrained_files`, loads
//! back exactly, and tensors that tch reads back with their kinds; non-finite weights are
//! refused on load, naming the file and the tensor.

use std::collections::HashMap;

use coconut_model::{
    load_pretrained, pretrained_files, save_pretrained, serialize_tensors, CausalLm, Gpt2,
    Gpt2Config, ModelError, CONFIG_FILE, WEIGHTS_FILE,
};
use coconut_testing::{assert_close, is_close, Tolerance};
use tch::{nn::VarStore, Device, Kind, Tensor};

/// Saved f32 values come back bit for bit.
const EXACT: Tolerance = Tolerance::new(0.0, 0.0);

fn tiny() -> (VarStore, Gpt2) {
    tch::manual_seed(7);
    let vs = VarStore::new(Device::Cpu);
    let model = Gpt2::new(&vs.root(), &Gpt2Config::new(40, 16, 8, 1, 2));
    (vs, model)
}

/// Panics unless two tensors hold the same values (compared as f64, element by element).
fn assert_same(actual: &Tensor, expected: &Tensor, what: &str) {
    assert_eq!(actual.size(), expected.size(), "{what}: shapes differ");
    let flat =
        |t: &Tensor| Vec::<f64>::try_from(t.detach().to_kind(Kind::Double).flatten(0, -1)).unwrap();
    for (i, (a, e)) in flat(actual).into_iter().zip(flat(expected)).enumerate() {
        if !is_close(a, e, EXACT) {
            assert_close(a, e, EXACT, &format!("{what}[{i}]"));
        }
    }
}

#[test]
fn save_pretrained_writes_pretrained_files_which_load_back_exactly() {
    let (vs, model) = tiny();
    let dir = tempfile::tempdir().unwrap();
    save_pretrained(&vs, &model, dir.path()).unwrap();
    let files = pretrained_files(vs.variables(), &model);
    let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, [CONFIG_FILE, WEIGHTS_FILE]);
    for (name, bytes) in &files {
        assert!(std::fs::read(dir.path().join(name)).unwrap() == *bytes, "{name} differs");
    }
    let loaded_vs = VarStore::new(Device::Cpu);
    let loaded = load_pretrained(&loaded_vs, dir.path()).unwrap();
    assert_eq!(loaded.hf_config(), model.hf_config());
    let saved = vs.variables();
    let back = loaded_vs.variables();
    assert_eq!(back.len(), saved.len());
    for (name, t) in &saved {
        assert_same(&back[name], t, name);
    }
}

#[test]
fn serialized_tensors_read_back_with_tch_keeping_their_kinds() {
    let step = Tensor::from(12345i64);
    let moments = Tensor::from_slice(&[0.25f32, -1.5, 3.0e-7, 8.0]).view([2, 2]);
    let wide = Tensor::from_slice(&[1.0e-300f64, 2.5]);
    let tensors = vec![
        ("step".to_string(), step.shallow_clone()),
        ("exp_avg.w".to_string(), moments.shallow_clone()),
        ("wide".to_string(), wide.shallow_clone()),
    ];
    let bytes = serialize_tensors(&tensors, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("optimizer.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let read: HashMap<String, Tensor> =
        Tensor::read_safetensors(&path).unwrap().into_iter().collect();
    assert_eq!(read.len(), 3);
    assert_eq!(read["step"].kind(), Kind::Int64);
    assert_eq!(read["step"].size(), Vec::<i64>::new());
    assert_eq!(read["step"].int64_value(&[]), 12345);
    assert_eq!(read["exp_avg.w"].kind(), Kind::Float);
    assert_same(&read["exp_avg.w"], &moments, "exp_avg.w");
    assert_eq!(read["wide"].kind(), Kind::Double);
    assert_same(&read["wide"], &wide, "wide");

    let complex = Tensor::zeros([2], (Kind::ComplexFloat, Device::Cpu));
    let err = serialize_tensors(&[("z".to_string(), complex)], None).unwrap_err();
    assert!(err.contains('z'), "{err}");
}

#[test]
fn a_nan_weight_is_refused_naming_the_file_and_the_tensor() {
    let (vs, model) = tiny();
    let name = "transformer.h.0.attn.c_attn.weight";
    let var = &vs.variables()[name];
    let _ = tch::no_grad(|| var.shallow_clone().get(2).get(5).fill_(f64::NAN));
    let dir = tempfile::tempdir().unwrap();
    save_pretrained(&vs, &model, dir.path()).unwrap();
    let err = load_pretrained(&VarStore::new(Device::Cpu), dir.path()).unwrap_err();
    let ModelError::NonFiniteTensor { path, name: found } = &err else { panic!("{err}") };
    assert_eq!(path, &dir.path().join(WEIGHTS_FILE));
    assert_eq!(found, name);
    let text = err.to_string();
    assert!(text.contains(WEIGHTS_FILE) && text.contains(name), "{text}");
}
