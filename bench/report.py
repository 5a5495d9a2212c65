#!/usr/bin/env python3
"""Joins engine_bench's and hf_peer.py's JSON into the `make bench` report.

Standard library only. Prints the ratio table and writes
<results-dir>/<date>-cpu-<machine tag>.md and .json, where the machine tag is
the CPU model and core count (no host name).

  report.py --engine engine.json --hf hf.json --results-dir bench/results \
            --command "make bench" [--kernels kernels_bench.txt]
"""

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys

GB = 1e9
# The project's goal for this benchmark (see bench/README.md).
GOAL_FLOOR_PRESET = "qwen2.5-0.5b"
GOAL_FLOOR_DTYPE = "bf16"
GOAL_FLOOR_FRACTION = 0.60


def run(command):
    try:
        return subprocess.run(command, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def machine_info():
    lscpu = run(["lscpu"])
    fields = {}
    for line in lscpu.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    model = fields.get("Model name", "unknown-cpu")
    cores = os.cpu_count() or 0
    flags = fields.get("Flags", "").split()
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
           if f in flags]
    slug = re.sub(r"\(r\)|\(tm\)|cpu|@.*$", "", model.lower())
    slug = re.sub(r"[^a-z0-9]+", "-", slug).strip("-") or "unknown-cpu"
    return {
        "cpu_model": model,
        "cores": cores,
        "threads_per_core": fields.get("Thread(s) per core", ""),
        "l3_cache": fields.get("L3 cache", ""),
        "hypervisor": fields.get("Hypervisor vendor", ""),
        "isa": isa,
        "tag": f"{slug}-{cores}c",
    }


def git_info(root):
    commit = run(["git", "-C", root, "rev-parse", "--verify", "--quiet", "HEAD"]) or "no commit yet"
    dirty = bool(run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"]))
    return {"commit": commit, "dirty": dirty}


def ratio(ours, theirs):
    return ours / theirs if ours and theirs else None


def fmt(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def build_rows(engine, hf):
    hf_by_key = {(r["preset"], r["dtype"]): r for r in hf["results"]}
    read_bw = engine["read_bandwidth_bytes_per_s"]
    rows = []
    for ours in engine["results"]:
        key = (ours["preset"], ours["dtype"])
        theirs = hf_by_key.get(key)
        weight_bytes = ours["weight_bytes"]
        model_bw = ours.get("read_bandwidth_bytes_per_s", read_bw)
        row = {"preset": key[0], "dtype": key[1], "weight_bytes": weight_bytes,
               "read_bandwidth": model_bw, "floor_tokens_per_s": model_bw / weight_bytes,
               "prefill": (ours["prefill_tokens_per_s"],
                           theirs["prefill_tokens_per_s"] if theirs else None),
               "decode": {}}
        for batch, figures in ours["decode"].items():
            hf_rate = None
            if theirs and batch in theirs["decode"]:
                hf_rate = theirs["decode"][batch]["tokens_per_s"]
            row["decode"][batch] = (figures["tokens_per_s"], hf_rate)
        rows.append(row)
    return rows


def render(rows, engine, hf, meta, kernels_text):
    read_bw = engine["read_bandwidth_bytes_per_s"]
    batches = sorted({b for r in rows for b in r["decode"]}, key=int)
    lines = []
    out = lines.append
    out(f"# litestage vs transformers, CPU, {meta['date']}")
    out("")
    out(f"- command: `{meta['command']}`")
    out(f"- git commit: `{meta['git']['commit']}`" + (" (working tree has changes)"
                                                      if meta["git"]["dirty"] else ""))
    m = meta["machine"]
    out(f"- CPU: {m['cpu_model']}, {m['cores']} cores ({m['threads_per_core']} thread/core), "
        f"L3 {m['l3_cache']}, ISA {', '.join(m['isa'])}"
        + (f", virtualized ({m['hypervisor']})" if m["hypervisor"] else ""))
    out(f"- load average at the end of the run (1/5/15 min): "
        f"{' / '.join(str(x) for x in meta['load_average_1_5_15_min'])} on {m['cores']} cores "
        f"(the benchmark itself accounts for about {engine['threads']})")
    out(f"- threads: litestage {engine['threads']}, transformers {hf['threads']} "
        f"(torch.set_num_threads); torch {hf['versions']['torch']}, "
        f"transformers {hf['versions']['transformers']}")
    s = engine["settings"]
    out(f"- prefill: one {s['prefill_tokens']}-token prompt; decode: {s['decode_prompt_tokens']}-token "
        f"prompts, {s['new_tokens']} greedy tokens each, tokens/s over the "
        f"{s['new_tokens'] - 1} steps after the first token; median of {s['reps']} runs "
        f"after {s['warmup']} warm-up")
    out("- weights: real shapes, random init (fixed seed), same safetensors files for both "
        "peers; bf16 rows run transformers in torch.bfloat16, f32 rows in float32")
    samples = engine["read_bandwidth_samples_bytes_per_s"]
    out(f"- read bandwidth (this run, {engine['threads']} threads, "
        f"{s['bandwidth_mb']} MiB buffer, {engine.get('read_bandwidth_probe_isa', '?')} loads, "
        f"{s['bandwidth_passes']} passes before and after each model): "
        f"median of all {read_bw / GB:.2f} GB/s (min {min(samples) / GB:.2f}, max {max(samples) / GB:.2f})")
    out("")
    out("## Throughput (tokens/s, higher is better)")
    out("")
    header = ["preset", "dtype", "prefill ours", "prefill HF", "ours/HF"]
    for b in batches:
        header += [f"decode b{b} ours", f"decode b{b} HF", "ours/HF"]
    out("| " + " | ".join(header) + " |")
    out("|" + "---|" * len(header))
    for r in rows:
        cells = [r["preset"], r["dtype"], fmt(r["prefill"][0], 1), fmt(r["prefill"][1], 1),
                 fmt(ratio(*r["prefill"]))]
        for b in batches:
            ours, theirs = r["decode"].get(b, (None, None))
            cells += [fmt(ours), fmt(theirs), fmt(ratio(ours, theirs))]
        out("| " + " | ".join(cells) + " |")
    out("")
    out("## Batch-1 decode against the memory floor")
    out("")
    out("Batch-1 decode reads every weight matrix once per token, so it cannot beat "
        "floor = read bandwidth / weight bytes, with the bandwidth probed right before and "
        "after that model's measurements (median). Achieved bandwidth = weight bytes x decode "
        "steps/s (at batch 8 one step makes 8 tokens).")
    out("")
    header = ["preset", "dtype", "weights MB", "read GB/s", "floor tok/s", "ours b1", "ours % of floor",
              "HF b1", "HF % of floor"] + [f"achieved GB/s b{b} (ours / HF)" for b in batches]
    out("| " + " | ".join(header) + " |")
    out("|" + "---|" * len(header))
    for r in rows:
        floor = r["floor_tokens_per_s"]
        ours1, hf1 = r["decode"].get("1", (None, None))
        cells = [r["preset"], r["dtype"], fmt(r["weight_bytes"] / 1e6, 1),
                 fmt(r["read_bandwidth"] / GB), fmt(floor),
                 fmt(ours1), fmt(100 * ours1 / floor, 0) + "%" if ours1 else "-",
                 fmt(hf1), fmt(100 * hf1 / floor, 0) + "%" if hf1 else "-"]
        for b in batches:
            ours, theirs = r["decode"].get(b, (None, None))
            steps = lambda rate: rate / int(b) * r["weight_bytes"] / GB if rate else None
            cells.append(f"{fmt(steps(ours))} / {fmt(steps(theirs))}")
        out("| " + " | ".join(cells) + " |")
    out("")
    out("## Goal")
    out("")
    for line in judge(rows):
        out(f"- {line}")
    out("")
    out("## Samples")
    out("")
    out("Every timed repetition (tokens/s), litestage then transformers:")
    out("")
    hf_by_key = {(r["preset"], r["dtype"]): r for r in hf["results"]}
    for ours in engine["results"]:
        theirs = hf_by_key.get((ours["preset"], ours["dtype"]), {})
        prefill_ours = [s["prefill_tokens"] / t for t in ours["prefill_seconds"]]
        prefill_hf = [s["prefill_tokens"] / t for t in theirs.get("prefill_seconds", [])]
        parts = [f"prefill {fmt_list(prefill_ours)} | {fmt_list(prefill_hf)}"]
        for b in batches:
            o = ours["decode"].get(b, {}).get("samples_tokens_per_s", [])
            h = theirs.get("decode", {}).get(b, {}).get("samples_tokens_per_s", [])
            parts.append(f"b{b} {fmt_list(o)} | {fmt_list(h)}")
        out(f"- {ours['preset']} {ours['dtype']}: " + "; ".join(parts))
    if kernels_text is not None:
        out("")
        out("## kernels_bench (short run)")
        out("")
        out("```")
        out(kernels_text.rstrip())
        out("```")
    return "\n".join(lines) + "\n"


def fmt_list(values):
    return "[" + ", ".join(f"{v:.1f}" for v in values) + "]"


def judge(rows):
    verdicts = []
    by_key = {(r["preset"], r["dtype"]): r for r in rows}
    goal = by_key.get((GOAL_FLOOR_PRESET, GOAL_FLOOR_DTYPE))
    if goal and "1" in goal["decode"]:
        fraction = goal["decode"]["1"][0] / goal["floor_tokens_per_s"]
        verdicts.append(
            f"{GOAL_FLOOR_PRESET} {GOAL_FLOOR_DTYPE} batch-1 decode at {100 * fraction:.0f}% of "
            f"the read-bandwidth floor (goal >= {100 * GOAL_FLOOR_FRACTION:.0f}%): "
            + ("MET" if fraction >= GOAL_FLOOR_FRACTION else "NOT MET"))
    else:
        verdicts.append(f"{GOAL_FLOOR_PRESET} {GOAL_FLOOR_DTYPE} batch 1 not measured")
    for preset in sorted({r["preset"] for r in rows}):
        row = by_key.get((preset, GOAL_FLOOR_DTYPE))
        if not row or "1" not in row["decode"]:
            continue
        r = ratio(*row["decode"]["1"])
        verdicts.append(f"{preset} {GOAL_FLOOR_DTYPE} batch-1 decode vs transformers: "
                        f"{fmt(r)}x " + ("(faster: MET)" if r and r > 1 else "(NOT MET)"))
    slower = []
    for row in rows:
        for name, pair in [("prefill", row["prefill"])] + [
                (f"decode b{b}", p) for b, p in sorted(row["decode"].items(), key=lambda x: int(x[0]))]:
            r = ratio(*pair)
            if r is not None and r < 1:
                slower.append(f"{row['preset']} {row['dtype']} {name} ({r:.2f}x)")
    verdicts.append("slower than transformers: " + (", ".join(slower) if slower else "nowhere"))
    return verdicts


def load_all(paths):
    documents = []
    for path in paths:
        with open(path) as f:
            documents.append(json.load(f))
    return documents


def merge(documents):
    """One report from several runs of the same peer (one model each): the
    results are concatenated and, for engine_bench, the read-bandwidth samples
    of every run are pooled and their median becomes the run's figure."""
    merged = dict(documents[0])
    merged["results"] = []
    for document in documents:
        for result in document["results"]:
            # Each model's floor uses the bandwidth probed around it.
            if "read_bandwidth_bytes_per_s" in document:
                result = dict(result, read_bandwidth_bytes_per_s=document["read_bandwidth_bytes_per_s"])
            merged["results"].append(result)
    if "read_bandwidth_samples_bytes_per_s" in merged:
        samples = [s for d in documents for s in d["read_bandwidth_samples_bytes_per_s"]]
        merged["read_bandwidth_samples_bytes_per_s"] = samples
        merged["read_bandwidth_bytes_per_s"] = statistics.median(samples)
        merged["read_bandwidth_per_model_bytes_per_s"] = [
            d["read_bandwidth_bytes_per_s"] for d in documents]
    return merged


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", required=True, nargs="+",
                        help="engine_bench JSON files (merged; bandwidth samples pooled)")
    parser.add_argument("--hf", required=True, nargs="+", help="hf_peer.py JSON files (merged)")
    parser.add_argument("--results-dir", required=True)
    parser.add_argument("--command", default="make bench")
    parser.add_argument("--kernels", help="kernels_bench output to include")
    parser.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = parser.parse_args()
    try:
        engine = merge(load_all(args.engine))
        hf = merge(load_all(args.hf))
    except (OSError, ValueError, KeyError) as error:
        sys.exit(f"report.py: cannot read the peer results: {error}")
    kernels_text = None
    if args.kernels and os.path.exists(args.kernels):
        with open(args.kernels) as f:
            kernels_text = f.read()
    now = datetime.datetime.now(datetime.timezone.utc)
    meta = {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "command": args.command,
            "git": git_info(args.root), "machine": machine_info(),
            # Other jobs on the machine skew both peers; the load at the end
            # of the run says whether there were any.
            "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()]}
    rows = build_rows(engine, hf)
    text = render(rows, engine, hf, meta, kernels_text)
    print(text)
    os.makedirs(args.results_dir, exist_ok=True)
    base = os.path.join(args.results_dir, f"{now.strftime('%Y-%m-%d')}-cpu-{meta['machine']['tag']}")
    with open(base + ".md", "w") as f:
        f.write(text)
    with open(base + ".json", "w") as f:
        json.dump({"meta": meta, "litestage": engine, "transformers": hf,
                   "goal": judge(rows)}, f, indent=2)
        f.write("\n")
    print(f"wrote {base}.md and {base}.json")


if __name__ == "__main__":
    main()
