//! Fixtures shared by the model's test binaries: for every architecture, a small random HF
//! model folder written by transformers and the outputs transformers computed with it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use coconut_model::{load_pretrained, CausalLm};
use coconut_testing::Tolerance;
use tch::{nn::VarStore, Device, Tensor};

/// One architecture's fixture.
#[allow(dead_code)] // not every test binary reads every field
pub struct Fixture {
    /// The architecture, for messages.
    pub name: &'static str,
    /// The HF model folder.
    pub dir: PathBuf,
    /// transformers' outputs on it (see the scripts that made them).
    pub reference: HashMap<String, Tensor>,
}

#[allow(dead_code)]
impl Fixture {
    /// Loads the fixture's model on the CPU.
    pub fn model(&self) -> (VarStore, Box<dyn CausalLm>) {
        let vs = VarStore::new(Device::Cpu);
        let model = load_pretrained(&vs, &self.dir)
            .unwrap_or_else(|e| panic!("{}: loading the fixture: {e}", self.name));
        (vs, model)
    }

    /// The decoding case's ids, attention mask and position ids.
    pub fn decode_inputs(&self) -> (&Tensor, &Tensor, &Tensor) {
        let r = &self.reference;
        (&r["decode.input_ids"], &r["decode.attention_mask"], &r["decode.position_ids"])
    }
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: PathBuf) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// GPT-2 (crates/model/tests/fixtures/make_gpt2_fixture.py), a Llama 3 with grouped-query
/// attention, rope scaling, an untied head and sharded bf16 weights, and a Qwen2 with
/// biased projections and a tied head (fixtures/make_llama_fixtures.py).
pub fn fixtures() -> Vec<Fixture> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let shared = repository().join("fixtures");
    vec![
        Fixture {
            name: "gpt2",
            dir: here.join("tiny-random-gpt2"),
            reference: read(here.join("gpt2_reference.safetensors")),
        },
        Fixture {
            name: "llama",
            dir: shared.join("tiny-llama"),
            reference: read(shared.join("reference/llama.safetensors")),
        },
        Fixture {
            name: "qwen2",
            dir: shared.join("tiny-qwen2"),
            reference: read(shared.join("reference/qwen2.safetensors")),
        },
    ]
}

/// The GPT-2 fixture alone.
#[allow(dead_code)]
pub fn gpt2() -> Fixture {
    fixtures().remove(0)
}

/// Against HF transformers: another implementation, so summation orders differ.
#[allow(dead_code)] // not every test binary compares with transformers
pub const HF: Tolerance = Tolerance::scaled(1e-4);
/// Between two of our own paths through the same arithmetic.
#[allow(dead_code)]
pub const SAME: Tolerance = Tolerance::scaled(1e-5);
