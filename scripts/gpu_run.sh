#!/usr/bin/env bash
# A run of coconut-rs on a machine with an NVIDIA GPU and PyTorch 2.11 (CUDA 13) but no Rust
# and no network.
#
#   scripts/gpu_run.sh [OUT]      here, in the repository: builds the CUDA binary
#                                 (`cargo xtask setup --cuda`) and writes OUT (default
#                                 gpu-run/, under 64 MB) with everything the run needs
#   OUT/run.sh [MINUTES]          there: `check-device` on cuda:0; the bench's contract
#                                 lines beside the PyTorch reference's on the same GPU; then
#                                 MINUTES (default 2) of the paper's ProsQA config on a
#                                 GPT-2-shaped model trained from scratch, and its optimizer
#                                 steps per second
#
# The binary finds the GPU machine's own LibTorch through LD_LIBRARY_PATH, which run.sh
# points at the lib folder of `python3 -c 'import torch'`; the CUDA libraries of that torch
# install are found from there as PyTorch itself finds them. The reference needs transformers
# beside that torch: OUT/wheels holds it and its dependencies as binary wheels for the GPU
# machine's CPython (PYTHON_VERSION, default 3.12), which run.sh installs with
# `pip --no-index` into a virtual environment that sees the machine's torch.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="$(realpath -m "${1:-gpu-run}")"
python_version="${PYTHON_VERSION:-3.12}"
cd "$repo"

cargo xtask setup --cuda
binary=target/cuda/release/coconut
if [ -e "$out" ]; then
    echo "$out exists: remove it or name another folder" >&2
    exit 1
fi
mkdir -p "$out/data" "$out/wheels"
# Symbols are not needed to run it, and they are a third of its size.
strip -o "$out/coconut" "$binary"
# check-device's and the bench's inputs: the GPT-2 tokenizer and the real ProsQA validation
# questions; the reference implementation.
cp fixtures/tiny-gpt2/tokenizer.json fixtures/datasets/prosqa/prosqa_valid.json "$out/"
cp benches/reference/coconut_reference.py "$out/"
# transformers (the version the reference is measured with) and what it needs, not torch.
python3 -m pip download --quiet --dest "$out/wheels" --only-binary=:all: \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --implementation cp --python-version "$python_version" \
    transformers==5.24.0
# The paper's ProsQA difficulty, as many training questions as a few minutes can use.
"$binary" data --kind prosqa --preset paper --sizes 4000,300,500 --seed 0 --out "$out/data" >/dev/null

# The paper's ProsQA config with a model trained from scratch (no pretrained weights travel):
# GPT-2 124M's shape, a tokenizer trained on the data, the generated slice.
{
    echo "# The paper's ProsQA config (configs/prosqa-coconut.toml) with a GPT-2-shaped model"
    echo "# trained from scratch on a generated slice of the data, for a timed run on a GPU."
    sed -e '1,2d' \
        -e 's|^pretrained = .*|n_layer = 12\nn_embd = 768\nn_head = 12\nn_positions = 1024\nvocab_size = 1000|' \
        -e 's|^generate = .*||' \
        -e 's|"datasets/prosqa/|"data/prosqa/|' \
        -e 's|^name = .*|name = "prosqa-coconut-scratch"|' \
        configs/prosqa-coconut.toml
} > "$out/prosqa-coconut-scratch.toml"

cat > "$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# check-device on cuda:0; the bench beside the PyTorch reference on the same GPU; then
# MINUTES (default 2) of the paper's ProsQA schedule from scratch.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
minutes="${1:-2}"
torch_lib="$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')" || {
    echo "python3 cannot import torch: install PyTorch 2.11 with CUDA" >&2
    exit 1
}
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'

./coconut check-device --device cuda:0 --data prosqa_valid.json --tokenizer tokenizer.json \
    | tee check-device.txt

# The reference's Python: the machine's, with its torch, and transformers from the wheels.
python3 -m venv --system-site-packages reference-env \
    && reference-env/bin/python -m pip install --quiet --no-index --find-links wheels \
        transformers==5.24.0 \
    && ./coconut bench --device cuda:0 --with-reference --python reference-env/bin/python \
        --reference-script coconut_reference.py --data prosqa_valid.json \
        --tokenizer tokenizer.json --out bench-results.jsonl | tee bench.txt

rm -rf runs/prosqa-coconut-scratch
started=$(date +%s)
timeout --signal=TERM "$((minutes * 60))" ./coconut train-all-stages \
    --config prosqa-coconut-scratch.toml --set output_dir=runs --set train.log_every_steps=10
seconds=$(( $(date +%s) - started ))
python3 - "$seconds" <<'PY'
import json, sys
seconds = float(sys.argv[1])
lines = [json.loads(l) for l in open("runs/prosqa-coconut-scratch/metrics.jsonl")]
steps = max((l["global_step"] for l in lines if "global_step" in l), default=0)
tokens = [l["tokens_per_s"] for l in lines if l.get("kind") == "step"]
print(f"train_steps={steps} in {seconds:.0f} s (set-up and evaluations included)")
print(f"train_steps_per_s={steps / seconds:.3f}")
if tokens:
    print(f"train_tokens_per_s_last={tokens[-1]:.0f}")
PY
RUN
chmod +x "$out/run.sh"
du -sh "$out"
echo "copy $out to the GPU machine and run: $(basename "$out")/run.sh [MINUTES]"
