#!/usr/bin/env python3
"""Convert a checkpoint of the official Coconut code into an HF GPT-2 folder coconut-rs loads.

The official run.py saves `torch.save(model.state_dict(), save_dir/checkpoint_N)`: a torch
zip archive of a state dict whose keys carry a `base_causallm.` prefix (plus Coconut's
`embedding.weight`, an alias of the token embedding) for Coconut models and none for CoT
models. This script reads that archive with the standard library only (no torch needed) and
writes OUT with

  config.json        the base folder's, with vocab_size set to the rows written
  model.safetensors  the GPT-2 weights (`transformer.*`), in the checkpoint's dtype
  tokenizer.json     the base folder's

Usage: python3 scripts/convert_official_checkpoint.py CKPT --base BASE_HF_FOLDER --out OUT_DIR

BASE_HF_FOLDER is the HF folder of the run's `model_id` (for GPT-2: config.json and
tokenizer.json). The official code adds <|start-latent|>, <|end-latent|> and <|latent|> to
GPT-2's 50,257 tokens (ids 50257..50259); coconut-rs adds the same three in the same order and
<pause> (50260). A Coconut checkpoint's 50,260 rows are therefore completed with a row for
<pause> copied from the embedding of `<<` (--init-token), exactly as coconut-rs initialises
added tokens; a CoT checkpoint's 50,257 rows are written as they are, and coconut-rs adds the
four rows when it loads the folder.

Dropped: `lm_head.weight` when it equals the token embedding (GPT-2 ties them), Coconut's
`embedding.weight` (the same tensor), and the attention-mask buffers `attn.bias` and
`attn.masked_bias` of older transformers versions. Anything else the script does not
understand (another key, an untied head, a dtype other than f32/f16/bf16, a pickled object
other than tensors and dicts) is refused with a message naming the file and the key.
"""

import argparse
import collections
import json
import os
import pickle
import re
import shutil
import struct
import sys
import zipfile

PROG = "convert_official_checkpoint"

# Storage classes of the torch pickle protocol: element size and safetensors dtype.
STORAGE_DTYPES = {
    "FloatStorage": (4, "F32"),
    "HalfStorage": (2, "F16"),
    "BFloat16Storage": (2, "BF16"),
}

COCONUT_PREFIX = "base_causallm."
ADDED_TOKENS = ["<|start-latent|>", "<|end-latent|>", "<|latent|>", "<pause>"]
# The tokens the official run.py adds, in its order (a prefix of ADDED_TOKENS).
OFFICIAL_ADDED = 3

LAYER_PARAMS = [
    "ln_1.weight",
    "ln_1.bias",
    "attn.c_attn.weight",
    "attn.c_attn.bias",
    "attn.c_proj.weight",
    "attn.c_proj.bias",
    "ln_2.weight",
    "ln_2.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
]
LAYER_BUFFERS = ["attn.bias", "attn.masked_bias"]


class Refused(Exception):
    """Something this script does not understand; the message names the file and the key."""


class StorageType:
    """A torch storage class named in the pickle (`torch.FloatStorage`, ...)."""

    def __init__(self, name):
        self.name = name


class Storage:
    """One storage of the archive: `data/<key>`, read when a kept tensor needs it."""

    def __init__(self, archive, key, storage_type, numel):
        self.archive = archive
        self.key = key
        self.type = storage_type
        self.numel = numel
        self._bytes = None

    def data(self):
        if self._bytes is None:
            self._bytes = self.archive.read_storage(self.key)
        return self._bytes


class TensorRef:
    """A tensor of the state dict: a view (offset, size, stride) of a storage."""

    def __init__(self, storage, offset, size, stride):
        self.storage = storage
        self.offset = offset
        self.size = tuple(size)
        self.stride = tuple(stride)

    def numel(self):
        n = 1
        for d in self.size:
            n *= d
        return n


class Archive:
    """A torch zip checkpoint: `<prefix>/data.pkl` and `<prefix>/data/<key>` storages."""

    def __init__(self, path):
        self.path = path
        if not zipfile.is_zipfile(path):
            raise Refused(
                f"{path}: not a torch zip checkpoint (torch.save writes zip archives since "
                "PyTorch 1.6; the legacy format is not read here)"
            )
        self.zip = zipfile.ZipFile(path)
        pickles = [n for n in self.zip.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise Refused(f"{path}: expected one data.pkl in the archive, found {len(pickles)}")
        self.prefix = pickles[0][: -len("data.pkl")]
        byteorder = self.prefix + "byteorder"
        if byteorder in self.zip.namelist():
            order = self.zip.read(byteorder).decode().strip()
            if order != "little":
                raise Refused(f"{path}: byteorder {order!r}; only little-endian files are read")
        self.storages = {}

    def read_storage(self, key):
        name = f"{self.prefix}data/{key}"
        try:
            return self.zip.read(name)
        except KeyError:
            raise Refused(f"{self.path}: storage {name} is missing from the archive") from None

    def load(self):
        archive = self

        class RestrictedUnpickler(pickle.Unpickler):
            def find_class(self, module, name):
                if module == "torch._utils" and name == "_rebuild_tensor_v2":
                    return rebuild_tensor_v2
                if module == "torch._utils" and name == "_rebuild_parameter":
                    return rebuild_parameter
                if module == "torch" and name.endswith("Storage"):
                    return StorageType(name)
                if module == "collections" and name == "OrderedDict":
                    return collections.OrderedDict
                raise Refused(
                    f"{archive.path}: the pickle holds a {module}.{name}; this script reads "
                    "state dicts of tensors only"
                )

            def persistent_load(self, pid):
                if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
                    raise Refused(f"{archive.path}: unknown persistent id {pid!r} in the pickle")
                _, storage_type, key, _location, numel = pid
                if not isinstance(storage_type, StorageType):
                    raise Refused(f"{archive.path}: storage {key} has no storage type")
                if key not in archive.storages:
                    archive.storages[key] = Storage(archive, key, storage_type, numel)
                return archive.storages[key]

        with self.zip.open(self.prefix + "data.pkl") as f:
            return RestrictedUnpickler(f).load()


def rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, *rest):
    return TensorRef(storage, storage_offset, size, stride)


def rebuild_parameter(data, requires_grad, backward_hooks, *rest):
    return data


def contiguous_bytes(path, key, t):
    """The bytes of tensor `t` in row-major order, whatever its offset and strides."""
    dtype = STORAGE_DTYPES.get(t.storage.type.name)
    if dtype is None:
        raise Refused(
            f"{path}: tensor {key} is a {t.storage.type.name}; only FloatStorage, HalfStorage "
            "and BFloat16Storage (f32, f16, bf16) are converted"
        )
    es = dtype[0]
    data = t.storage.data()
    if len(data) != t.storage.numel * es:
        raise Refused(
            f"{path}: storage {t.storage.key} of tensor {key} holds {len(data)} bytes, not "
            f"{t.storage.numel} elements of {es} bytes"
        )
    n = t.numel()
    if n == 0:
        return b""
    if any(d < 0 for d in t.size) or any(s < 0 for s in t.stride) or t.offset < 0:
        raise Refused(f"{path}: tensor {key} has a negative size, stride or offset")
    last = t.offset + sum((d - 1) * s for d, s in zip(t.size, t.stride))
    if last >= t.storage.numel:
        raise Refused(
            f"{path}: tensor {key} (offset {t.offset}, size {t.size}, stride {t.stride}) reaches "
            f"past its storage of {t.storage.numel} elements"
        )
    # Row-major strides, ignoring dimensions of size 1.
    expected, contiguous = 1, True
    for d, s in reversed(list(zip(t.size, t.stride))):
        if d != 1 and s != expected:
            contiguous = False
        expected *= d
    if contiguous:
        return data[t.offset * es : (t.offset + n) * es]
    out = bytearray()
    view = memoryview(data)

    def copy(dim, base):
        if dim == len(t.size) - 1:
            d, s = t.size[dim], t.stride[dim]
            if s == 1:
                out.extend(view[base * es : (base + d) * es])
            else:
                for i in range(d):
                    j = (base + i * s) * es
                    out.extend(view[j : j + es])
            return
        for i in range(t.size[dim]):
            copy(dim + 1, base + i * t.stride[dim])

    copy(0, t.offset)
    return bytes(out)


def gpt2_keys(n_layer):
    keys = ["transformer.wte.weight", "transformer.wpe.weight"]
    for i in range(n_layer):
        keys += [f"transformer.h.{i}.{p}" for p in LAYER_PARAMS]
    return keys + ["transformer.ln_f.weight", "transformer.ln_f.bias"]


def base_vocab(tokenizer, tok_path):
    """(size of the base tokenizer's id space, id of every token by content)."""
    model = tokenizer.get("model") or {}
    vocab = dict(model.get("vocab") or {})
    if not vocab:
        raise Refused(f"{tok_path}: no model.vocab; expected a GPT-2 BPE tokenizer.json")
    for added in tokenizer.get("added_tokens") or []:
        vocab[added["content"]] = added["id"]
    return max(vocab.values()) + 1, vocab


def convert(ckpt, base, out, init_token="<<"):
    """Converts; returns the lines of the summary."""
    archive = Archive(ckpt)
    state = archive.load()
    if not isinstance(state, dict):
        raise Refused(f"{ckpt}: the pickle holds a {type(state).__name__}, not a state dict")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, TensorRef):
            raise Refused(
                f"{ckpt}: key {key!r} holds a {type(value).__name__}, not a tensor (a state dict "
                "saved by run.py holds tensors only)"
            )

    config_path = os.path.join(base, "config.json")
    tok_path = os.path.join(base, "tokenizer.json")
    for p in (config_path, tok_path):
        if not os.path.isfile(p):
            raise Refused(f"{p}: missing; --base must be the HF folder of the run's model_id")
    with open(config_path) as f:
        config = json.load(f)
    with open(tok_path) as f:
        tokenizer = json.load(f)
    if config.get("model_type") != "gpt2":
        raise Refused(f"{config_path}: model_type {config.get('model_type')!r}, not gpt2")
    n_layer, n_embd, n_positions = config["n_layer"], config["n_embd"], config["n_positions"]

    summary = []
    coconut = any(k.startswith(COCONUT_PREFIX) for k in state)
    tensors = {}
    aliases = {}  # dropped keys that must equal the token embedding
    for key, t in state.items():
        name = key
        if coconut:
            if key == "embedding.weight":
                aliases[key] = t
                continue
            if not key.startswith(COCONUT_PREFIX):
                raise Refused(
                    f"{ckpt}: key {key} in a Coconut checkpoint (its other keys start with "
                    f"{COCONUT_PREFIX}); not understood"
                )
            name = key[len(COCONUT_PREFIX) :]
        if name == "lm_head.weight":
            aliases[key] = t
            continue
        if re.fullmatch(r"transformer\.h\.\d+\.(attn\.bias|attn\.masked_bias)", name):
            continue
        tensors[name] = (key, t)
    summary.append(
        f"{'Coconut' if coconut else 'CoT'} checkpoint ({'with' if coconut else 'without'} the "
        f"{COCONUT_PREFIX} prefix), {len(state)} keys"
    )

    expected = gpt2_keys(n_layer)
    unknown = [tensors[n][0] for n in tensors if n not in expected]
    if unknown:
        raise Refused(
            f"{ckpt}: key {unknown[0]} is not a parameter of a {n_layer}-layer GPT-2 (the base "
            f"config's n_layer){f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''}"
        )
    missing = [n for n in expected if n not in tensors]
    if missing:
        prefix = COCONUT_PREFIX if coconut else ""
        raise Refused(
            f"{ckpt}: key {prefix}{missing[0]} is missing (the base config says n_layer = "
            f"{n_layer}){f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}"
        )

    wte_key, wte = tensors["transformer.wte.weight"]
    wpe_key, wpe = tensors["transformer.wpe.weight"]
    if len(wte.size) != 2 or wte.size[1] != n_embd:
        raise Refused(f"{ckpt}: key {wte_key} has shape {list(wte.size)}, not [rows, {n_embd}]")
    if list(wpe.size) != [n_positions, n_embd]:
        raise Refused(
            f"{ckpt}: key {wpe_key} has shape {list(wpe.size)}, not [{n_positions}, {n_embd}] "
            f"as {config_path} says"
        )
    data = {name: contiguous_bytes(ckpt, key, t) for name, (key, t) in tensors.items()}
    wte_bytes = data["transformer.wte.weight"]
    for key, t in aliases.items():
        same = (
            t.size == wte.size
            and t.storage.type.name == wte.storage.type.name
            and contiguous_bytes(ckpt, key, t) == wte_bytes
        )
        if not same:
            what = "an untied LM head" if key.endswith("lm_head.weight") else "not the embedding"
            raise Refused(
                f"{ckpt}: key {key} differs from {wte_key} ({what}); coconut-rs's GPT-2 ties the "
                "LM head to the token embedding"
            )
        summary.append(f"dropped {key}: equal to {wte_key} (tied)")

    # The vocabulary: the base tokenizer's ids, then the tokens coconut-rs adds.
    v0, vocab = base_vocab(tokenizer, tok_path)
    present = [t for t in ADDED_TOKENS if t in vocab]
    if present:
        raise Refused(
            f"{tok_path}: already holds {', '.join(present)}; --base must be the plain HF folder "
            "of the run's model_id"
        )
    rows = wte.size[0]
    full = v0 + len(ADDED_TOKENS)
    es = STORAGE_DTYPES[wte.storage.type.name][0]
    if rows == v0:
        summary.append(
            f"{rows} token rows, as the base tokenizer: coconut-rs adds {', '.join(ADDED_TOKENS)} "
            f"({v0}..{full - 1}) when it loads the folder, their rows copied from {init_token!r}"
        )
    elif v0 < rows < full:
        init = vocab.get(init_token)
        if init is None or init >= v0:
            raise Refused(f"{tok_path}: {init_token!r} is not one token of the base vocabulary")
        extra = ADDED_TOKENS[rows - v0 :]
        row = wte_bytes[init * n_embd * es : (init + 1) * n_embd * es]
        data["transformer.wte.weight"] = wte_bytes + row * len(extra)
        summary.append(
            f"{rows} token rows ({v0} + {', '.join(ADDED_TOKENS[: rows - v0])} as the official "
            f"run.py adds them); added rows for {', '.join(extra)} ({rows}..{full - 1}) copied "
            f"from {init_token!r} (id {init}), as coconut-rs initialises added tokens"
        )
        rows = full
    elif rows == full:
        summary.append(f"{rows} token rows: the base vocabulary and {', '.join(ADDED_TOKENS)}")
    else:
        raise Refused(
            f"{ckpt}: key {wte_key} has {rows} rows; the base tokenizer has {v0} tokens, so "
            f"expected {v0} (a CoT checkpoint), {v0 + OFFICIAL_ADDED} (a Coconut one) or up to "
            f"{full}"
        )

    os.makedirs(out, exist_ok=True)
    shapes = {}
    for name, (key, t) in tensors.items():
        shapes[name] = list(t.size)
    shapes["transformer.wte.weight"] = [rows, n_embd]
    write_safetensors(
        os.path.join(out, "model.safetensors"),
        [
            (name, STORAGE_DTYPES[tensors[name][1].storage.type.name][1], shapes[name], data[name])
            for name in sorted(tensors)
        ],
    )
    config = dict(config)
    config["vocab_size"] = rows
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    shutil.copyfile(tok_path, os.path.join(out, "tokenizer.json"))
    dtypes = sorted({STORAGE_DTYPES[t.storage.type.name][1] for _, t in tensors.values()})
    summary.append(
        f"wrote {out}: config.json (vocab_size {rows}), model.safetensors ({len(tensors)} "
        f"tensors, {'/'.join(dtypes)}), tokenizer.json from {base}"
    )
    return summary


def write_safetensors(path, tensors):
    """Writes [(name, dtype, shape, bytes)] in the safetensors layout: an 8-byte
    little-endian header length, the JSON header (padded with spaces to 8 bytes), the data."""
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, _, _, data in tensors:
            f.write(data)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="convert_official_checkpoint.py",
        description="Convert an official Coconut checkpoint (torch.save of a state dict) into "
        "an HF GPT-2 folder (config.json, model.safetensors, tokenizer.json) for coconut-rs.",
    )
    parser.add_argument("checkpoint", help="the official checkpoint file (checkpoint_N)")
    parser.add_argument("--base", required=True, help="HF folder of the run's model_id")
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument(
        "--init-token",
        default="<<",
        help="token whose embedding fills rows the checkpoint lacks (default: <<)",
    )
    args = parser.parse_args(argv)
    try:
        for line in convert(args.checkpoint, args.base, args.out, args.init_token):
            print(f"{PROG}: {line}", file=sys.stderr)
    except Refused as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError) as e:
        print(f"{PROG}: error: {args.checkpoint}: unreadable pickle or archive: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
