#!/usr/bin/env python3
"""The KV prefix cache on a real litestage-server: the same tinythinker load
against a server started with --prefix-cache=false and one with
--prefix-cache=true, measured in the same run.

Both servers are up at once but only one is loaded at a time; they take
turns round by round (off on, then on off, ...), and every round sends
questions no earlier round sent (a fresh slice of the question file), so
what the cache reuses is what a server sees in production: the few-shot
prefix every request shares and each stage's prompt, which begins with the
previous stage's. Reports per configuration and concurrency: p50 latency,
requests/s, and prompt tokens computed and reused per request (from the
server's litestage_prefix_cache_tokens_total); checks that both servers
answered every question the same. Standard library only. Writes
<results-dir>/<date>-prefix-cache-<model>-cpu.md and .json.

  prefix_cache_bench.py --bin-dir build/bin --model M.gguf \\
      --questions obqa/test.jsonl --results-dir bench/results
"""

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server_bench import Server, add_server_arguments, git  # noqa: E402


def prompt_tokens(server):
    """(hit, computed) prompt tokens over every stage so far."""
    text = server.metrics_text()
    totals = {"hit": 0.0, "computed": 0.0}
    for m in re.finditer(r'^litestage_prefix_cache_tokens_total\{[^}]*result="(\w+)"[^}]*\} (\S+)$',
                         text, re.M):
        totals[m.group(1)] += float(m.group(2))
    return totals["hit"], totals["computed"]


def run(args, server, questions_file, concurrency, count):
    before = prompt_tokens(server)
    command = [os.path.join(args.bin_dir, "litestage-cli"), "bench", f"--target={server.target}",
               f"--questions={questions_file}", f"--concurrency={concurrency}",
               f"--requests={count}", "--timeout=3600", "--json"]
    if args.stage_tokens > 0:
        command.append(f"--max-new-tokens={args.stage_tokens}")
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"prefix_cache_bench: litestage-cli bench failed: {out.stdout}{out.stderr}")
    report = json.loads(out.stdout)
    after = prompt_tokens(server)
    return {"latency_p50": report["latency_seconds"]["p50"],
            "latency_mean": report["latency_seconds"]["mean"],
            "requests_per_second": report["requests_per_second"],
            "hit_per_request": (after[0] - before[0]) / count,
            "computed_per_request": (after[1] - before[1]) / count,
            "ok": report["ok"], "requests": report["requests"]}


def answers(args, server, questions):
    """The answer letter of each question, one Reason at a time."""
    out = []
    for q in questions:
        command = [os.path.join(args.bin_dir, "litestage-cli"), "reason", f"--target={server.target}",
                   f"--question={q['question']}", "--choices=" + "|".join(q["choices"]), "--json"]
        if args.stage_tokens > 0:
            command.append(f"--max-new-tokens={args.stage_tokens}")
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"prefix_cache_bench: reason failed: {result.stderr}")
        response = json.loads(result.stdout)
        out.append([s["output"] for s in response["stages"]])
    return out


def load_questions(path, limit):
    items = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            if "question" in row and isinstance(row["question"], dict):  # OBQA/CSQA
                stem = row["question"]["stem"]
                choices = [c["text"] for c in row["question"]["choices"]]
            else:
                stem, choices = row["question"], row["choices"]
            items.append({"question": stem, "choices": choices})
            if len(items) >= limit:
                break
    return items


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_server_arguments(parser, "bench/prefix_cache_bench.sh")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-round", default="6,16",
                        help="questions per round at each concurrency")
    parser.add_argument("--stage-tokens", type=int, default=0,
                        help="cap per stage; 0 keeps the pipeline's")
    parser.add_argument("--check-questions", type=int, default=4)
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    per_round = [int(n) for n in args.per_round.split(",")]
    needed = args.check_questions + sum(args.rounds * 2 * n for n in per_round)
    questions = load_questions(args.questions, needed)
    if len(questions) < needed:
        sys.exit(f"prefix_cache_bench: {args.questions} has {len(questions)} questions, need {needed}")
    work = tempfile.mkdtemp(prefix="prefix_cache_bench.")
    next_question = args.check_questions

    def slice_file(n):
        nonlocal next_question
        path = os.path.join(work, f"q{next_question}.jsonl")
        with open(path, "w") as f:
            for q in questions[next_question:next_question + n]:
                f.write(json.dumps(q) + "\n")
        next_question += n
        return path

    servers = {"off": Server(args, "auto", ["--prefix-cache=false"]),
               "on": Server(args, "auto", ["--prefix-cache=true"])}
    try:
        check = questions[:args.check_questions]
        same = answers(args, servers["off"], check) == answers(args, servers["on"], check)
        results = {}
        for concurrency, n in zip(concurrencies, per_round):
            runs = {"off": [], "on": []}
            for r in range(args.rounds):
                order = ["off", "on"] if r % 2 == 0 else ["on", "off"]
                for name in order:
                    runs[name].append(run(args, servers[name], slice_file(n), concurrency, n))
                print(f"concurrency {concurrency}: round {r + 1}/{args.rounds} done", flush=True)
            results[concurrency] = runs
    finally:
        for s in servers.values():
            s.close()

    def med(rs, key):
        return statistics.median(x[key] for x in rs)

    today = datetime.date.today().isoformat()
    model_name = os.path.basename(args.model).lower().replace(".gguf", "")
    name = f"{today}-prefix-cache-{model_name}-cpu"
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "unknown")
    lines = [f"# Prefix cache on a real server ({today})", "",
             f"commit {git('rev-parse', '--short', 'HEAD')}, {os.cpu_count()} CPUs ({cpu}), "
             f"{args.threads} threads, load {open('/proc/loadavg').read().split()[0]}", "",
             "```", f"{args.command}", "```", "",
             f"Model `{args.model}`, tinythinker with its few-shot prefix, default profile, "
             f"stage tokens {'pipeline default' if args.stage_tokens == 0 else args.stage_tokens}. "
             f"{args.rounds} rounds per concurrency, the two servers taking turns, every round "
             "on questions no earlier round sent. Medians over rounds.", "",
             f"Same stage outputs from both servers on {len(check)} questions: "
             f"{'yes' if same else 'NO'}.", "",
             "| concurrency | prefix cache | p50 latency s | requests/s | prompt tokens computed / request | reused / request | speedup (p50) |",
             "|---|---|---|---|---|---|---|"]
    for concurrency, runs in results.items():
        base = med(runs["off"], "latency_p50")
        for cfg in ("off", "on"):
            rs = runs[cfg]
            lines.append(f"| {concurrency} | {cfg} | {med(rs, 'latency_p50'):.3f} | "
                         f"{med(rs, 'requests_per_second'):.3f} | {med(rs, 'computed_per_request'):.0f} | "
                         f"{med(rs, 'hit_per_request'):.0f} | {base / med(rs, 'latency_p50'):.2f}x |")
    lines.append("")
    os.makedirs(args.results_dir, exist_ok=True)
    with open(os.path.join(args.results_dir, name + ".md"), "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(args.results_dir, name + ".json"), "w") as f:
        json.dump({"same_outputs": same, "results": {str(c): r for c, r in results.items()}}, f,
                  indent=1)
    print("\n".join(lines))
    if not same:
        sys.exit("prefix_cache_bench: the servers answered differently")


if __name__ == "__main__":
    main()
