#!/usr/bin/env python3
"""Make fixtures/official/: checkpoints written the way the official Coconut run.py writes
them, and the logits HF transformers computes from them, for the test of
scripts/convert_official_checkpoint.py (crates/cli/tests/official_checkpoint.rs).

Needs torch and transformers (the converter itself needs neither). Run from anywhere:

    python3 scripts/make_official_fixture.py

It reads the tiny HF GPT-2 at fixtures/tiny-gpt2 (2 layers, width 2, the real GPT-2
tokenizer) and writes

  fixtures/official/coconut_checkpoint_tiny.pt  a Coconut checkpoint: the three tokens added
      and the embedding resized as run.py does, their rows started from `<<` and then moved
      apart (as training would) so that the test tells them apart, wrapped so that the state
      dict has `base_causallm.` keys and Coconut's `embedding.weight` alias; f32.
  fixtures/official/cot_checkpoint_tiny.pt      a CoT checkpoint: no prefix, no resize,
      stored as a bf16 run stores it (model.to(torch.bfloat16)), with ln_f.weight in f16 and
      two tensors saved as views of other storages (transposed strides, a storage offset) so
      that the converter's dtype, stride and offset handling meets torch's real format.
  fixtures/official/expected.json               for each: input ids (including 50259), the
      last hidden state and the logits of a subset of vocabulary columns, computed by
      transformers in f32 from exactly the stored values, with the rows coconut-rs adds
      (the tokens a checkpoint lacks, from `<<`).
"""

import json
import os

import torch
from torch import nn
from transformers import AutoTokenizer, GPT2LMHeadModel

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TINY = os.path.join(ROOT, "fixtures", "tiny-gpt2")
OUT = os.path.join(ROOT, "fixtures", "official")
ADDED = ["<|start-latent|>", "<|end-latent|>", "<|latent|>"]  # run.py's order
PAUSE_ID = 50260  # coconut-rs's fourth added token
# Offsets that move the added rows apart, on the scale of this model's embedding (std 0.02).
MOVES = [[0.05, -0.03], [-0.04, 0.06], [0.07, 0.02]]


class Coconut(nn.Module):
    """Just the attributes of the official Coconut module that its state dict holds."""

    def __init__(self, base_causallm):
        super().__init__()
        self.base_causallm = base_causallm
        self.embedding = base_causallm.transformer.get_input_embeddings()


def tokenizer_like_run_py():
    tok = AutoTokenizer.from_pretrained(TINY)
    tok.pad_token = tok.eos_token
    for t in ADDED:
        tok.add_tokens(t)
    ids = tok.convert_tokens_to_ids(ADDED)
    assert ids == [50257, 50258, 50259], ids
    return tok


def expected_for(state, n_model_rows, ids, columns, init_id):
    """Logits and last hidden state of a GPT2LMHeadModel holding `state` (upcast to f32) and
    rows up to PAUSE_ID copied from `init_id`, as the converted folder loads in coconut-rs."""
    model = GPT2LMHeadModel.from_pretrained(TINY)
    model.resize_token_embeddings(n_model_rows, mean_resizing=False)
    own = {k: v.float() for k, v in state.items()}
    missing, unexpected = model.load_state_dict(own, strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
    model.resize_token_embeddings(PAUSE_ID + 1, mean_resizing=False)
    with torch.no_grad():
        wte = model.get_input_embeddings().weight
        for row in range(n_model_rows, PAUSE_ID + 1):
            wte[row] = wte[init_id]
    model.eval()
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True)
    logits = out.logits[0][:, columns]
    hidden = out.hidden_states[-1][0]
    return {
        "input_ids": [ids],
        "columns": columns,
        "logits": [[[float(f"{x:.9g}") for x in row] for row in logits.tolist()]],
        "hidden": [[[float(f"{x:.9g}") for x in row] for row in hidden.tolist()]],
    }


def main():
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    tok = tokenizer_like_run_py()
    init_id = tok.convert_tokens_to_ids("<<")
    assert init_id == 16791, init_id
    question = tok.encode("Alex is a wumpus.\n")
    ids = question + [50257, 50259, 50259, 50258] + tok.encode("### True") + [50260]
    columns = sorted(
        set(range(0, 50257, 211)) | {init_id, 50256, 50257, 50258, 50259, 50260} | set(ids)
    )
    expected = {}

    # Coconut: resized and initialised as run.py does, then its new rows moved apart.
    model = GPT2LMHeadModel.from_pretrained(TINY)
    model.resize_token_embeddings(len(tok))
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        for k, token_id in enumerate([50257, 50258, 50259]):
            emb[token_id] = emb[init_id] + torch.tensor(MOVES[k])
    assert model.lm_head.weight.data_ptr() == emb.data_ptr(), "GPT-2's head is tied"
    state = Coconut(model).state_dict()
    assert "base_causallm.lm_head.weight" in state and "embedding.weight" in state
    torch.save(state, os.path.join(OUT, "coconut_checkpoint_tiny.pt"))
    plain = {k[len("base_causallm.") :]: v for k, v in state.items() if k != "embedding.weight"}
    expected["coconut"] = expected_for(plain, len(tok), ids, columns, init_id)

    # CoT: no resize, a bf16 run's dtype, and a few tensors stored the unusual ways.
    model = GPT2LMHeadModel.from_pretrained(TINY).to(torch.bfloat16)
    state = dict(model.state_dict())
    state["transformer.ln_f.weight"] = state["transformer.ln_f.weight"].to(torch.float16)
    w = state["transformer.h.0.attn.c_attn.weight"]
    state["transformer.h.0.attn.c_attn.weight"] = w.t().contiguous().t()  # strides (1, rows)
    assert not state["transformer.h.0.attn.c_attn.weight"].is_contiguous()
    w = state["transformer.h.1.mlp.c_fc.weight"]
    pad = torch.full((5,), 7.0, dtype=w.dtype)
    state["transformer.h.1.mlp.c_fc.weight"] = torch.cat([pad, w.flatten()])[5:].view(w.shape)
    assert state["transformer.h.1.mlp.c_fc.weight"].storage_offset() == 5
    torch.save(state, os.path.join(OUT, "cot_checkpoint_tiny.pt"))
    expected["cot"] = expected_for(state, 50257, ids, columns, init_id)

    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, separators=(",", ":"))
        f.write("\n")
    for name in sorted(os.listdir(OUT)):
        path = os.path.join(OUT, name)
        if os.path.isfile(path):
            print(f"{name}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
