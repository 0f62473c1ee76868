//! Loading model folders whose embedding and tokenizer differ in size: a model padded past
//! its tokenizer (as Qwen2.5 is), and a tokenizer that belongs to another model.

use std::path::Path;

use coconut_model::{load_pretrained, save_pretrained};
use coconut_trainer::{load_model_dir, TrainError};
use tch::{nn::VarStore, Device};

/// A copy of the tiny Qwen2 folder whose embedding has `extra` rows more than its tokenizer.
fn padded_qwen2(extra: usize) -> tempfile::TempDir {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-qwen2");
    let dir = tempfile::tempdir().unwrap();
    for file in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        std::fs::copy(source.join(file), dir.path().join(file)).unwrap();
    }
    let vs = VarStore::new(Device::Cpu);
    let mut model = load_pretrained(&vs, &source).unwrap();
    let rows = model.shape().vocab_size;
    // Padding rows hold whatever the model's training left there: here row 0's values.
    model.resize_token_embeddings(rows + extra, 0);
    save_pretrained(&vs, model.as_ref(), dir.path()).unwrap();
    dir
}

#[test]
fn latent_markers_take_padding_rows_initialised_from_the_init_token() {
    let dir = padded_qwen2(16);
    let loaded = load_model_dir(dir.path(), Device::Cpu, "<<").unwrap();
    // No row is added: the four tokens fit in the padding.
    assert_eq!(loaded.model.shape().vocab_size, 420 + 16);
    let init = i64::from(loaded.tokenizer.token_id("<<").unwrap());
    let embedding = &loaded.vs.variables()["model.embed_tokens.weight"];
    for &id in loaded.tokenizer.newly_added() {
        assert!((420..424).contains(&id), "{id}");
        assert!(embedding.get(i64::from(id)).equal(&embedding.get(init)), "row {id}");
    }
}

#[test]
fn a_tokenizer_far_smaller_than_the_model_is_refused() {
    let dir = padded_qwen2(2000);
    let Err(err) = load_model_dir(dir.path(), Device::Cpu, "<<") else { panic!("loaded") };
    assert!(matches!(err, TrainError::TokenizerMismatch { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("tokenizer.json") && text.contains("config.json"), "{text}");
}
