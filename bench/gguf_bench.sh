#!/usr/bin/env bash
# The default model in `make bench`: litestage on SmolLM2-135M-Instruct Q4_1
# (the GGUF scripts/fetch-default-model.sh prints) against two peers on the
# same file, same prompt token ids and same thread count, in the same run:
#   * Hugging Face transformers (AutoModelForCausalLM.from_pretrained(dir,
#     gguf_file=name, dtype=float32): dequantized to f32 at load, as
#     litestage does by default);
#   * llama.cpp through llama-cpp-python (computes on the Q4_1 blocks).
# litestage runs three times: as loaded (--dtype auto: computing on the
# file's Q4_1/Q8_0 blocks), with --dtype f32 and with --dtype bf16. Resident
# memory after load is reported for every peer.
# Prints a table and ratios (ours / peer) and writes
# bench/results/<date>-gguf-smollm2-cpu.md (+ .json with every sample).
#
# Environment overrides (defaults in brackets):
#   BENCH_THREADS [nproc]      threads for every peer
#   BENCH_GGUF_REPS [5]        timed repetitions per figure (medians reported)
#   BENCH_GGUF_NEW_TOKENS [64] greedy tokens per run, EOS ignored
#   BENCH_BIN_DIR [build/bin]  BENCH_RESULTS_DIR [bench/results]
#   BENCH_PYTHON               a python with torch+transformers+gguf+accelerate
#   BENCH_LLAMACPP_PYTHON      a python with llama_cpp
#
# Python packages (pinned; installed into venvs of their own when no suitable
# environment exists):
#   .venv-gguf-hf:  torch==2.15.0 transformers==5.24.0 gguf==0.19.0
#                   accelerate==1.15.0 numpy==2.4.6
#   .venv-llamacpp: llama-cpp-python==0.3.36 (builds llama.cpp from source
#                   with cmake when PyPI has no wheel for the platform: about
#                   15 minutes on 2 cores, once)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

threads="${BENCH_THREADS:-$(nproc)}"
reps="${BENCH_GGUF_REPS:-5}"
new_tokens="${BENCH_GGUF_NEW_TOKENS:-64}"
bin_dir="${BENCH_BIN_DIR:-$root/build/bin}"
results_dir="${BENCH_RESULTS_DIR:-$root/bench/results}"
work="$root/build/bench-run/gguf"
mkdir -p "$work"

# About 128 tokens with the SmolLM2 tokenizer. The ids litestage encodes it to
# are what both peers get, so all three do the same work.
readonly PROMPT="The history of computing is a story of machines that grew smaller, \
faster and cheaper with every decade. Early computers filled entire rooms, \
consumed enormous amounts of power and could perform only a few thousand \
operations per second. The invention of the transistor, and later the \
integrated circuit, changed everything: engineers could place millions and \
then billions of switches on a single chip of silicon. Today a phone in your \
pocket is more powerful than the supercomputers of the nineteen eighties, and \
small language models can run on a laptop without any network connection. \
Explain in simple words why this happened, and mention memory bandwidth, \
compilers and parallel processors. Be brief."

die() { echo "bench/gguf_bench.sh: $*" >&2; exit 1; }

has_hf_packages() {
  [ -x "$1" ] && "$1" -c 'import torch, transformers, gguf, accelerate' 2>/dev/null
}
has_llamacpp() {
  [ -x "$1" ] && "$1" -c 'import llama_cpp, numpy' 2>/dev/null
}

[ -x "$bin_dir/litestage-run" ] || die "$bin_dir/litestage-run is missing; run 'make build' first"
gguf="$(scripts/fetch-default-model.sh)" || die "scripts/fetch-default-model.sh failed (see above)"

# transformers: BENCH_PYTHON, our .venv-gguf-hf, the bench or golden venvs
# when they already have the packages (saves a large download), else a fresh
# .venv-gguf-hf.
if [ -n "${BENCH_PYTHON:-}" ]; then
  hf_python="$BENCH_PYTHON"
else
  hf_python=""
  for venv in .venv-gguf-hf .venv-bench .venv-golden; do
    if has_hf_packages "$root/$venv/bin/python"; then
      hf_python="$root/$venv/bin/python"
      break
    fi
  done
  if [ -z "$hf_python" ]; then
    echo "== creating .venv-gguf-hf (torch, transformers, gguf; a large download, once) =="
    python3 -m venv "$root/.venv-gguf-hf"
    "$root/.venv-gguf-hf/bin/pip" install --quiet --upgrade pip
    "$root/.venv-gguf-hf/bin/pip" install --quiet torch==2.15.0 transformers==5.24.0 \
      gguf==0.19.0 accelerate==1.15.0 numpy==2.4.6
    hf_python="$root/.venv-gguf-hf/bin/python"
  fi
fi
has_hf_packages "$hf_python" || die "$hf_python lacks torch/transformers/gguf/accelerate"

llama_python="${BENCH_LLAMACPP_PYTHON:-$root/.venv-llamacpp/bin/python}"
if [ -z "${BENCH_LLAMACPP_PYTHON:-}" ] && ! has_llamacpp "$llama_python"; then
  echo "== creating .venv-llamacpp (llama-cpp-python; compiles llama.cpp, once) =="
  python3 -m venv "$root/.venv-llamacpp"
  "$root/.venv-llamacpp/bin/pip" install --quiet --upgrade pip
  # Every x86 extension this CPU class has except AMX: -march=native turns
  # on llama.cpp's AMX backend, whose decode crashes (SIGSEGV in
  # llama_decode) on these sandboxed Sapphire Rapids machines; litestage
  # does not use AMX either.
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
-DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON \
-DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF \
-DGGML_AMX_BF16=OFF -DGGML_OPENMP=OFF}" \
    "$root/.venv-llamacpp/bin/pip" install --quiet llama-cpp-python==0.3.36
fi
has_llamacpp "$llama_python" || die "$llama_python lacks llama_cpp"

# litestage: one process per repetition (litestage-run loads, generates once
# and exits), after one untimed process that warms the page cache.
run_litestage() {  # <label> <extra flags...>
  local label="$1"
  shift
  echo "== litestage $label ($threads threads, $reps runs) =="
  "$bin_dir/litestage-run" --model "$gguf" --prompt "$PROMPT" --threads "$threads" \
    --max-new-tokens "$new_tokens" --ignore-eos --json "$@" >/dev/null 2>&1 ||
    die "litestage-run $* failed on $gguf"
  local i
  for ((i = 1; i <= reps; i++)); do
    "$bin_dir/litestage-run" --model "$gguf" --prompt "$PROMPT" --threads "$threads" \
      --max-new-tokens "$new_tokens" --ignore-eos --json "$@" \
      >"$work/litestage-$label-$i.json" 2>"$work/litestage-$label-$i.log" ||
      die "litestage-run failed; see $work/litestage-$label-$i.log"
    python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
print("  litestage %s: prefill %8.1f tok/s  decode %7.1f tok/s" % (
    sys.argv[2], d["prefill_tokens_per_second"], d["decode_tokens_per_second"]))' \
      "$work/litestage-$label-$i.json" "$label"
  done
}

rm -f "$work"/litestage-*.json
run_litestage q4_1
run_litestage f32 --dtype f32
run_litestage bf16 --dtype bf16

# The prompt ids litestage used, for the peers.
python3 -c 'import json, sys
json.dump(json.load(open(sys.argv[1]))["prompt_token_ids"], open(sys.argv[2], "w"))' \
  "$work/litestage-f32-1.json" "$work/prompt_ids.json"

peer_args=(--gguf "$gguf" --prompt-ids "$work/prompt_ids.json" --threads "$threads"
           --reps "$reps" --new-tokens "$new_tokens")
echo "== transformers (GGUF dequantized to f32, $threads threads) =="
"$hf_python" bench/gguf_peers.py measure --peer transformers "${peer_args[@]}" \
  --out "$work/transformers.json"
echo "== llama.cpp via llama-cpp-python (Q4_1, $threads threads) =="
"$llama_python" bench/gguf_peers.py measure --peer llamacpp "${peer_args[@]}" \
  --out "$work/llamacpp.json"

# The command as typed: `make bench` sets MAKELEVEL for its recipes.
command="bench/gguf_bench.sh"
if [ -n "${MAKELEVEL:-}" ]; then command="make bench"; fi
for var in BENCH_THREADS BENCH_GGUF_REPS BENCH_GGUF_NEW_TOKENS BENCH_BIN_DIR BENCH_PYTHON \
           BENCH_LLAMACPP_PYTHON; do
  if [ -n "${!var:-}" ]; then command="$var=${!var} $command"; fi
done
echo "== report =="
python3 bench/gguf_peers.py report --gguf "$gguf" \
  --litestage-q4-1 "$work"/litestage-q4_1-*.json \
  --litestage-f32 "$work"/litestage-f32-*.json \
  --litestage-bf16 "$work"/litestage-bf16-*.json \
  --transformers "$work/transformers.json" --llamacpp "$work/llamacpp.json" \
  --results-dir "$results_dir" --command "$command"
