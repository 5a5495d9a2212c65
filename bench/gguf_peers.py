#!/usr/bin/env python3
"""Peer timings on the default GGUF model for bench/gguf_bench.sh.

Measures, on one GGUF file and a given list of prompt token ids:
  * prefill tokens/s: the whole prompt through one forward pass to the logits
    of its last position, plus the argmax of the first generated token;
  * decode tokens/s: the greedy tokens after the first (N - 1 forward steps of
    one token each, argmax taken here, EOS ignored),
the same split litestage-run --json reports (prefill_seconds is the prompt
through the first token, decode_seconds every later token).

Peers (each imported only when asked for, since they live in separate venvs):
  transformers  AutoModelForCausalLM.from_pretrained(dir, gguf_file=name,
                dtype=float32): transformers dequantizes the GGUF to f32
                tensors at load, as litestage does by default.
                Packages (pinned in .venv-golden / .venv-gguf-hf):
                torch==2.15.0 transformers==5.24.0 gguf==0.19.0
                accelerate==1.15.0 numpy==2.4.6
  llamacpp      llama_cpp.Llama on the same file, computing on the quantized
                Q4_1 blocks. Package: llama-cpp-python==0.3.36.

Every figure is the median of --reps timed repetitions after one warm-up; the
samples are kept in the JSON (--out).

  gguf_peers.py measure --peer transformers --gguf F.gguf --prompt-ids ids.json \
      --threads 2 --reps 5 --new-tokens 64 --out hf.json
"""

import argparse
import datetime
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import time


def read_prompt_ids(path):
    """Returns the list of ints in the JSON file `path` (a bare list)."""
    with open(path) as f:
        ids = json.load(f)
    if not isinstance(ids, list) or not ids or not all(
        isinstance(i, int) for i in ids):
        raise SystemExit(f"{path}: expected a non-empty JSON list of token ids")
    return ids


def summarize(samples):
    return {"median": statistics.median(samples), "samples": samples}


def measure_transformers(args, prompt_ids):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    directory, name = os.path.split(os.path.abspath(args.gguf))
    load_start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=name, dtype=torch.float32)
    model.eval()
    load_seconds = time.perf_counter() - load_start
    prompt = torch.tensor([prompt_ids], dtype=torch.long)
    # transformers >= 5.2x names the KV cache argument and output field
    # `cache`; older releases `past_key_values`.
    forward_params = inspect.signature(model.forward).parameters
    cache_name = "cache" if "cache" in forward_params else "past_key_values"

    def one_run():
        """Returns (prefill_seconds, decode_seconds, generated ids)."""
        with torch.inference_mode():
            start = time.perf_counter()
            out = model(prompt, use_cache=True, logits_to_keep=1)
            token = int(out.logits[0, -1].argmax())
            first = time.perf_counter()
            cache = getattr(out, cache_name)
            generated = [token]
            for _ in range(args.new_tokens - 1):
                out = model(torch.tensor([[token]], dtype=torch.long),
                            use_cache=True, **{cache_name: cache})
                cache = getattr(out, cache_name)
                token = int(out.logits[0, -1].argmax())
                generated.append(token)
            end = time.perf_counter()
        return first - start, end - first, generated

    versions = {"transformers": transformers.__version__,
                "torch": torch.__version__}
    # Tied embeddings are one tensor, counted once: the lm_head reads all of
    # it every token, the embedding lookup one row.
    parameters = sum(p.numel() for p in model.parameters())
    return load_seconds, one_run, versions, {
        "weights": "f32 (dequantized)", "parameters": parameters}


def measure_llamacpp(args, prompt_ids):
    import llama_cpp
    import numpy as np

    load_start = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=args.gguf, n_ctx=len(prompt_ids) + args.new_tokens + 16,
        n_batch=512, n_ubatch=512, n_threads=args.threads,
        n_threads_batch=args.threads, logits_all=False, verbose=False)
    load_seconds = time.perf_counter() - load_start

    n_vocab = llm.n_vocab()

    def last_logits():
        # Llama.eval no longer copies logits into llm.scores unless
        # logits_all; read the last position's row from the context instead.
        pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(n_vocab,))

    def one_run():
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt_ids)
        token = int(np.argmax(last_logits()))
        first = time.perf_counter()
        generated = [token]
        for _ in range(args.new_tokens - 1):
            llm.eval([token])
            token = int(np.argmax(last_logits()))
            generated.append(token)
        end = time.perf_counter()
        return first - start, end - first, generated

    system_info = llama_cpp.llama_print_system_info()
    if isinstance(system_info, bytes):
        system_info = system_info.decode("utf-8", "replace")
    versions = {"llama-cpp-python": llama_cpp.__version__}
    return load_seconds, one_run, versions, {
        "weights": "Q4_1 blocks as stored", "system_info": system_info.strip()}


def run_measure(args):
    if args.new_tokens < 2:
        raise SystemExit("--new-tokens must be at least 2 (decode needs a step)")
    prompt_ids = read_prompt_ids(args.prompt_ids)
    measure = {"transformers": measure_transformers,
               "llamacpp": measure_llamacpp}[args.peer]
    load_seconds, one_run, versions, extra = measure(args, prompt_ids)
    resident_after_load = resident_bytes()

    one_run()  # Warm-up: allocator, thread pools, first-call paths.
    prefill_tps, decode_tps, generated = [], [], None
    for _ in range(args.reps):
        prefill_seconds, decode_seconds, generated = one_run()
        prefill_tps.append(len(prompt_ids) / prefill_seconds)
        decode_tps.append((args.new_tokens - 1) / decode_seconds)
        print(f"  {args.peer}: prefill {prefill_tps[-1]:8.1f} tok/s  "
              f"decode {decode_tps[-1]:7.1f} tok/s", file=sys.stderr)

    result = {
        "peer": args.peer,
        "gguf": os.path.abspath(args.gguf),
        "threads": args.threads,
        "reps": args.reps,
        "prompt_tokens": len(prompt_ids),
        "new_tokens": args.new_tokens,
        "load_seconds": load_seconds,
        "resident_bytes_after_load": resident_after_load,
        "prefill_tokens_per_second": summarize(prefill_tps),
        "decode_tokens_per_second": summarize(decode_tps),
        "generated_token_ids": generated,
        "versions": dict(versions, python=platform.python_version()),
        **extra,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


def resident_bytes():
    """VmRSS of this process in bytes (None without /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def litestage_row(paths, label):
    """Joins litestage-run --json outputs (one per repetition) into a row."""
    runs = []
    for path in sorted(paths):
        with open(path) as f:
            runs.append(json.load(f))
    if not runs:
        raise SystemExit(f"no litestage-run outputs for {label}")
    return {
        "name": label,
        "prefill_tokens_per_second": summarize(
            [r["prefill_tokens_per_second"] for r in runs]),
        "decode_tokens_per_second": summarize(
            [r["decode_tokens_per_second"] for r in runs]),
        "prompt_tokens": len(runs[0]["prompt_token_ids"]),
        "new_tokens": len(runs[0]["generated_token_ids"]),
        "generated_token_ids": runs[0]["generated_token_ids"],
        "resident_bytes_after_load": runs[0].get("resident_bytes_after_load"),
        "model": runs[0].get("model", ""),
        "backend": runs[0].get("backend", ""),
    }


def shell_output(command):
    try:
        return subprocess.run(command, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_model():
    for line in shell_output(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def common_prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def run_report(args):
    with open(args.transformers) as f:
        hf = json.load(f)
    with open(args.llamacpp) as f:
        llama = json.load(f)
    ours = [litestage_row(args.litestage_q4_1, "litestage Q4_1"),
            litestage_row(args.litestage_f32, "litestage f32"),
            litestage_row(args.litestage_bf16, "litestage bf16")]
    peers = [dict(hf, name="transformers f32"),
             dict(llama, name="llama.cpp Q4_1")]

    now = datetime.datetime.now(datetime.timezone.utc)
    commit = shell_output(["git", "-C", args.repo, "rev-parse", "--short=12", "HEAD"])
    if shell_output(["git", "-C", args.repo, "status", "--porcelain",
                     "--untracked-files=no"]):
        commit += " (with uncommitted changes)"
    parameters = hf.get("parameters", 0)
    gguf_bytes = os.path.getsize(args.gguf)
    threads = hf["threads"]

    def med(row, key):
        return row[key]["median"]

    def best(row, key):
        return max(row[key]["samples"])

    lines = []
    out = lines.append
    out(f"# Default model (GGUF) on CPU: SmolLM2-135M-Instruct Q4_1, {threads} threads")
    out("")
    out(f"* Date: {now:%Y-%m-%d %H:%M} UTC")
    out(f"* Commit: {commit}")
    out(f"* Command: `{args.command}`")
    out(f"* CPU: {cpu_model()}, {os.cpu_count()} cores visible; "
        f"every peer ran with {threads} threads")
    out(f"* Model: `{os.path.basename(args.gguf)}` ({gguf_bytes / 1e6:.1f} MB), "
        f"{parameters / 1e6:.1f} M parameters")
    out(f"* Versions: llama-cpp-python {llama['versions'].get('llama-cpp-python')}, "
        f"transformers {hf['versions'].get('transformers')}, "
        f"torch {hf['versions'].get('torch')}, Python {hf['versions'].get('python')}")
    out(f"* Load average (1/5/15 min) when the report was written: "
        f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())} (other jobs share "
        f"these cores; compare ratios from one run, not numbers across runs)")
    out(f"* litestage backend: {ours[0]['backend']}")
    out(f"* llama.cpp system info: `{llama.get('system_info', '')}`")
    out(f"* Work: one prompt of {ours[0]['prompt_tokens']} tokens (the same ids in "
        f"every peer), then {ours[0]['new_tokens']} greedy tokens, EOS ignored. "
        f"Prefill tokens/s = prompt tokens / (prompt forward + first token); "
        f"decode tokens/s = {ours[0]['new_tokens'] - 1} later tokens / their time.")
    out(f"* Medians of {hf['reps']} timed runs each. litestage: one "
        f"`litestage-run --json` process per run (after one untimed process), so "
        f"its prefill includes the first forward pass of a fresh process; the "
        f"peers load once, warm up once, then time {hf['reps']} runs in-process.")
    out("")
    out("litestage Q4_1: the GGUF as loaded (`--dtype auto`: the kernels "
        "compute on the Q4_1/Q8_0 blocks, bit-identical to f32); litestage f32: "
        "`--dtype f32` (dequantized to f32); litestage "
        "bf16: `--dtype bf16` (dequantized to bf16); transformers f32: "
        "`from_pretrained(dir, gguf_file=..., dtype=torch.float32)` "
        "(dequantized to f32); llama.cpp Q4_1: llama-cpp-python on the "
        "quantized blocks.")
    out("")
    out("Tokens/s, median of the runs (best run in brackets; on a shared "
        "machine the best run is the one least disturbed by other load):")
    out("")
    out("| peer | prefill tok/s | decode tok/s | resident after load |")
    out("|---|---:|---:|---:|")
    for row in ours + peers:
        rss = row.get("resident_bytes_after_load")
        rss_text = (f"{rss / 1e6:.0f} MB ({rss / gguf_bytes:.2f}x file)"
                    if rss else "n/a")
        out(f"| {row['name']} | {med(row, 'prefill_tokens_per_second'):.1f} "
            f"({best(row, 'prefill_tokens_per_second'):.1f}) | "
            f"{med(row, 'decode_tokens_per_second'):.1f} "
            f"({best(row, 'decode_tokens_per_second'):.1f}) | {rss_text} |")
    out("")
    out("Ratios (ours / peer, > 1 means litestage is faster), of the medians "
        "and (in brackets) of the best runs:")
    out("")
    out("| ours | peer | prefill | decode |")
    out("|---|---|---:|---:|")
    ratios = []
    for mine in ours:
        for peer in peers:
            prefill = (med(mine, "prefill_tokens_per_second") /
                       med(peer, "prefill_tokens_per_second"))
            decode = (med(mine, "decode_tokens_per_second") /
                      med(peer, "decode_tokens_per_second"))
            best_prefill = (best(mine, "prefill_tokens_per_second") /
                            best(peer, "prefill_tokens_per_second"))
            best_decode = (best(mine, "decode_tokens_per_second") /
                           best(peer, "decode_tokens_per_second"))
            ratios.append({"ours": mine["name"], "peer": peer["name"],
                           "prefill": prefill, "decode": decode,
                           "best_prefill": best_prefill, "best_decode": best_decode})
            out(f"| {mine['name']} | {peer['name']} | {prefill:.2f} ({best_prefill:.2f}) | "
                f"{decode:.2f} ({best_decode:.2f}) |")
    out("")
    if parameters:
        out("Weight bytes read per decode token (all layer matrices plus the tied "
            "lm_head; about the parameter count):")
        out("")
        out(f"* litestage Q4_1: about {parameters * 24 / 32 / 1e6:.0f} MB (the "
            f"file's blocks with f32 scales: 24 bytes per 32 weights)")
        out(f"* litestage f32 / transformers f32: {4 * parameters / 1e6:.0f} MB "
            f"(4 bytes per weight)")
        out(f"* litestage bf16: {2 * parameters / 1e6:.0f} MB (2 bytes per weight)")
        out(f"* llama.cpp Q4_1: about {gguf_bytes / 1e6:.0f} MB (the file; Q4_1 is "
            f"20 bytes per 32 weights, 0.625 bytes per weight)")
        out("")
    out("Resident memory after load includes the binary, the KV cache and "
        "buffers besides the weights. Batch-1 decode is bound by the weight "
        "bytes (and, on the block types, by decoding them), so it compares "
        "the quantized kernels; prefill is compute-bound and compares the "
        "matmul micro-kernels. transformers dequantizes to f32, so it is the "
        "like-for-like peer of the f32 rows (the Q4_1 row computes the same "
        "bits).")
    out("")
    reference = ours[0]["generated_token_ids"]
    out(f"Greedy tokens agreeing with litestage Q4_1 (common prefix of "
        f"{len(reference)}): " + ", ".join(
            f"{row['name']} {common_prefix(reference, row['generated_token_ids'])}"
            for row in ours[1:] + peers) + ".")
    out("")
    out("Samples (tokens/s, in run order):")
    out("")
    for row in ours + peers:
        prefill = ", ".join(f"{x:.1f}" for x in row["prefill_tokens_per_second"]["samples"])
        decode = ", ".join(f"{x:.1f}" for x in row["decode_tokens_per_second"]["samples"])
        out(f"* {row['name']}: prefill [{prefill}]; decode [{decode}]")
    text = "\n".join(lines) + "\n"
    print(text)

    os.makedirs(args.results_dir, exist_ok=True)
    stem = os.path.join(args.results_dir, f"{now:%Y-%m-%d}-gguf-smollm2-cpu")
    with open(stem + ".md", "w") as f:
        f.write(text)
    with open(stem + ".json", "w") as f:
        json.dump({"date": now.isoformat(), "commit": commit, "command": args.command,
                   "cpu": cpu_model(), "cores": os.cpu_count(), "threads": threads,
                   "rows": ours + peers, "ratios": ratios}, f, indent=1)
    print(f"wrote {stem}.md and {stem}.json")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command_name", required=True)
    measure = sub.add_parser("measure", help="time one peer, JSON to --out")
    measure.add_argument("--peer", required=True, choices=["transformers", "llamacpp"])
    measure.add_argument("--gguf", required=True)
    measure.add_argument("--prompt-ids", required=True,
                         help="JSON file holding the prompt token ids")
    measure.add_argument("--threads", type=int, required=True)
    measure.add_argument("--reps", type=int, default=5)
    measure.add_argument("--new-tokens", type=int, default=64)
    measure.add_argument("--out", required=True)
    report = sub.add_parser("report", help="table, ratios and bench/results/ files")
    report.add_argument("--gguf", required=True)
    report.add_argument("--litestage-q4-1", nargs="+", required=True)
    report.add_argument("--litestage-f32", nargs="+", required=True)
    report.add_argument("--litestage-bf16", nargs="+", required=True)
    report.add_argument("--transformers", required=True)
    report.add_argument("--llamacpp", required=True)
    report.add_argument("--results-dir", required=True)
    report.add_argument("--command", required=True)
    report.add_argument("--repo", default=os.path.join(os.path.dirname(__file__), ".."))
    args = parser.parse_args()
    if args.command_name == "measure":
        run_measure(args)
    else:
        run_report(args)


if __name__ == "__main__":
    main()
