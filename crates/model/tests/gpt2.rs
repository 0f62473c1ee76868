//! The GPT-2 against HF transformers (a committed fixture made by
//! `fixtures/make_gpt2_fixture.py`), the real tiny-gpt2 checkpoint, and its invariants.

mod common;

use std::path::Path;

use coconut_model::testing::assert_close;
use coconut_model::{
    causal_bias, load_pretrained, padding_bias, save_pretrained, Gpt2, Gpt2Config, KvCache,
    ModelError,
};
use common::{decode_inputs, fixture_model, fixtures, reference, HF, SAME};
use tch::{nn::VarStore, Device, Kind, Tensor};

#[test]
fn matches_transformers_on_a_plain_batch() {
    let (_vs, model) = fixture_model();
    let r = reference();
    let bias = causal_bias(&r["plain.attention_mask"], Kind::Float);
    let (logits, hidden) =
        model.forward(&r["plain.input_ids"], &r["plain.position_ids"], &bias, None, false);
    assert_close(&logits, &r["plain.logits"], HF, "logits");
    assert_close(&hidden, &r["plain.hidden"], HF, "hidden");
}

#[test]
fn matches_transformers_on_left_padded_rows() {
    let (_vs, model) = fixture_model();
    let r = reference();
    let mask = &r["padded.attention_mask"];
    let bias = causal_bias(mask, Kind::Float);
    let (logits, hidden) =
        model.forward(&r["padded.input_ids"], &r["padded.position_ids"], &bias, None, false);
    // Only real positions are defined; padded ones differ by construction.
    let real = mask.unsqueeze(-1).to_kind(Kind::Float);
    assert_close(&(&logits * &real), &(&r["padded.logits"] * &real), HF, "logits");
    assert_close(&(&hidden * &real), &(&r["padded.hidden"] * &real), HF, "hidden");
    assert!(logits.isfinite().all().int64_value(&[]) == 1, "padding must not produce NaN");
}

#[test]
fn matches_transformers_when_decoding_with_the_cache() {
    // With gradients the cache keeps chunks; without, it writes into a growing buffer.
    decode_against_transformers();
    tch::no_grad(decode_against_transformers);
}

fn decode_against_transformers() {
    let (_vs, model) = fixture_model();
    let r = reference();
    let (ids, mask, pos) = decode_inputs(&r);
    let mut cache = KvCache::new();
    let prefix_bias = causal_bias(&mask.narrow(1, 0, 5), Kind::Float);
    let (logits, _) = model.forward(
        &ids.narrow(1, 0, 5),
        &pos.narrow(1, 0, 5),
        &prefix_bias,
        Some(&mut cache),
        false,
    );
    let mut steps = vec![logits.select(1, 4)];
    for t in 5..8 {
        let bias = padding_bias(&mask.narrow(1, 0, t + 1), Kind::Float);
        let (logits, _) = model.forward(
            &ids.narrow(1, t, 1),
            &pos.narrow(1, t, 1),
            &bias,
            Some(&mut cache),
            false,
        );
        steps.push(logits.select(1, 0));
    }
    assert_eq!(cache.len(), 8);
    assert_close(&Tensor::stack(&steps, 1), &r["decode.last_logits"], HF, "decoded logits");
}

#[test]
fn forward_over_embeddings_equals_forward_over_ids() {
    let (_vs, model) = fixture_model();
    let r = reference();
    let (ids, pos) = (&r["padded.input_ids"], &r["padded.position_ids"]);
    let bias = causal_bias(&r["padded.attention_mask"], Kind::Float);
    let (_, from_ids) = model.forward(ids, pos, &bias, None, false);
    let from_embeds = model.forward_embeds(&model.embed(ids), pos, &bias, None, false);
    assert_close(&from_embeds, &from_ids, SAME, "hidden");
}

#[test]
fn cached_decoding_equals_full_recomputation() {
    let (_vs, model) = fixture_model();
    let r = reference();
    let (ids, mask, pos) = decode_inputs(&r);
    let (full, _) = model.forward(ids, pos, &causal_bias(mask, Kind::Float), None, false);
    // The same sequence in three chunks of different sizes through one cache.
    let mut cache = KvCache::new();
    let mut chunks = Vec::new();
    for (start, len) in [(0, 3), (3, 1), (4, 4)] {
        let bias = causal_bias(&mask.narrow(1, 0, start + len), Kind::Float).narrow(2, start, len);
        let (logits, _) = model.forward(
            &ids.narrow(1, start, len),
            &pos.narrow(1, start, len),
            &bias,
            Some(&mut cache),
            false,
        );
        chunks.push(logits);
    }
    let real = mask.unsqueeze(-1).to_kind(Kind::Float);
    assert_close(&(Tensor::cat(&chunks, 1) * &real), &(full * &real), SAME, "chunked logits");
    cache.truncate(2);
    assert_eq!(cache.len(), 2);
}

#[test]
fn reading_only_the_last_columns_changes_neither_them_nor_the_cache() {
    let (_vs, model) = fixture_model();
    let r = reference();
    let (ids, mask, pos) = decode_inputs(&r);
    let bias = causal_bias(mask, Kind::Float);
    let t = ids.size()[1];
    let full = model.forward_embeds(&model.embed(ids), pos, &bias, None, false);
    for from in [1, t / 2, t - 1] {
        let mut cache = KvCache::new();
        let part =
            model.forward_embeds_from(&model.embed(ids), pos, &bias, Some(&mut cache), false, from);
        assert_eq!(part.size(), [ids.size()[0], t - from, full.size()[2]]);
        assert_close(&part, &full.narrow(1, from, t - from), SAME, &format!("from {from}"));
        // One more decoded column sees the same keys and values either way.
        let next = ids.narrow(1, 0, 1);
        let next_pos = pos.narrow(1, -1, 1) + 1;
        let next_mask = Tensor::cat(&[mask, &mask.narrow(1, 0, 1).ones_like()], 1);
        let step_bias = padding_bias(&next_mask, Kind::Float);
        let mut reference_cache = KvCache::new();
        let _ =
            model.forward_embeds(&model.embed(ids), pos, &bias, Some(&mut reference_cache), false);
        let a = model.forward_embeds(
            &model.embed(&next),
            &next_pos,
            &step_bias,
            Some(&mut cache),
            false,
        );
        let b = model.forward_embeds(
            &model.embed(&next),
            &next_pos,
            &step_bias,
            Some(&mut reference_cache),
            false,
        );
        assert_close(&a, &b, SAME, &format!("decoding after from {from}"));
    }
}

#[test]
fn reading_only_the_last_columns_gives_the_same_gradients() {
    let (vs, model) = fixture_model();
    let r = reference();
    let (ids, mask, pos) = decode_inputs(&r);
    let bias = causal_bias(mask, Kind::Float);
    let t = ids.size()[1];
    let grads = |hidden: Tensor| {
        let mut vs_grads = Vec::new();
        for (_, mut p) in vs.variables() {
            p.zero_grad();
        }
        let weights = hidden.ones_like().cumsum(2, Kind::Float); // a loss that weighs every unit
        (hidden * weights).sum(Kind::Float).backward();
        let mut named: Vec<_> = vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, p) in named {
            vs_grads.push((name, p.grad().copy()));
        }
        vs_grads
    };
    let full =
        grads(model.forward_embeds(&model.embed(ids), pos, &bias, None, false).narrow(1, t - 2, 2));
    let part = grads(model.forward_embeds_from(&model.embed(ids), pos, &bias, None, false, t - 2));
    for ((name, a), (_, b)) in full.iter().zip(&part) {
        assert_close(b, a, SAME, &format!("gradient of {name}"));
    }
    assert!(full.iter().any(|(_, g)| g.abs().sum(Kind::Float).double_value(&[]) > 0.0));
}

#[test]
fn save_then_load_gives_identical_tensors() {
    let (vs, model) = fixture_model();
    let dir = tempfile::tempdir().unwrap();
    save_pretrained(&vs, &model, dir.path()).unwrap();
    let vs2 = VarStore::new(Device::Cpu);
    let model2 = load_pretrained(&vs2, dir.path()).unwrap();
    assert_eq!(model.config(), model2.config());
    let (a, b) = (vs.variables(), vs2.variables());
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        assert!(t.equal(&b[name]), "{name} changed in a save/load round trip");
    }
}

#[test]
fn loads_the_real_tiny_gpt2_checkpoint() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-gpt2");
    let vs = VarStore::new(Device::Cpu);
    let model = load_pretrained(&vs, &dir).unwrap();
    assert_eq!(model.config().vocab_size, 50257);
    assert_eq!(vs.variables().len(), 2 + 2 * 12 + 2);
    let ids = Tensor::from_slice(&[15496i64, 995]).unsqueeze(0);
    let pos = Tensor::from_slice(&[0i64, 1]).unsqueeze(0);
    let (logits, _) =
        model.forward(&ids, &pos, &causal_bias(&ids.ones_like(), Kind::Float), None, false);
    assert_eq!(logits.size(), [1, 2, 50257]);
    assert!(logits.isfinite().all().int64_value(&[]) == 1);
}

#[test]
fn resizing_the_vocabulary_copies_the_init_token() {
    let vs = VarStore::new(Device::Cpu);
    let mut model = Gpt2::new(&vs.root(), &Gpt2Config::new(50, 16, 8, 1, 2));
    model.resize_token_embeddings(53, 7);
    assert_eq!(model.config().vocab_size, 53);
    let ids = Tensor::from_slice(&[7i64, 50, 51, 52]).unsqueeze(0);
    let e = model.embed(&ids).squeeze_dim(0); // (4, C)
    for row in 1..4 {
        assert!(e.get(row).equal(&e.get(0)));
    }
    // The tied head grew too, and the VarStore holds the grown matrix.
    assert_eq!(vs.variables()["transformer.wte.weight"].size(), [53, 8]);
}

/// Copies the fixture to a temporary folder for a corruption test.
fn corrupt_copy(edit: impl FnOnce(&Path)) -> (tempfile::TempDir, ModelError) {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("tiny-random-gpt2").join(f), dir.path().join(f)).unwrap();
    }
    edit(dir.path());
    let err = load_pretrained(&VarStore::new(Device::Cpu), dir.path()).unwrap_err();
    (dir, err)
}

#[test]
fn a_truncated_weights_file_is_a_clear_error() {
    let (_d, err) = corrupt_copy(|d| {
        let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
        std::fs::write(d.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    });
    assert!(matches!(err, ModelError::Weights { .. }), "{err}");
    assert!(err.to_string().contains("model.safetensors"));
}

#[test]
fn a_config_that_disagrees_with_the_weights_names_the_tensor() {
    let (_d, err) = corrupt_copy(|d| {
        let text = std::fs::read_to_string(d.join("config.json")).unwrap();
        std::fs::write(d.join("config.json"), text.replace("\"n_embd\": 32", "\"n_embd\": 64"))
            .unwrap();
    });
    let ModelError::ShapeMismatch { name, .. } = &err else { panic!("{err}") };
    assert!(name.starts_with("transformer."));
    let (_d, err) = corrupt_copy(|d| {
        let text = std::fs::read_to_string(d.join("config.json")).unwrap();
        std::fs::write(d.join("config.json"), text.replace("\"n_layer\": 2", "\"n_layer\": 3"))
            .unwrap();
    });
    assert!(
        matches!(&err, ModelError::MissingTensor { name, .. } if name.contains("h.2.")),
        "{err}"
    );
}

#[test]
fn a_malformed_or_missing_config_is_a_clear_error() {
    let (_d, err) = corrupt_copy(|d| std::fs::write(d.join("config.json"), "{ not json").unwrap());
    assert!(
        matches!(err, ModelError::Config { .. }) && err.to_string().contains("config.json"),
        "{err}"
    );
    let (_d, err) = corrupt_copy(|d| std::fs::remove_file(d.join("config.json")).unwrap());
    assert!(
        matches!(err, ModelError::Io { .. }) && err.to_string().contains("config.json"),
        "{err}"
    );
}
