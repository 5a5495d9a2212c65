#!/usr/bin/env bash
# make bench: litestage against Hugging Face transformers, measured in the
# same run on the same weights with the same thread count. See bench/README.md.
#
# Environment overrides (defaults in brackets):
#   BENCH_THREADS [nproc]   threads for both peers and the bandwidth probe
#   BENCH_REPS [3]          timed repetitions per figure (medians reported)
#   BENCH_PRESETS [smollm2-135m,qwen2.5-0.5b]   BENCH_DTYPES [f32,bf16]
#   BENCH_BIN_DIR [build/bin]                   BENCH_RESULTS_DIR [bench/results]
#   BENCH_PYTHON            a python with torch+transformers (skips the venv)
#
# Python packages (pinned; installed into .venv-bench when no suitable
# environment exists): torch==2.15.0 transformers==5.24.0 safetensors==0.8.0
# numpy==2.4.6
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

threads="${BENCH_THREADS:-$(nproc)}"
reps="${BENCH_REPS:-3}"
presets="${BENCH_PRESETS:-smollm2-135m,qwen2.5-0.5b}"
dtypes="${BENCH_DTYPES:-f32,bf16}"
bin_dir="${BENCH_BIN_DIR:-$root/build/bin}"
results_dir="${BENCH_RESULTS_DIR:-$root/bench/results}"
models_dir="$root/build/bench-models"
work="$root/build/bench-run"
mkdir -p "$work"

has_peer_packages() {
  [ -x "$1" ] && "$1" -c 'import torch, transformers, safetensors, tokenizers' 2>/dev/null
}

# The transformers peer's environment: an explicit BENCH_PYTHON, our own
# .venv-bench, the golden-test venv when it already has torch (saves a large
# download), else a fresh .venv-bench.
if [ -n "${BENCH_PYTHON:-}" ]; then
  python="$BENCH_PYTHON"
elif has_peer_packages "$root/.venv-bench/bin/python"; then
  python="$root/.venv-bench/bin/python"
elif has_peer_packages "$root/.venv-golden/bin/python"; then
  python="$root/.venv-golden/bin/python"
else
  echo "== creating .venv-bench (torch, transformers; a large download, once) =="
  python3 -m venv "$root/.venv-bench"
  "$root/.venv-bench/bin/pip" install --quiet --upgrade pip
  "$root/.venv-bench/bin/pip" install --quiet torch==2.15.0 transformers==5.24.0 \
    safetensors==0.8.0 numpy==2.4.6
  python="$root/.venv-bench/bin/python"
fi
if ! has_peer_packages "$python"; then
  echo "bench/run.sh: $python lacks torch/transformers/safetensors/tokenizers" >&2
  exit 1
fi
if [ ! -x "$bin_dir/engine_bench" ]; then
  echo "bench/run.sh: $bin_dir/engine_bench is missing; run 'make build' first" >&2
  exit 1
fi

common=(--presets "$presets" --dtypes "$dtypes" --threads "$threads" --reps "$reps"
        --prefill-tokens 128 --decode-prompt-tokens 32 --new-tokens 32 --batches 1,8)

echo "== bench models (real shapes, random weights; reused when present) =="
"$python" bench/hf_peer.py prepare --models-dir "$models_dir" "${common[@]}"

kernels_out="$work/kernels_bench.txt"
rm -f "$kernels_out"
if [ -x "$bin_dir/kernels_bench" ]; then
  echo "== kernels_bench (short) =="
  # Google Benchmark 1.7 takes a plain number of seconds.
  if ! "$bin_dir/kernels_bench" --benchmark_min_time=0.05 2>&1 | tee "$kernels_out"; then
    echo "(kernels_bench failed; see above)" | tee -a "$kernels_out"
  fi
fi

# The peers take turns model by model (litestage, then transformers), so the
# two figures of each ratio are measured minutes apart at most: other load on
# a small shared machine then hits both alike.
engine_files=()
hf_files=()
IFS=, read -ra preset_list <<< "$presets"
IFS=, read -ra dtype_list <<< "$dtypes"
for preset in "${preset_list[@]}"; do
  for dtype in "${dtype_list[@]}"; do
    echo "== $preset $dtype: litestage engine_bench ($threads threads) =="
    "$bin_dir/engine_bench" --models_dir "$models_dir" --presets "$preset" --dtypes "$dtype" \
      --threads "$threads" --reps "$reps" --prefill_tokens 128 --decode_prompt_tokens 32 \
      --new_tokens 32 --batches 1,8 --json_out "$work/engine-$preset-$dtype.json"
    engine_files+=("$work/engine-$preset-$dtype.json")
    echo "== $preset $dtype: transformers peer ($threads threads) =="
    "$python" bench/hf_peer.py measure --models-dir "$models_dir" "${common[@]}" \
      --presets "$preset" --dtypes "$dtype" --out "$work/hf-$preset-$dtype.json"
    hf_files+=("$work/hf-$preset-$dtype.json")
  done
done

# The command as typed: `make bench` sets MAKELEVEL for its recipes.
command="bench/run.sh"
if [ -n "${MAKELEVEL:-}" ]; then command="make bench"; fi
for var in BENCH_THREADS BENCH_REPS BENCH_PRESETS BENCH_DTYPES BENCH_BIN_DIR BENCH_PYTHON; do
  if [ -n "${!var:-}" ]; then command="$var=${!var} $command"; fi
done
echo "== report =="
python3 bench/report.py --engine "${engine_files[@]}" --hf "${hf_files[@]}" \
  --results-dir "$results_dir" --command "$command" --kernels "$kernels_out"
"$root/bench/gguf_bench.sh"  # the default GGUF model against transformers and llama.cpp
"$root/bench/server_bench.sh"  # litestage-server under litestage-cli bench
"$root/bench/prefix_cache_bench.sh"  # the KV prefix cache off against on, same server load
