# Sourced by the real-server benchmarks (server_bench.sh, prefix_cache_bench.sh)
# with $root set and the script's name in $1: checks that the binaries are
# built and sets bin_dir, model and questions from the BENCH_* overrides.
bin_dir="${BENCH_BIN_DIR:-$root/build/bin}"
for binary in litestage-server litestage-cli; do
  if [ ! -x "$bin_dir/$binary" ]; then
    echo "$1: $bin_dir/$binary is missing; run 'make build' first" >&2
    exit 1
  fi
done
model="${BENCH_MODEL:-$("$root/scripts/fetch-default-model.sh")}"
questions="${BENCH_QUESTIONS:-${LITESTAGE_SHARED:-$root/../shared}/data/obqa/test.jsonl}"
if [ ! -f "$questions" ]; then
  echo "$1: no question file $questions (set LITESTAGE_SHARED or BENCH_QUESTIONS)" >&2
  exit 1
fi
