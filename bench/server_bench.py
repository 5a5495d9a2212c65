#!/usr/bin/env python3
"""litestage-cli bench against a real litestage-server on the CPU.

Two measurements, each against its peer in the same run:

1. Profiles: `full` against a skipping profile (--profile, default even:8)
   at each concurrency (1, 8, 32): requests/s, generated tokens/s, p50/p99
   end-to-end and per stage, and the mean engine batch size (from the
   server's own litestage_batch_size histogram). Profiles alternate which
   goes first at each concurrency.
2. Skip-set batching: half the clients on `full` and half on the skipping
   profile at once, against a server started with --skip-set-batching=mixed
   and one with grouped.

Standard library only (litestage-cli does the load). Writes
<results-dir>/<date>-server-<model>-cpu.md and .json.

  server_bench.py --bin-dir build/bin --model M.gguf --questions obqa.jsonl \
      --results-dir bench/results --command "bench/server_bench.sh"
"""

import argparse
import datetime
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, args, batching, extra_flags=()):
        self.dir = tempfile.mkdtemp(prefix="server_bench.")
        self.metrics_port = free_port()
        port_file = os.path.join(self.dir, "port")
        self.log = open(os.path.join(self.dir, "server.log"), "w")
        self.process = subprocess.Popen(
            [os.path.join(args.bin_dir, "litestage-server"), f"--model={args.model}",
             "--host=127.0.0.1", "--port=0", f"--port-file={port_file}",
             f"--metrics-port={self.metrics_port}", f"--threads={args.threads}",
             f"--max-batch={args.max_batch}", "--max-queue=1024",
             f"--skip-set-batching={batching}", *extra_flags],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not os.path.exists(port_file):
            if self.process.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"server_bench: the server did not start; see {self.log.name}")
            time.sleep(0.1)
        with open(port_file) as f:
            self.target = f"127.0.0.1:{int(f.read())}"
        health = [os.path.join(args.bin_dir, "litestage-cli"), "health",
                  f"--target={self.target}", "--timeout=5"]
        while subprocess.run(health, capture_output=True, text=True).stdout.strip() != "SERVING":
            if self.process.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"server_bench: the server never became ready; see {self.log.name}")
            time.sleep(0.2)

    def metrics_text(self):
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        return urllib.request.urlopen(url, timeout=30).read().decode()

    def batch_totals(self):
        """(sum, count) of litestage_batch_size: sequences and steps so far."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=30).read().decode()
        total = re.search(r"^litestage_batch_size_sum (\S+)$", text, re.M)
        steps = re.search(r"^litestage_batch_size_count (\S+)$", text, re.M)
        return float(total.group(1)), float(steps.group(1))

    def close(self):
        self.process.terminate()
        if self.process.wait(timeout=120) != 0:
            sys.exit(f"server_bench: the server exited {self.process.returncode}; "
                     f"see {self.log.name}")
        self.log.close()


def bench_command(args, server, profile, concurrency, requests):
    return [os.path.join(args.bin_dir, "litestage-cli"), "bench",
            f"--target={server.target}", f"--questions={args.questions}",
            f"--concurrency={concurrency}", f"--requests={requests}",
            f"--max-new-tokens={args.stage_tokens}", f"--profile={profile}",
            "--timeout=3600", "--json"]


def run_benches(args, server, loads):
    """Runs one litestage-cli bench per (profile, concurrency, requests) in
    `loads` at the same time; returns their reports and the mean batch size
    over the whole run."""
    before = server.batch_totals()
    processes = [subprocess.Popen(bench_command(args, server, *load), stdout=subprocess.PIPE,
                                  text=True) for load in loads]
    reports = []
    for p in processes:
        out, _ = p.communicate()
        if p.returncode != 0:
            sys.exit(f"server_bench: litestage-cli bench exited {p.returncode}: {out}")
        reports.append(json.loads(out))
    after = server.batch_totals()
    steps = after[1] - before[1]
    mean_batch = (after[0] - before[0]) / steps if steps else 0.0
    return reports, mean_batch


def summarize(report, mean_batch):
    stages = {s["name"]: s["latency_seconds"] for s in report["stages"]}
    return {
        "requests": report["requests"],
        "ok": report["ok"],
        "wall_seconds": report["wall_seconds"],
        "requests_per_second": report["requests_per_second"],
        "generated_tokens_per_second": report["generated_tokens_per_second"],
        "latency_p50": report["latency_seconds"]["p50"],
        "latency_p99": report["latency_seconds"]["p99"],
        "stages": {name: {"p50": s["p50"], "p99": s["p99"]} for name, s in stages.items()},
        "mean_batch_size": mean_batch,
    }


def median_of(runs, key):
    return statistics.median(r[key] for r in runs)


def git(*command):
    try:
        return subprocess.run(["git", *command], capture_output=True, text=True,
                              check=False).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def add_server_arguments(parser, command):
    """The flags every real-server benchmark takes (Server reads them)."""
    parser.add_argument("--bin-dir", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--questions", required=True)
    parser.add_argument("--results-dir", required=True)
    parser.add_argument("--command", default=command)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--max-batch", type=int, default=64)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_server_arguments(parser, "bench/server_bench.sh")
    parser.add_argument("--profile", default="even:8")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests-per-client", type=int, default=2,
                        help="requests per concurrent client (at least 4 in all)")
    parser.add_argument("--mixed-concurrency", type=int, default=8,
                        help="clients of the skip-set batching run, half per profile")
    parser.add_argument("--stage-tokens", type=int, default=16)
    parser.add_argument("--reps", type=int, default=1)
    args = parser.parse_args()
    profiles = ["full", args.profile]
    levels = [int(c) for c in args.concurrency.split(",")]
    load_at_start = os.getloadavg()[0]

    # 1. Profiles at each concurrency.
    sweep = {}  # (profile, concurrency) -> [summaries]
    server = Server(args, "mixed")
    run_benches(args, server, [("full", 1, 1)])  # warm-up
    for rep in range(args.reps):
        for i, concurrency in enumerate(levels):
            requests = max(4, args.requests_per_client * concurrency)
            order = profiles if (rep + i) % 2 == 0 else profiles[::-1]
            for profile in order:
                (report,), mean_batch = run_benches(args, server,
                                                    [(profile, concurrency, requests)])
                summary = summarize(report, mean_batch)
                sweep.setdefault((profile, concurrency), []).append(summary)
                print(f"  {profile:>8} c={concurrency:<3} {summary['requests_per_second']:.3f} req/s "
                      f"p50 {summary['latency_p50']:.2f} s, mean batch "
                      f"{mean_batch:.1f}", flush=True)
    server.close()

    # 2. Skip-set batching: both profiles at once.
    half = max(1, args.mixed_concurrency // 2)
    mixed_requests = max(4, args.requests_per_client * half)
    batching = {}  # mode -> [{"requests_per_second", "per_profile", ...}]
    for rep in range(args.reps):
        modes = ["mixed", "grouped"] if rep % 2 == 0 else ["grouped", "mixed"]
        for mode in modes:
            server = Server(args, mode)
            run_benches(args, server, [("full", 1, 1)])
            reports, mean_batch = run_benches(
                args, server, [(p, half, mixed_requests) for p in profiles])
            server.close()
            wall = max(r["wall_seconds"] for r in reports)
            entry = {
                "requests": sum(r["requests"] for r in reports),
                "wall_seconds": wall,
                "requests_per_second": sum(r["requests"] for r in reports) / wall,
                "mean_batch_size": mean_batch,
                "per_profile": {p: summarize(r, mean_batch) for p, r in zip(profiles, reports)},
            }
            batching.setdefault(mode, []).append(entry)
            print(f"  {mode:>8}: {entry['requests_per_second']:.3f} req/s, mean batch "
                  f"{mean_batch:.1f}", flush=True)

    date = datetime.date.today().isoformat()
    model_name = os.path.basename(args.model).removesuffix(".gguf")
    name = f"{date}-server-{model_name.lower()}-cpu"
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    lines = [
        f"# litestage-server under litestage-cli bench ({date})",
        "",
        f"commit {git('rev-parse', '--short', 'HEAD')}, {os.cpu_count()} CPUs ({cpu}), "
        f"server threads {args.threads}, load {load_at_start:.2f} at start",
        "",
        "```",
        args.command,
        "```",
        "",
        f"Model {os.path.basename(args.model)}, pipeline tinythinker (recall -> analysis per "
        f"option -> summary, one-example few-shot), OBQA test questions (4 options), "
        f"{args.stage_tokens} new tokens per stage cap, greedy, --max-batch {args.max_batch}. "
        f"Medians of {args.reps} rep(s); each row is one `litestage-cli bench` run "
        f"({args.requests_per_client} requests per client, at least 4).",
        "",
        f"## `full` against `{args.profile}`",
        "",
        "| concurrency | profile | req/s | gen tok/s | p50 s | p99 s | "
        + " | ".join(f"{s} p50/p99 s" for s in ("recall", "analysis", "summary"))
        + " | mean batch | req/s vs full | p50 vs full |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    results = {"date": date, "commit": git("rev-parse", "HEAD"), "command": args.command,
               "model": args.model, "cpu": cpu, "cpus": os.cpu_count(), "threads": args.threads,
               "load_at_start": load_at_start, "stage_tokens": args.stage_tokens,
               "profiles": profiles, "sweep": [], "batching": batching}
    for concurrency in levels:
        full_runs = sweep[("full", concurrency)]
        for profile in profiles:
            runs = sweep[(profile, concurrency)]
            rps = median_of(runs, "requests_per_second")
            p50 = median_of(runs, "latency_p50")
            stage_cells = []
            for stage in ("recall", "analysis", "summary"):
                stage_cells.append("{:.2f} / {:.2f}".format(
                    statistics.median(r["stages"][stage]["p50"] for r in runs),
                    statistics.median(r["stages"][stage]["p99"] for r in runs)))
            lines.append(
                f"| {concurrency} | {profile} | {rps:.3f} | "
                f"{median_of(runs, 'generated_tokens_per_second'):.1f} | {p50:.2f} | "
                f"{median_of(runs, 'latency_p99'):.2f} | " + " | ".join(stage_cells) +
                f" | {median_of(runs, 'mean_batch_size'):.1f} | "
                f"{rps / median_of(full_runs, 'requests_per_second'):.2f}x | "
                f"{median_of(full_runs, 'latency_p50') / p50:.2f}x |")
            results["sweep"].append({"profile": profile, "concurrency": concurrency,
                                     "runs": runs})
    mixed_rps = median_of(batching["mixed"], "requests_per_second")
    lines += [
        "",
        f"## Skip-set batching: `full` and `{args.profile}` at once",
        "",
        f"{half} clients on each profile ({mixed_requests} requests each) against a fresh "
        "server per mode. mixed: every step runs all sequences, each sub-layer over the rows "
        "that execute it; grouped: a step runs one skip set's sequences, the skip sets "
        "taking turns.",
        "",
        "| batching | req/s | mean batch | full p50 s | "
        f"{args.profile} p50 s | req/s vs mixed |",
        "|---|---|---|---|---|---|",
    ]
    for mode in ("mixed", "grouped"):
        runs = batching[mode]
        rps = median_of(runs, "requests_per_second")
        lines.append(
            f"| {mode} | {rps:.3f} | {median_of(runs, 'mean_batch_size'):.1f} | " +
            " | ".join(f"{statistics.median(r['per_profile'][p]['latency_p50'] for r in runs):.2f}"
                       for p in profiles) + f" | {rps / mixed_rps:.2f}x |")
    text = "\n".join(lines) + "\n"
    os.makedirs(args.results_dir, exist_ok=True)
    with open(os.path.join(args.results_dir, name + ".md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.results_dir, name + ".json"), "w") as f:
        json.dump(results, f, indent=1)
    print(text)


if __name__ == "__main__":
    main()
