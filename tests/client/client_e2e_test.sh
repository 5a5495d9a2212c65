#!/usr/bin/env bash
# End-to-end checks of litestage-cli against a real litestage-server on a free
# port (synthetic:tiny model), and of a Python grpcio client generated from
# the .proto against the same server.
# Usage: client_e2e_test.sh BIN_DIR   (BIN_DIR holds litestage-cli and
# litestage-server). Needs /usr/bin/python3 with grpcio and grpc_tools
# (Debian python3-grpcio python3-grpc-tools, scripts/install-deps.sh) and
# openssl (a self-signed certificate for the TLS checks).
set -uo pipefail
bin_dir="${1:?usage: client_e2e_test.sh BIN_DIR}"
cli="$bin_dir/litestage-cli"
server="$bin_dir/litestage-server"
proto_root="$(cd "$(dirname "$0")/../../proto" && pwd)"
# Debian's grpcio lives in the system interpreter, not in a pyenv/venv one.
system_python=/usr/bin/python3

failures=0
pass() { echo "PASS: $1"; }
fail() { echo "FAIL: $1"; failures=$((failures + 1)); }

tmp="$(mktemp -d)"
server_pids=()
stop_server() {  # PID: SIGTERM, its drain grace, then SIGKILL.
  local pid="$1"
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
}
cleanup() {
  for pid in "${server_pids[@]}"; do stop_server "$pid"; done
  rm -rf "$tmp"
}
trap cleanup EXIT

for binary in "$cli" "$server"; do
  if [ ! -x "$binary" ]; then
    echo "FAIL: $binary is missing (build litestage_cli and the server)"
    exit 1
  fi
done

# synthetic:tiny: 1024-token context, byte tokenizer. tinythinker's few-shot
# prompts take ~750 bytes, so questions are short and stages capped at 8.
question="Is ice cold?"
choices="yes|no"
max_new=8

"$server" --model synthetic:tiny --port 0 --port-file "$tmp/port" \
  --metrics-port 0 >"$tmp/server.log" 2>&1 &
server_pid=$!
server_pids+=("$server_pid")

port=""
for _ in $(seq 1 600); do  # 60 s
  if [ -s "$tmp/port" ]; then
    port="$(tr -dc '0-9' <"$tmp/port")"
    [ -n "$port" ] && break
  fi
  if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
  sleep 0.1
done
if [ -z "$port" ]; then
  echo "FAIL: the server wrote no port file; its log:"
  cat "$tmp/server.log"
  exit 1
fi
target="localhost:$port"
common=(--target "$target" --timeout 120)

serving=0
for _ in $(seq 1 300); do  # 60 s
  if [ "$("$cli" health --target "$target" --timeout 2 2>/dev/null)" = SERVING ]; then
    serving=1
    break
  fi
  if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
  sleep 0.2
done
if [ "$serving" != 1 ]; then
  echo "FAIL: the server on $target never became SERVING; its log:"
  cat "$tmp/server.log"
  exit 1
fi
pass "server on $target is SERVING"

# json_check NAME JSON PYTHON_ASSERTIONS: runs the assertions with `r` bound to
# the parsed JSON and sys.argv[2] the optional OTHER_JSON (plain json: any
# python3 will do). Usage: json_check NAME JSON ASSERTIONS [OTHER_JSON]
json_check() {
  local name="$1" json="$2" code="$3" other="${4:-null}"
  if python3 -c "
import json, sys
r = json.loads(sys.argv[1])
$code
" "$json" "$other" 2>"$tmp/check.err"; then
    pass "$name"
  else
    fail "$name: $(cat "$tmp/check.err") -- output: ${json:0:2000}"
  fi
}

# 1. health, readiness and liveness.
out="$("$cli" health "${common[@]}")"; rc=$?
[ "$rc" = 0 ] && [ "$out" = SERVING ] && pass "health: SERVING, exit 0" ||
  fail "health: rc=$rc out=[$out]"
out="$("$cli" health "${common[@]}" --service "")"; rc=$?
[ "$rc" = 0 ] && [ "$out" = SERVING ] && pass "health --service '': SERVING" ||
  fail "health --service '': rc=$rc out=[$out]"

# 2. reason --json: three stages and an answer field.
reason_json="$("$cli" reason "${common[@]}" --question "$question" --choices "$choices" \
  --max-new-tokens "$max_new" --request-id e2e-reason --json 2>"$tmp/err")"; rc=$?
if [ "$rc" != 0 ]; then
  fail "reason --json exited $rc: $(cat "$tmp/err")"
else
  json_check "reason --json: 3 stages, answer, echoed request id" "$reason_json" '
assert r["request_id"] == "e2e-reason", r["request_id"]
assert len(r["stages"]) == 3, len(r["stages"])
assert "answer" in r and "answer_index" in r
assert r["choices"] == ["yes", "no"], r["choices"]
for i, s in enumerate(r["stages"]):
    assert s["index"] == i, s
    assert s["name"], s
    assert "output" in s
    # 8 tokens per generation; a fan-out stage has one branch per choice.
    assert 0 <= int(s["generated_tokens"]) <= 8 * max(1, len(s["branches"])), s
    assert s["seconds"] > 0, s
'
fi

out="$("$cli" reason "${common[@]}" --question "$question" --choices "$choices" \
  --max-new-tokens "$max_new")"; rc=$?
if [ "$rc" = 0 ] && [[ "$out" == *"[1] "* ]] && [[ "$out" == *"[3] "* ]] &&
  [[ "$out" == *"Answer: "* ]] && [[ "$out" == *"skipped sub-layers"* ]]; then
  pass "reason (readable): stage lines and answer"
else
  fail "reason (readable): rc=$rc out=[$out]"
fi

# 3. stream: event order, and the same result as the unary call.
stream_json="$("$cli" stream "${common[@]}" --question "$question" --choices "$choices" \
  --max-new-tokens "$max_new" --json 2>"$tmp/err")"; rc=$?
if [ "$rc" != 0 ]; then
  fail "stream --json exited $rc: $(cat "$tmp/err")"
else
  json_check "stream --json: started/deltas/finished per stage, then the result" \
    "$(python3 -c 'import json,sys; print(json.dumps([json.loads(l) for l in sys.stdin if l.strip()]))' <<<"$stream_json")" '
unary = json.loads(sys.argv[2])
kinds = [next(k for k in ("stage_started", "delta", "stage_finished", "result") if k in e) for e in r]
assert kinds[-1] == "result" and kinds.count("result") == 1, kinds
assert kinds.count("stage_started") == 3 and kinds.count("stage_finished") == 3, kinds
stage = -1
for e, k in zip(r, kinds):
    assert e["request_id"] == r[0]["request_id"]
    if k == "stage_started":
        assert e["stage_started"]["stage_index"] == stage + 1, e
        stage += 1
        open_stage = True
    elif k == "delta":
        assert open_stage and e["delta"]["stage_index"] == stage, e
    elif k == "stage_finished":
        assert open_stage and e["stage_finished"]["index"] == stage, e
        open_stage = False
result = r[-1]["result"]
assert result["answer"] == unary["answer"], (result["answer"], unary["answer"])
assert [s["output"] for s in result["stages"]] == [s["output"] for s in unary["stages"]]
' "$reason_json"
fi
out="$("$cli" stream "${common[@]}" --question "$question" --choices "$choices" \
  --max-new-tokens "$max_new")"; rc=$?
[ "$rc" = 0 ] && [[ "$out" == *"== [1] "* ]] && [[ "$out" == *"Answer: "* ]] &&
  pass "stream (readable): stage headers and answer" || fail "stream (readable): rc=$rc out=[$out]"

# 4. generate, unary and streamed.
gen_json="$("$cli" generate "${common[@]}" --prompt "Once upon a time" --max-new-tokens 8 \
  --json 2>"$tmp/err")"; rc=$?
if [ "$rc" != 0 ]; then
  fail "generate --json exited $rc: $(cat "$tmp/err")"
else
  json_check "generate --json: text and at most 8 tokens" "$gen_json" '
assert "text" in r and r["finish_reason"], r
assert 0 < int(r["generated_tokens"]) <= 8, r["generated_tokens"]
assert r["request_id"].startswith("ls-"), r["request_id"]
'
fi
out="$("$cli" generate "${common[@]}" --prompt "Once upon a time" --max-new-tokens 8 \
  --stream --json)"; rc=$?
if [ "$rc" = 0 ]; then
  json_check "generate --stream --json: deltas then one result" \
    "$(python3 -c 'import json,sys; print(json.dumps([json.loads(l) for l in sys.stdin if l.strip()]))' <<<"$out")" '
assert "result" in r[-1] and all("delta" in e for e in r[:-1]), r
assert "".join(e["delta"]["text"] for e in r[:-1]) == r[-1]["result"]["text"]
'
else
  fail "generate --stream --json exited $rc"
fi

# Special-token text in a raw prompt: parsed unless --split-special-tokens
# (synthetic:tiny's byte tokenizer has "<s>": 1 token parsed, 3 bytes split).
parsed="$("$cli" generate "${common[@]}" --prompt "<s>" --max-new-tokens 1 --json)"
split="$("$cli" generate "${common[@]}" --prompt "<s>" --max-new-tokens 1 --json \
  --split-special-tokens)"
json_check "generate --split-special-tokens: special text encoded as plain text" \
  "$parsed" '
split = json.loads(sys.argv[2])
assert int(split["prompt_tokens"]) == int(r["prompt_tokens"]) + 2, (r, split)
' "$split"

# 5. info and profiles.
info_json="$("$cli" info "${common[@]}" --json)"; rc=$?
if [ "$rc" = 0 ]; then
  json_check "info --json: model, pipelines, limits" "$info_json" '
assert "synthetic" in r["model"], r["model"]
assert any(p["name"] == r["default_pipeline"] for p in r["pipelines"]), r["pipelines"]
assert int(r["limits"]["context_length"]) == 1024, r["limits"]
'
else
  fail "info --json exited $rc"
fi
"$cli" info "${common[@]}" | grep -q '^model' && pass "info (readable)" || fail "info (readable)"
profiles_json="$("$cli" profiles "${common[@]}" --json)"; rc=$?
if [ "$rc" = 0 ]; then
  json_check "profiles --json: the profiles info lists" "$profiles_json" '
info = json.loads(sys.argv[2])
assert sorted(p["name"] for p in r["profiles"]) == sorted(p["name"] for p in info["profiles"])
' "$info_json"
else
  fail "profiles --json exited $rc"
fi
"$cli" profiles "${common[@]}" >/dev/null && pass "profiles (readable)" || fail "profiles (readable)"

# 6. bench: 8 requests from 4 clients, all OK, per-stage latencies.
bench_json="$("$cli" bench "${common[@]}" --concurrency 4 --requests 8 \
  --max-new-tokens "$max_new" --json 2>"$tmp/err")"; rc=$?
if [ "$rc" != 0 ]; then
  fail "bench exited $rc: $(cat "$tmp/err")"
else
  json_check "bench --concurrency 4 --requests 8 --json: 8 OK" "$bench_json" '
assert r["requests"] == 8 and r["ok"] == 8 and r["failed"] == 0, r
assert r["codes"] == {"OK": 8}, r["codes"]
l = r["latency_seconds"]
assert l["count"] == 8 and 0 < l["min"] <= l["p50"] <= l["p90"] <= l["p99"] <= l["max"], l
assert len(r["stages"]) == 3 and all(s["latency_seconds"]["count"] == 8 for s in r["stages"]), r["stages"]
assert r["requests_per_second"] > 0 and r["generated_tokens"] >= 0
'
fi
out="$("$cli" bench "${common[@]}" --concurrency 2 --requests 4 --method generate \
  --max-new-tokens 4)"; rc=$?
[ "$rc" = 0 ] && [[ "$out" == *"ok 4, failed 0"* ]] && pass "bench --method generate (readable)" ||
  fail "bench --method generate: rc=$rc out=[$out]"

# 7. Errors: invalid requests, deadlines, a dead target, usage.
expect_error() {  # NAME WANT_RC WANT_TEXT... -- ARGS...
  local name="$1" want_rc="$2"
  shift 2
  local texts=()
  while [ "$1" != -- ]; do texts+=("$1"); shift; done
  shift
  "$cli" "$@" >/dev/null 2>"$tmp/err"
  local rc=$?
  local err
  err="$(cat "$tmp/err")"
  if [ "$rc" != "$want_rc" ]; then
    fail "$name: exit $rc, want $want_rc: [$err]"
    return
  fi
  for text in "${texts[@]}"; do
    if [[ "$err" != *"$text"* ]]; then
      fail "$name: stderr lacks '$text': [$err]"
      return
    fi
  done
  pass "$name: exit $want_rc, [$err]"
}
expect_error "empty question" 2 "litestage-cli: INVALID_ARGUMENT:" question -- \
  reason "${common[@]}" --question "" --choices "$choices"
expect_error "unknown profile" 2 "litestage-cli: INVALID_ARGUMENT:" profile -- \
  reason "${common[@]}" --question "$question" --profile no-such-profile
expect_error "unknown pipeline (stream)" 2 "litestage-cli: INVALID_ARGUMENT:" pipeline -- \
  stream "${common[@]}" --question "$question" --pipeline no-such-pipeline
expect_error "empty prompt" 2 "litestage-cli: INVALID_ARGUMENT:" prompt -- \
  generate "${common[@]}" --prompt ""
expect_error "1 ms deadline" 2 "litestage-cli: DEADLINE_EXCEEDED:" -- \
  reason --target "$target" --timeout 0.001 --question "$question" --max-new-tokens "$max_new"
dead_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
expect_error "dead target" 2 "litestage-cli: UNAVAILABLE:" -- \
  reason --target "127.0.0.1:$dead_port" --timeout 10 --question "$question"
expect_error "dead target (health)" 2 "litestage-cli: UNAVAILABLE:" -- \
  health --target "127.0.0.1:$dead_port" --timeout 10
expect_error "unknown subcommand" 1 "unknown subcommand" -- frobnicate
expect_error "bad bench concurrency" 1 "--concurrency" -- bench --concurrency 0
expect_error "bench against a dead target" 2 "litestage-cli: UNAVAILABLE:" -- \
  bench --target "127.0.0.1:$dead_port" --requests 2
expect_error "dns:/// target with round_robin, nothing listening" 2 "UNAVAILABLE" -- \
  health --target "dns:///localhost:$dead_port" --timeout 10

# 8. A Python grpcio client (stubs generated from the .proto) gets the same
# answer and stage outputs as litestage-cli (greedy decoding).
if ! "$system_python" -c 'import grpc, grpc_tools' 2>/dev/null; then
  fail "python grpcio client: $system_python lacks grpc or grpc_tools (apt-get install python3-grpcio python3-grpc-tools)"
elif ! "$system_python" -m grpc_tools.protoc -I"$proto_root" --python_out="$tmp" \
  --grpc_python_out="$tmp" litestage/v1/litestage.proto 2>"$tmp/err"; then
  fail "python grpcio client: protoc failed: $(cat "$tmp/err")"
else
  py_json="$(PYTHONPATH="$tmp" "$system_python" - "$target" "$question" "$choices" "$max_new" <<'PY'
import sys
import grpc
from google.protobuf import json_format
from litestage.v1 import litestage_pb2, litestage_pb2_grpc

target, question, choices, max_new = sys.argv[1:5]
with grpc.insecure_channel(target) as channel:
    stub = litestage_pb2_grpc.LiteStageStub(channel)
    response = stub.Reason(
        litestage_pb2.ReasonRequest(question=question, choices=choices.split("|"),
                                    max_new_tokens=int(max_new)),
        timeout=120)
print(json_format.MessageToJson(response, preserving_proto_field_name=True,
                                including_default_value_fields=True, indent=None))
PY
)"; rc=$?
  if [ "$rc" != 0 ]; then
    fail "python grpcio client: Reason failed (exit $rc)"
  else
    json_check "python grpcio Reason equals litestage-cli reason --json" "$py_json" '
cli = json.loads(sys.argv[2])
assert r["answer"] == cli["answer"] and r["answer_index"] == cli["answer_index"], (r["answer"], cli["answer"])
assert [(s["name"], s["output"]) for s in r["stages"]] == [(s["name"], s["output"]) for s in cli["stages"]]
assert r["request_id"] != cli["request_id"]
' "$reason_json"
  fi
fi

# 9. TLS: a second server with a self-signed certificate for litestage.test.
if ! command -v openssl >/dev/null; then
  fail "TLS: openssl is missing"
elif ! openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=litestage.test \
  -addext subjectAltName=DNS:litestage.test -keyout "$tmp/key.pem" \
  -out "$tmp/cert.pem" >/dev/null 2>&1; then
  fail "TLS: openssl could not make a certificate"
else
  "$server" --model synthetic:tiny --port 0 --port-file "$tmp/tls_port" --metrics-port 0 \
    --tls-cert "$tmp/cert.pem" --tls-key "$tmp/key.pem" >"$tmp/tls_server.log" 2>&1 &
  server_pids+=("$!")
  tls_port=""
  for _ in $(seq 1 600); do
    [ -s "$tmp/tls_port" ] && tls_port="$(tr -dc '0-9' <"$tmp/tls_port")"
    [ -n "$tls_port" ] && break
    sleep 0.1
  done
  tls_flags=(--target "localhost:$tls_port" --tls-ca "$tmp/cert.pem" --tls-server-name litestage.test)
  tls_ok=0
  for _ in $(seq 1 300); do
    if [ "$("$cli" health "${tls_flags[@]}" --timeout 2 2>/dev/null)" = SERVING ]; then
      tls_ok=1
      break
    fi
    sleep 0.2
  done
  if [ -z "$tls_port" ] || [ "$tls_ok" != 1 ]; then
    fail "TLS: health with --tls-ca and --tls-server-name never SERVING; server log: $(cat "$tmp/tls_server.log")"
  else
    pass "TLS: health with --tls-ca and --tls-server-name is SERVING"
    out="$("$cli" generate "${tls_flags[@]}" --timeout 120 --prompt "Once" --max-new-tokens 2 --json)" &&
      pass "TLS: generate" || fail "TLS: generate: [$out]"
    expect_error "TLS: certificate not trusted without --tls-ca" 2 "UNAVAILABLE" -- \
      health --target "localhost:$tls_port" --tls --tls-server-name litestage.test --timeout 10
    expect_error "TLS: plaintext client against a TLS server" 2 "UNAVAILABLE" -- \
      health --target "localhost:$tls_port" --timeout 10
  fi
fi

echo "client_e2e_test: $failures failure(s)"
[ "$failures" = 0 ]
