#!/usr/bin/env bash
# End-to-end checks of build/bin/litestage-run as a user calls it.
# Usage: cli_test.sh BIN_DIR   (LITESTAGE_SHARED: shared models; required
# when set, the real-model checks are skipped only when it is unset.
# LITESTAGE_DEFAULT_GGUF: the default GGUF model from
# scripts/fetch-default-model.sh; the same rule.)
set -uo pipefail
bin="${1:?usage: cli_test.sh BIN_DIR}/litestage-run"
failures=0
pass() { echo "PASS: $1"; }
fail() { echo "FAIL: $1"; failures=$((failures + 1)); }

# 1. The acceptance command: stories260K greedy continuation equals llama2.c's.
if [ -n "${LITESTAGE_SHARED:-}" ]; then
  model="$LITESTAGE_SHARED/models/stories260K"
  reference="$model/llama2c/reference_runc_greedy_prompt_once_upon_a_time_n64.txt"
  if [ ! -f "$model/model.safetensors" ] || [ ! -f "$reference" ]; then
    fail "LITESTAGE_SHARED=$LITESTAGE_SHARED is set but stories260K is missing"
  else
    out="$("$bin" --model "$model" --prompt "Once upon a time" --max-new-tokens 40 \
            --temperature 0 2>/dev/null)"
    expected="$(cat "$reference")"
    # run.c prints the prompt then the continuation; we print the continuation.
    if [ -n "$out" ] && [[ "$expected" == "Once upon a time$out"* ]]; then
      pass "stories260K continuation is a prefix of llama2.c's ($(printf %s "$out" | wc -c) bytes)"
    else
      fail "stories260K continuation differs from llama2.c: got [$out]"
    fi
    json="$("$bin" --model "$model" --prompt "Once upon a time" --max-new-tokens 8 \
             --temperature 0 --json 2>/dev/null)"
    if python3 - "$json" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
assert r["prompt_token_ids"][0] == 1, r["prompt_token_ids"]
assert len(r["generated_token_ids"]) == 8
assert len(r["confidences"]) == 8
assert r["synthetic"] is False
assert r["decode_tokens_per_second"] > 0
assert r["finish_reason"] == "length"
PY
    then pass "--json object has ids, confidences and timings"; else fail "--json: [$json]"; fi
  fi
else
  echo "SKIP: LITESTAGE_SHARED unset, real-model checks skipped"
fi

# 1b. The default model's acceptance command: a chat question answered.
if [ -n "${LITESTAGE_DEFAULT_GGUF:-}" ]; then
  if [ ! -f "$LITESTAGE_DEFAULT_GGUF" ]; then
    fail "LITESTAGE_DEFAULT_GGUF=$LITESTAGE_DEFAULT_GGUF is set but missing"
  else
    out="$("$bin" --model "$LITESTAGE_DEFAULT_GGUF" --chat --prompt "What is the capital of France?" \
            --max-new-tokens 16 --temperature 0 2>/dev/null)"
    if [[ "$out" == *Paris* ]]; then
      pass "default GGUF model answers the France question with Paris: [$out]"
    else
      fail "default GGUF model's answer lacks Paris: [$out]"
    fi
  fi
else
  echo "SKIP: LITESTAGE_DEFAULT_GGUF unset, default-model check skipped"
fi

# 2. Synthetic models work anywhere and say so.
err="$("$bin" --model synthetic:tiny --prompt "hi" --max-new-tokens 4 2>&1 >/dev/null)"
if [[ "$err" == *SYNTHETIC* ]]; then pass "synthetic model is labelled"; else fail "no SYNTHETIC label: $err"; fi

# 3. Bad input: non-zero exit and a message naming the problem.
expect_error() {  # description, expected substring, args...
  local what="$1" needle="$2"; shift 2
  local err code
  err="$("$bin" "$@" 2>&1 >/dev/null)"; code=$?
  if [ $code -ne 0 ] && [[ "$err" == *"$needle"* ]]; then pass "$what"; else fail "$what (exit $code): $err"; fi
}
expect_error "missing model directory" "/nonexistent/model" --model /nonexistent/model --prompt x
expect_error "missing --model" "--model" --prompt x
expect_error "bad top-p" "top_p" --model synthetic:tiny --prompt x --top-p 1.5
expect_error "bad dtype" "--dtype" --model synthetic:tiny --prompt x --dtype f8
expect_error "unknown preset" "nope" --model synthetic:nope --prompt x

echo "cli_test: $failures check(s) failed"
[ $failures -eq 0 ]
