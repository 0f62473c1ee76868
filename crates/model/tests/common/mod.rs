//! Fixtures shared by the model's test binaries.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use coconut_model::{load_pretrained, Gpt2};
use tch::{nn::VarStore, Device, Tensor};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn reference() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join("gpt2_reference.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

pub fn fixture_model() -> (VarStore, Gpt2) {
    let vs = VarStore::new(Device::Cpu);
    let model = load_pretrained(&vs, &fixtures().join("tiny-random-gpt2")).unwrap();
    (vs, model)
}

pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// The decoding fixture's ids, attention mask and position ids.
pub fn decode_inputs(r: &HashMap<String, Tensor>) -> (&Tensor, &Tensor, &Tensor) {
    (&r["decode.input_ids"], &r["decode.attention_mask"], &r["decode.position_ids"])
}
