#!/usr/bin/env python3
"""Coconut evaluation done the reference way, with HF transformers, on one of our checkpoints.

    python scripts/reference_coconut_eval.py CHECKPOINT DATA.json [--stage K] [--limit N]
        [--c-thought C] [--max-latent-stage M] [--pad-latent-to-max] [--mode MODE]
        [--max-new-tokens T] [--recompute] [--compare PREDICTIONS.jsonl]

CHECKPOINT is a folder in the HF layout our Rust code saves (config.json, model.safetensors or
shards, tokenizer.json, and tokenizer_config.json / generation_config.json / train_state.json
when present); DATA is a Coconut JSON split (a list of {question, steps, answer}). Prints one
JSON line {"index", "generated"} per sample: the text greedy decoding writes after the
prompt, eos excluded, decoded with special tokens written out, exactly as the `generated`
field of our eval's predictions_<checkpoint>_<split>.jsonl (crates/eval/src/metrics.rs). With
--compare it then checks those texts against such a file and exits 1 on any difference.

What it does, sample by sample (batch 1, as the official code evaluates):

1. The prompt (crates/curriculum/src/curriculum.rs, eval_prompt): [BOS, when the tokenizer's
   post-processor adds one] + enc(question + "\\n") + the thought span of the mode:
   coconut / no-curriculum: <|start-latent|> <|latent|> x n <|end-latent|>; pause-as-thought:
   the same with <pause>; pause-token: <pause> x max_latent_stage*c_thought; cot, no-cot,
   no-thoughts: nothing. n = min(stage, max_latent_stage) * c_thought (no-curriculum uses the
   final stage), and without --pad-latent-to-max the stage is also capped by the sample's step
   count. enc() adds no special token.
2. The multi-pass forward (as the official coconut.py): pass 0 runs the prompt up to the first
   <|latent|>; each latent column's input embedding is then replaced by the last hidden state
   (after the final norm: outputs.hidden_states[-1]) of the column before it, and the model
   continues from the KV cache of the earlier passes, one pass per latent; the last pass runs
   to the end of the prompt.
3. Greedy decoding (argmax) from the cache, one token at a time, at most --max-new-tokens
   tokens (and never past the model's max positions), stopping at any eos id: those of
   generation_config.json (a list or one id), the tokenizer_config.json eos_token, and
   <|endoftext|> for a folder that has neither. With --recompute each step instead reruns the
   whole sequence of input embeddings without a cache, as the official generate() does.

Curriculum settings come from the checkpoint's train_state.json when it has one (the mode and
the stage of its last trained epoch, as `coconut eval` does); the flags override them.
Needs torch and transformers only.
"""
import argparse
import json
import pathlib
import sys

import torch
from transformers import AutoModelForCausalLM, DynamicCache, PreTrainedTokenizerFast

START_LATENT, END_LATENT, LATENT, PAUSE = ("<|start-latent|>", "<|end-latent|>", "<|latent|>",
                                           "<pause>")
MODES = ["coconut", "no-curriculum", "pause-as-thought", "cot", "no-cot", "no-thoughts",
         "pause-token"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=pathlib.Path)
    p.add_argument("data", type=pathlib.Path)
    p.add_argument("--mode", choices=MODES, help="default: the checkpoint's, else coconut")
    p.add_argument("--stage", type=int,
                   help="default: the stage of the checkpoint's last trained epoch, else the "
                        "final stage (max_latent_stage + 1)")
    p.add_argument("--c-thought", type=int, help="default: the checkpoint's, else 1")
    p.add_argument("--max-latent-stage", type=int, help="default: the checkpoint's, else 6")
    p.add_argument("--pad-latent-to-max", action="store_true", default=None,
                   help="default: the checkpoint's, else off")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--limit", type=int, default=0, help="only the first N samples (0: all)")
    p.add_argument("--recompute", action="store_true",
                   help="decode without a cache, recomputing the whole sequence every step")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--compare", type=pathlib.Path, metavar="PREDICTIONS",
                   help="our eval's predictions_*.jsonl: report and fail on any difference")
    return p.parse_args()


# ----------------------------------------------------------------------------- settings

def curriculum(args):
    """The mode, stage, c_thought, max_latent_stage and pad_latent_to_max to evaluate with."""
    state_path = args.checkpoint / "train_state.json"
    cfg, last_epoch = {}, None
    if state_path.exists():
        state = json.loads(state_path.read_text())
        cfg = state["config"]["curriculum"]
        last_epoch = max(state["epoch"] - 1, 0)
    mode = args.mode or cfg.get("mode", "coconut")
    c_thought = args.c_thought if args.c_thought is not None else cfg.get("c_thought", 1)
    max_stage = (args.max_latent_stage if args.max_latent_stage is not None
                 else cfg.get("max_latent_stage", 6))
    pad = (args.pad_latent_to_max if args.pad_latent_to_max is not None
           else cfg.get("pad_latent_to_max", False))
    stage = args.stage
    if stage is None:  # CurriculumConfig::stage_of_epoch of the last trained epoch
        if last_epoch is None or mode == "no-curriculum":
            stage = max_stage + 1
        elif mode in ("cot", "no-cot", "pause-token"):
            stage = 0
        else:
            stage = last_epoch // max(cfg.get("epochs_per_stage", 1), 1)
    return {"mode": mode, "stage": stage, "c_thought": c_thought, "max_latent_stage": max_stage,
            "pad_latent_to_max": pad}


def prompt_slots(cur, n_steps):
    """curriculum.rs prompt_slots: the number of thought (or pause) slots of a sample."""
    mode = cur["mode"]
    if mode in ("coconut", "no-curriculum", "pause-as-thought"):
        stage = cur["max_latent_stage"] + 1 if mode == "no-curriculum" else cur["stage"]
        stage = min(stage, cur["max_latent_stage"])
        if not cur["pad_latent_to_max"]:
            stage = min(stage, n_steps)
        return stage * cur["c_thought"]
    if mode == "pause-token":
        return cur["max_latent_stage"] * cur["c_thought"]
    return 0


class Tokens:
    """The checkpoint's tokenizer.json (read as-is, no truncation or padding) and its ids."""

    def __init__(self, folder):
        self.hf = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
        self.raw = self.hf.backend_tokenizer  # the `tokenizers` object our Rust code also uses
        self.raw.no_truncation()
        self.raw.no_padding()
        # BOS: whatever the post-processor puts in front of an encoding (Llama 3's template
        # adds <|begin_of_text|>; GPT-2's and Qwen2's add nothing).
        plain = self.raw.encode("a", add_special_tokens=False).ids
        full = self.raw.encode("a", add_special_tokens=True).ids
        start = next(i for i in range(len(full) - len(plain) + 1)
                     if full[i:i + len(plain)] == plain)
        self.prefix = full[:start]
        self.eos = self.eos_ids(folder)

    def id(self, token):
        i = self.raw.token_to_id(token)
        if i is None:
            raise SystemExit(f"the tokenizer has no {token}")
        return i

    def eos_ids(self, folder):
        ids = set()
        gen = folder / "generation_config.json"
        if gen.exists():
            e = json.loads(gen.read_text()).get("eos_token_id")
            ids.update(e if isinstance(e, list) else [] if e is None else [e])
        tc = folder / "tokenizer_config.json"
        if tc.exists():
            e = json.loads(tc.read_text()).get("eos_token")
            if isinstance(e, dict):  # {"content": ...} in older files
                e = e.get("content")
            if e is not None and self.raw.token_to_id(e) is not None:
                ids.add(self.raw.token_to_id(e))
        if not ids:  # our GPT-2 checkpoints: <|endoftext|> ends every answer
            ids.add(self.id("<|endoftext|>"))
        return ids

    def encode(self, text):
        return self.raw.encode(text, add_special_tokens=False).ids

    def decode(self, ids):
        return self.raw.decode(ids, skip_special_tokens=False)


def eval_prompt(tok, cur, sample):
    """curriculum.rs eval_prompt, with the tokenizer's BOS first when it has one."""
    q = tok.prefix + tok.encode(sample["question"] + "\n")
    n = prompt_slots(cur, len(sample["steps"]))
    mode = cur["mode"]
    if mode in ("coconut", "no-curriculum"):
        return q + [tok.id(START_LATENT)] + [tok.id(LATENT)] * n + [tok.id(END_LATENT)]
    if mode == "pause-as-thought":
        return q + [tok.id(START_LATENT)] + [tok.id(PAUSE)] * n + [tok.id(END_LATENT)]
    if mode == "pause-token":
        return q + [tok.id(PAUSE)] * n
    return q


# ----------------------------------------------------------------------------- model

def cache_kwarg(model):
    """transformers 5.24 names the cache argument `cache` (`past_key_values` before)."""
    import inspect
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def latent_forward(model, ids, latent_id, cache):
    """Coconut's multi-pass forward of one prompt (1, T). Fills `cache` with every prompt
    column and returns the logits of the last column and the final input embeddings (the
    thoughts spliced in)."""
    t = ids.shape[1]
    embeds = model.get_input_embeddings()(ids)
    latents = [] if latent_id is None else (ids[0] == latent_id).nonzero().flatten().tolist()
    bounds = [0] + latents + [t]
    hidden, kw = None, cache_kwarg(model)
    for start, end in zip(bounds[:-1], bounds[1:]):
        if start == end:
            continue  # a latent in column 0 (no question): nothing before it
        if start > 0 and start in latents:  # this column's input is the previous thought
            embeds = embeds.clone()
            embeds[:, start] = hidden[:, -1]
        out = model(inputs_embeds=embeds[:, start:end],
                    attention_mask=torch.ones(1, end, dtype=torch.long, device=ids.device),
                    position_ids=torch.arange(start, end, device=ids.device)[None],
                    use_cache=True, output_hidden_states=True, **{kw: cache})
        hidden = out.hidden_states[-1]
    return out.logits[:, -1], embeds


def generate(model, prompt, latent_id, eos, max_new_tokens, recompute, device):
    """Greedy tokens after `prompt`, eos included when it was produced, and whether it was."""
    ids = torch.tensor([prompt], device=device)
    cache = DynamicCache(config=model.config)
    logits, embeds = latent_forward(model, ids, latent_id, cache)
    limit = getattr(model.config, "max_position_embeddings", None) or model.config.n_positions
    steps = min(max_new_tokens, max(limit - len(prompt), 0))
    tokens, kw = [], cache_kwarg(model)
    emb = model.get_input_embeddings()
    for k in range(steps):
        nxt = int(logits[0].argmax())
        tokens.append(nxt)
        if nxt in eos:
            return tokens, True
        if k + 1 == steps:
            break
        if recompute:  # the official generate(): no cache, the whole sequence every step
            embeds = torch.cat([embeds, emb(torch.tensor([[nxt]], device=device))], 1)
            logits = model(inputs_embeds=embeds).logits[:, -1]
        else:
            pos = len(prompt) + k
            logits = model(input_ids=torch.tensor([[nxt]], device=device),
                           attention_mask=torch.ones(1, pos + 1, dtype=torch.long,
                                                     device=device),
                           position_ids=torch.tensor([[pos]], device=device),
                           use_cache=True, **{kw: cache}).logits[:, -1]
    return tokens, False


# ----------------------------------------------------------------------------- main

def compare(ours, path):
    theirs = {}
    for line in path.read_text().splitlines():
        if line.strip():
            p = json.loads(line)
            theirs[p["index"]] = p["generated"]
    same = sum(1 for i, g in ours.items() if theirs.get(i) == g)
    print(f"{same} of {len(ours)} generated texts identical to {path}", file=sys.stderr)
    shown = 0
    for i, g in ours.items():
        if theirs.get(i) != g and shown < 5:
            shown += 1
            print(f"  sample {i}:\n    reference: {g!r}\n    theirs:    {theirs.get(i)!r}",
                  file=sys.stderr)
    return same == len(ours)


def main():
    args = parse_args()
    cur = curriculum(args)
    tok = Tokens(args.checkpoint)
    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=dtype).to(args.device)
    model.eval()
    vocab = model.get_input_embeddings().weight.shape[0]
    if tok.raw.get_vocab_size(with_added_tokens=True) > vocab:
        raise SystemExit(f"the tokenizer has {tok.raw.get_vocab_size(with_added_tokens=True)} "
                         f"ids, the model's embedding only {vocab}")
    latent_id = tok.raw.token_to_id(LATENT)  # None in a folder that never had the markers
    samples = json.loads(args.data.read_text())
    if args.limit > 0:
        samples = samples[:args.limit]
    print(f"{args.checkpoint}: {cur}, bos {tok.prefix}, eos {sorted(tok.eos)}, "
          f"{len(samples)} samples", file=sys.stderr)
    ours = {}
    with torch.no_grad():
        for index, sample in enumerate(samples):
            prompt = eval_prompt(tok, cur, sample)
            tokens, stopped = generate(model, prompt, latent_id, tok.eos, args.max_new_tokens,
                                       args.recompute, args.device)
            if stopped:
                tokens = tokens[:-1]
            ours[index] = tok.decode(tokens)
            print(json.dumps({"index": index, "generated": ours[index]}), flush=True)
    if args.compare and not compare(ours, args.compare):
        sys.exit(1)


if __name__ == "__main__":
    main()
