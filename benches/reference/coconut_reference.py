"""The Coconut algorithm as the official implementation runs it, in PyTorch and HF transformers.

`cargo xtask bench --with-reference` runs this beside its own measurements, in the same
invocation on the same machine: the ratios it prints compare like with like. The batches and
prompts come from the bench itself (a JSON file it writes), so both sides work on the same
tokens, shapes and batch sizes; the weights are random on both sides.

What is measured, the official way:
- a training step: HF `GPT2LMHeadModel` run pass by pass over `inputs_embeds`, each pass
  continuing from the previous one's `past_key_values`, each latent column's embedding
  replaced by the last hidden state of the column before it; logits at every position,
  cross-entropy with ignored labels, backward, `torch.optim.AdamW`;
- a plain step: the same tokens in one pass (the latent columns read as ordinary tokens);
- generation one question at a time: the latent passes over the prompt, then every new token
  recomputes the whole prefix without a cache;
- batched generation: left-padded prompts, the latent passes, then greedy decoding on HF's
  `past_key_values`;
- operator counts: the `aten::` events the torch profiler lists (nested ones included) for a
  training step's forward and backward at stage k and at stage 0 on the same samples, in f32
  or under bf16 autocast; their difference over k is what one thought pass costs.

Every run prints one JSON line. Usage (normally started by the bench):

    python3 coconut_reference.py --inputs bench-inputs.json --measurement train_step:tiny:8:6 \
        [--device cuda:0]
"""

import argparse
import json
import platform
import resource
import statistics
import time

import torch
import transformers
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel

SHAPES = {"tiny": (4, 256, 4), "gpt2": (12, 768, 12)}  # layers, width, heads


def build_model(shape, vocab_size):
    n_layer, n_embd, n_head = SHAPES[shape]
    config = GPT2Config(
        vocab_size=vocab_size, n_positions=1024, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1,
    )
    return GPT2LMHeadModel(config)


def pass_ranges(latent_columns, seq_len):
    """[0, first latent), one column per later latent, then the rest (the paper's n+1 passes)."""
    n = max((len(c) for c in latent_columns), default=0)
    if n == 0:
        return [(0, seq_len)]
    first = min(c[0] for c in latent_columns if c)
    ranges = [(0, first)] + [(first + i - 1, first + i) for i in range(1, n)]
    return ranges + [(first + n - 1, seq_len)]


def latent_passes(model, input_ids, attention_mask, position_ids, latent_columns):
    """The official forward: pass by pass on `past_key_values`, each latent column's embedding
    replaced by the last hidden state of the column before it. Returns every pass's logits,
    the cache and the embeddings with the thoughts written in."""
    embeds = model.transformer.wte(input_ids)
    cache = DynamicCache()
    logits = []
    passes = pass_ranges(latent_columns, input_ids.shape[1])
    for index, (start, end) in enumerate(passes):
        out = model(
            inputs_embeds=embeds[:, start:end],
            attention_mask=attention_mask[:, :end],
            position_ids=position_ids[:, start:end],
            past_key_values=cache,
            use_cache=True,
            output_hidden_states=True,
        )
        logits.append(out.logits)
        cache = out.past_key_values
        if index + 1 == len(passes):
            break
        # Latent `index` of every row that has one takes the hidden state before it.
        rows = [r for r, cols in enumerate(latent_columns) if len(cols) > index]
        cols = [latent_columns[r][index] for r in rows]
        hidden = out.hidden_states[-1]  # after ln_f, columns [start, end)
        embeds = embeds.clone()
        embeds[rows, cols] = hidden[rows, [c - 1 - start for c in cols]]
    return logits, cache, embeds


def batch_loss(model, batch, plain, device):
    ids = torch.tensor(batch["input_ids"], device=device)
    mask = torch.tensor(batch["attention_mask"], device=device)
    positions = torch.tensor(batch["position_ids"], device=device)
    labels = torch.tensor(batch["labels"], device=device)
    latents = [[] for _ in batch["latent_columns"]] if plain else batch["latent_columns"]
    logits = torch.cat(latent_passes(model, ids, mask, positions, latents)[0], dim=1)
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
    )


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_step(model, optimizer, batch, plain, device):
    synchronize(device)
    started = time.perf_counter()
    loss = batch_loss(model, batch, plain, device)
    synchronize(device)
    forward = time.perf_counter()
    loss.backward()
    synchronize(device)
    backward = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    done = time.perf_counter()
    return loss.item(), forward - started, backward - forward, done - backward, done - started


def count_ops(model, m, bf16, device):
    """The `aten::` events of a training step's forward and backward at stage k and at stage
    0 (the profiler's count, nested operators included), after one uncounted step."""
    from torch.profiler import ProfilerActivity, profile

    def step(batch):
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = batch_loss(model, batch, False, device)
        loss.backward()

    step(m["batch"])
    counts = []
    for batch in (m["batch0"], m["batch"]):
        torch.manual_seed(0)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(batch)
        counts.append(sum(1 for e in prof.events() if e.name.startswith("aten::")))
    return counts


def left_padded(prompts, latent_id, pad_id, device):
    """Prompts left-padded so that every row's first latent sits in one column."""
    firsts = [p.index(latent_id) if latent_id in p else len(p) for p in prompts]
    shift = [max(firsts) - f for f in firsts]
    width = max(s + len(p) for s, p in zip(shift, prompts))
    ids, mask, positions, latents = [], [], [], []
    for pad, p in zip(shift, prompts):
        # Rows with as many latents end in the same column: nothing is padded on the right.
        right = width - pad - len(p)
        ids.append([pad_id] * pad + p + [pad_id] * right)
        mask.append([0] * pad + [1] * len(p) + [0] * right)
        positions.append([0] * pad + list(range(len(p))) + [0] * right)
        latents.append([pad + i for i, t in enumerate(p) if t == latent_id])
    return (
        torch.tensor(ids, device=device),
        torch.tensor(mask, device=device),
        torch.tensor(positions, device=device),
        latents,
    )


def generate_one(model, prompt, latent_id, max_new, device):
    """One prompt the official way: latent passes, then the whole prefix for every token."""
    ids = torch.tensor([prompt], device=device)
    mask = torch.ones_like(ids)
    positions = torch.arange(len(prompt), device=device).unsqueeze(0)
    latents = [[i for i, t in enumerate(prompt) if t == latent_id]]
    logits, _, embeds = latent_passes(model, ids, mask, positions, latents)
    tokens = [int(logits[-1][0, -1].argmax())]
    for _ in range(max_new - 1):
        new = model.transformer.wte(torch.tensor([[tokens[-1]]], device=device))
        embeds = torch.cat([embeds, new], dim=1)
        logits = model(inputs_embeds=embeds).logits  # no cache: the whole prefix again
        tokens.append(int(logits[0, -1].argmax()))
    return tokens


def generate_batched(model, prompts, latent_id, pad_id, max_new, device):
    """Left-padded prompts, the latent passes, then greedy decoding on `past_key_values`."""
    ids, mask, positions, latents = left_padded(prompts, latent_id, pad_id, device)
    logits, cache, _ = latent_passes(model, ids, mask, positions, latents)
    # Positions continue after each row's last real token (left padding: the last column).
    next_position = positions[:, -1:] + 1
    token = logits[-1][:, -1].argmax(-1, keepdim=True)
    generated = [token]
    for _ in range(max_new - 1):
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)
        out = model(
            input_ids=token, attention_mask=mask, position_ids=next_position,
            past_key_values=cache, use_cache=True,
        )
        cache = out.past_key_values
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        next_position = next_position + 1
        generated.append(token)
    return torch.cat(generated, dim=1)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", required=True, help="the JSON file the bench wrote")
    parser.add_argument("--measurement", required=True, help="name:model:batch:stage")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    with open(args.inputs) as f:
        inputs = json.load(f)
    m = inputs["measurements"][args.measurement]
    name, shape, batch_size, stage = args.measurement.split(":")[:4]
    model = build_model(shape, inputs["vocab_size"]).to(device)
    line = {
        "name": name, "model": shape, "batch": int(batch_size), "stage": int(stage),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(), "threads": args.threads, "device": str(device),
    }
    if name.startswith("ops_per_latent_pass"):
        model.train()
        stage0, stage_k = count_ops(model, m, name.endswith("_bf16"), device)
        line.update({
            "ops_stage0": stage0, "ops_stage_k": stage_k,
            "ops_per_latent_pass": (stage_k - stage0) / int(stage),
        })
    elif name.startswith("generate"):
        model.eval()
        prompts = m["prompts"]
        started = time.perf_counter()
        with torch.no_grad():
            if name == "generate_batched":
                generate_batched(
                    model, prompts, inputs["latent_id"], inputs["pad_id"], m["max_new"], device
                )
            else:
                for prompt in prompts:
                    generate_one(model, prompt, inputs["latent_id"], m["max_new"], device)
        synchronize(device)
        total = time.perf_counter() - started
        line.update({
            "n_samples": len(prompts), "max_new": m["max_new"], "total_s": total,
            "samples_per_s": len(prompts) / total, "peak_rss_mb": peak_rss_mb(),
        })
    else:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
        plain = name == "plain_step"
        times, losses = [], []
        for step in range(m["warmup"] + m["steps"]):
            loss, fwd, bwd, opt, total = training_step(model, optimizer, m["batch"], plain, device)
            if step >= m["warmup"]:
                times.append(total)
                losses.append(loss)
        line.update({
            "seq_len": len(m["batch"]["input_ids"][0]), "steps": m["steps"],
            "warmup": m["warmup"], "median_s": statistics.median(times), "all_s": times,
            "final_loss": losses[-1], "peak_rss_mb": peak_rss_mb(),
        })
    print(json.dumps(line))


if __name__ == "__main__":
    main()
