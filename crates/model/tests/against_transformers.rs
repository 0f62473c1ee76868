//! Every architecture against HF transformers (committed fixtures made by
//! `crates/model/tests/fixtures/make_gpt2_fixture.py` and `fixtures/make_llama_fixtures.py`),
//! the real tiny-gpt2 checkpoint, the invariants of the forward and checkpoint errors.

mod common;

use std::path::Path;

use coconut_model::testing::{assert_close, tiny_models};
use coconut_model::{
    causal_bias, load_pretrained, padding_bias, save_pretrained, KvCache, ModelError, Packing,
    PassInputs,
};
use common::{fixtures, gpt2, Fixture, HF, SAME};
use tch::{nn::VarStore, Device, Kind, Tensor};

#[test]
fn matches_transformers_on_a_plain_batch() {
    for f in fixtures() {
        let (_vs, model) = f.model();
        let r = &f.reference;
        let bias = causal_bias(&r["plain.attention_mask"], Kind::Float);
        let (logits, hidden) =
            model.forward(&r["plain.input_ids"], &r["plain.position_ids"], &bias, None, false);
        assert_close(&logits, &r["plain.logits"], HF, &format!("{}: logits", f.name));
        assert_close(&hidden, &r["plain.hidden"], HF, &format!("{}: hidden", f.name));
    }
}

#[test]
fn matches_transformers_on_left_padded_rows() {
    for f in fixtures() {
        let (_vs, model) = f.model();
        let r = &f.reference;
        let mask = &r["padded.attention_mask"];
        let bias = causal_bias(mask, Kind::Float);
        let (logits, hidden) =
            model.forward(&r["padded.input_ids"], &r["padded.position_ids"], &bias, None, false);
        // Only real positions are defined; padded ones differ by construction.
        let real = mask.unsqueeze(-1).to_kind(Kind::Float);
        let what = |x: &str| format!("{}: {x}", f.name);
        assert_close(&(&logits * &real), &(&r["padded.logits"] * &real), HF, &what("logits"));
        assert_close(&(&hidden * &real), &(&r["padded.hidden"] * &real), HF, &what("hidden"));
        assert!(logits.isfinite().all().int64_value(&[]) == 1, "padding must not produce NaN");
    }
}

#[test]
fn matches_transformers_when_decoding_with_the_cache() {
    // With gradients the cache keeps chunks; without, it writes into a growing buffer.
    for f in fixtures() {
        decode_against_transformers(&f);
        tch::no_grad(|| decode_against_transformers(&f));
    }
}

fn decode_against_transformers(f: &Fixture) {
    let (_vs, model) = f.model();
    let (ids, mask, pos) = f.decode_inputs();
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
    let expected = &f.reference["decode.last_logits"];
    assert_close(&Tensor::stack(&steps, 1), expected, HF, &format!("{}: decoded logits", f.name));
}

#[test]
fn forward_over_embeddings_equals_forward_over_ids() {
    for f in fixtures() {
        let (_vs, model) = f.model();
        let r = &f.reference;
        let (ids, pos) = (&r["padded.input_ids"], &r["padded.position_ids"]);
        let bias = causal_bias(&r["padded.attention_mask"], Kind::Float);
        let (_, from_ids) = model.forward(ids, pos, &bias, None, false);
        let from_embeds = model.forward_embeds(&model.embed(ids), pos, &bias, None, false);
        assert_close(&from_embeds, &from_ids, SAME, &format!("{}: hidden", f.name));
    }
}

#[test]
fn cached_decoding_equals_full_recomputation() {
    for f in fixtures() {
        let (_vs, model) = f.model();
        let (ids, mask, pos) = f.decode_inputs();
        let (full, _) = model.forward(ids, pos, &causal_bias(mask, Kind::Float), None, false);
        // The same sequence in three chunks of different sizes through one cache.
        let mut cache = KvCache::new();
        let mut chunks = Vec::new();
        for (start, len) in [(0, 3), (3, 1), (4, 4)] {
            let bias =
                causal_bias(&mask.narrow(1, 0, start + len), Kind::Float).narrow(2, start, len);
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
        let chunked = Tensor::cat(&chunks, 1) * &real;
        assert_close(&chunked, &(full * &real), SAME, &format!("{}: chunked logits", f.name));
        cache.truncate(2);
        assert_eq!(cache.len(), 2);
    }
}

#[test]
fn reading_only_the_last_columns_changes_neither_them_nor_the_cache() {
    for f in fixtures() {
        let (_vs, model) = f.model();
        let (ids, mask, pos) = f.decode_inputs();
        let bias = causal_bias(mask, Kind::Float);
        let t = ids.size()[1];
        let full = model.forward_embeds(&model.embed(ids), pos, &bias, None, false);
        for from in [1, t / 2, t - 1] {
            let case = format!("{}: from {from}", f.name);
            let mut cache = KvCache::new();
            let embeds = model.embed(ids);
            let pass = PassInputs::new(pos, &bias, false).outputs_from(from);
            let part = model.forward_pass(&embeds, &pass, Some(&mut cache));
            assert_eq!(part.size(), [ids.size()[0], t - from, full.size()[2]]);
            assert_close(&part, &full.narrow(1, from, t - from), SAME, &case);
            // One more decoded column sees the same keys and values either way.
            let next = ids.narrow(1, 0, 1);
            let next_pos = pos.narrow(1, -1, 1) + 1;
            let next_mask = Tensor::cat(&[mask, &mask.narrow(1, 0, 1).ones_like()], 1);
            let step_bias = padding_bias(&next_mask, Kind::Float);
            let mut reference_cache = KvCache::new();
            let _ = model.forward_embeds(&embeds, pos, &bias, Some(&mut reference_cache), false);
            let next_embeds = model.embed(&next);
            let a =
                model.forward_embeds(&next_embeds, &next_pos, &step_bias, Some(&mut cache), false);
            let b = model.forward_embeds(
                &next_embeds,
                &next_pos,
                &step_bias,
                Some(&mut reference_cache),
                false,
            );
            assert_close(&a, &b, SAME, &format!("{case}: decoding after"));
        }
    }
}

#[test]
fn reading_only_the_last_columns_gives_the_same_gradients() {
    for f in fixtures() {
        let (vs, model) = f.model();
        let (ids, mask, pos) = f.decode_inputs();
        let bias = causal_bias(mask, Kind::Float);
        let t = ids.size()[1];
        let grads = |hidden: Tensor| {
            for (_, mut p) in vs.variables() {
                p.zero_grad();
            }
            let weights = hidden.ones_like().cumsum(2, Kind::Float); // a loss that weighs every unit
            (hidden * weights).sum(Kind::Float).backward();
            let mut named: Vec<_> = vs.variables().into_iter().collect();
            named.sort_by(|a, b| a.0.cmp(&b.0));
            // An untied head takes no part in the hidden states: no gradient.
            let grad =
                |p: &Tensor| if p.grad().defined() { p.grad().copy() } else { p.zeros_like() };
            named.into_iter().map(|(name, p)| (name, grad(&p))).collect::<Vec<_>>()
        };
        let embeds = || model.embed(ids);
        let full =
            grads(model.forward_embeds(&embeds(), pos, &bias, None, false).narrow(1, t - 2, 2));
        let pass = PassInputs::new(pos, &bias, false).outputs_from(t - 2);
        let part = grads(model.forward_pass(&embeds(), &pass, None));
        for ((name, a), (_, b)) in full.iter().zip(&part) {
            assert_close(b, a, SAME, &format!("{}: gradient of {name}", f.name));
        }
        assert!(full.iter().any(|(_, g)| g.abs().sum(Kind::Float).double_value(&[]) > 0.0));
    }
}

/// A pass over the real tokens alone (left-padded rows): the same hidden states at every
/// real token (zero at padding), the same decoding from its cache afterwards, the same
/// gradients of a loss over real tokens, whichever columns are read.
#[test]
fn packing_the_real_tokens_changes_no_output_cache_or_gradient() {
    for f in fixtures() {
        let (vs, model) = f.model();
        let (ids, mask, pos) = f.decode_inputs();
        let bias = causal_bias(mask, Kind::Float);
        let (b, t) = ids.size2().unwrap();
        let real: Vec<bool> =
            Vec::<i64>::try_from(mask.view([-1])).unwrap().iter().map(|&m| m != 0).collect();
        assert!(real.iter().any(|r| !r), "{}: the rows are padded", f.name);
        let params: Vec<Tensor> = vs.trainable_variables();
        for from in [0, 1, t - 2] {
            let case = format!("{}: from {from}", f.name);
            let real_read = mask.narrow(1, from, t - from).unsqueeze(-1).to_kind(Kind::Float);
            let run = |packing: Option<&Packing>| {
                let mut cache = KvCache::new();
                let pass = PassInputs::new(pos, &bias, false).outputs_from(from).packed(packing);
                let hidden = model.forward_pass(&model.embed(ids), &pass, Some(&mut cache));
                let weights = hidden.ones_like().cumsum(2, Kind::Float) * &real_read;
                let loss = (&hidden * weights).sum(Kind::Float);
                let grads = Tensor::run_backward(&[&loss], &params, false, false);
                (hidden, cache, grads)
            };
            let packing = Packing::new(&real, b as usize, t as usize, from as usize, Device::Cpu);
            let (padded, padded_cache, padded_grads) = run(None);
            let (packed, packed_cache, packed_grads) = run(Some(&packing));
            assert_close(&packed, &(padded * &real_read), SAME, &format!("{case}: hidden"));
            // One more decoded column sees the same keys and values either way.
            let next_pos = pos.narrow(1, -1, 1) + 1;
            let next_mask = Tensor::cat(&[mask, &mask.narrow(1, 0, 1).ones_like()], 1);
            let step_bias = padding_bias(&next_mask, Kind::Float);
            let next_embeds = model.embed(&ids.narrow(1, 0, 1));
            let decoded = |mut cache: KvCache| {
                model.forward_embeds(&next_embeds, &next_pos, &step_bias, Some(&mut cache), false)
            };
            let (a, p) = (decoded(padded_cache), decoded(packed_cache));
            assert_close(&p, &a, SAME, &format!("{case}: decoding after"));
            for (i, (a, p)) in padded_grads.iter().zip(&packed_grads).enumerate() {
                if a.defined() || p.defined() {
                    assert_close(p, a, SAME, &format!("{case}: gradient {i}"));
                }
            }
        }
    }
}

#[test]
fn save_then_load_gives_identical_tensors() {
    for f in fixtures() {
        let (vs, model) = f.model();
        let dir = tempfile::tempdir().unwrap();
        save_pretrained(&vs, model.as_ref(), dir.path()).unwrap();
        let vs2 = VarStore::new(Device::Cpu);
        let model2 = load_pretrained(&vs2, dir.path()).unwrap();
        assert_eq!(model.hf_config(), model2.hf_config(), "{}", f.name);
        assert_eq!(model.shape(), model2.shape(), "{}", f.name);
        let (a, b) = (vs.variables(), vs2.variables());
        assert_eq!(a.len(), b.len());
        for (name, t) in &a {
            assert!(t.equal(&b[name]), "{}: {name} changed in a save/load round trip", f.name);
        }
    }
}

#[test]
fn loads_the_real_tiny_gpt2_checkpoint() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-gpt2");
    let vs = VarStore::new(Device::Cpu);
    let model = load_pretrained(&vs, &dir).unwrap();
    assert_eq!(model.shape().vocab_size, 50257);
    assert_eq!(vs.variables().len(), 2 + 2 * 12 + 2);
    let ids = Tensor::from_slice(&[15496i64, 995]).unsqueeze(0);
    let pos = Tensor::from_slice(&[0i64, 1]).unsqueeze(0);
    let (logits, _) =
        model.forward(&ids, &pos, &causal_bias(&ids.ones_like(), Kind::Float), None, false);
    assert_eq!(logits.size(), [1, 2, 50257]);
    assert!(logits.isfinite().all().int64_value(&[]) == 1);
}

#[test]
fn resizing_the_vocabulary_copies_the_init_token_into_embedding_and_head() {
    for (arch, vs, mut model) in tiny_models(50, 1, 0.0, 3) {
        model.resize_token_embeddings(53, 7);
        assert_eq!(model.shape().vocab_size, 53);
        assert_eq!(model.hf_config()["vocab_size"], 53, "{arch}: the saved config follows");
        let ids = Tensor::from_slice(&[7i64, 50, 51, 52]).unsqueeze(0);
        let e = model.embed(&ids).squeeze_dim(0); // (4, C)
        let logits = model.lm_head(&Tensor::randn([3, 16], (Kind::Float, Device::Cpu))); // (3, V)
        assert_eq!(logits.size(), [3, 53], "{arch}: the head grew");
        for row in 1..4 {
            assert!(e.get(row).equal(&e.get(0)), "{arch}: embedding row {row}");
            // Tied or untied, the head's new rows score like the init token's.
            assert!(logits.select(1, 49 + row).equal(&logits.select(1, 7)), "{arch}: head row");
        }
        // The VarStore holds the grown matrices.
        for (name, v) in vs.variables() {
            if name.ends_with("wte.weight")
                || name.contains("embed_tokens")
                || name == "lm_head.weight"
            {
                assert_eq!(v.size()[0], 53, "{arch}: {name}");
            }
        }
    }
}

/// Copies the fixture to a temporary folder for a corruption test.
fn corrupt_copy(edit: impl FnOnce(&Path)) -> (tempfile::TempDir, ModelError) {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(gpt2().dir.join(f), dir.path().join(f)).unwrap();
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
