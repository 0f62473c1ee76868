//! Fixtures shared by the model's test binaries.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use coconut_model::{load_pretrained, Gpt2};
use coconut_testing::Tolerance;
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

/// Against HF transformers: another implementation, so summation orders differ.
#[allow(dead_code)] // not every test binary compares with transformers
pub const HF: Tolerance = Tolerance::scaled(1e-4);
/// Between two of our own paths through the same arithmetic.
#[allow(dead_code)]
pub const SAME: Tolerance = Tolerance::scaled(1e-5);

/// The decoding fixture's ids, attention mask and position ids.
pub fn decode_inputs(r: &HashMap<String, Tensor>) -> (&Tensor, &Tensor, &Tensor) {
    (&r["decode.input_ids"], &r["decode.attention_mask"], &r["decode.position_ids"])
}
