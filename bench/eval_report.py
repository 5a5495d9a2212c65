#!/usr/bin/env python3
"""Renders a litestage-eval --json result as the markdown of bench/results.

  eval_report.py EVAL_JSON OUT_MD --command CMD --started ISO --commit REV

One table of every profile against full (n, accuracy and agreement with 95%
Wilson intervals, teacher-forced fidelity per stage, latency and speedup,
how latency was obtained), then one row per (profile, stage). Only the
standard library.
"""

import argparse
import json
import os
import platform


def cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def pct(x):
    return f"{100 * x:.1f}"


def with_ci(value, ci):
    return f"{pct(value)} [{pct(ci[0])}, {pct(ci[1])}]"


def profile_label(name):
    # File profiles are listed by path; the file name says which.
    return os.path.basename(name) if name.endswith(".json") else name


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("eval_json")
    parser.add_argument("out_md")
    parser.add_argument("--command", required=True)
    parser.add_argument("--started", required=True)
    parser.add_argument("--commit", required=True)
    args = parser.parse_args()
    with open(args.eval_json, encoding="utf-8") as f:
        result = json.load(f)
    profiles = result["profiles"]
    stages = [s["name"] for s in profiles[0]["stages"]]
    n = profiles[0]["n"]
    dataset = os.path.relpath(result["dataset"],
                              os.environ.get("LITESTAGE_SHARED", "/"))
    lines = [
        f"# litestage-eval trade-off: {os.path.basename(os.path.dirname(result['dataset']))}"
        f" ({n} held-out questions)",
        "",
        f"{args.started}, commit {args.commit}, {os.cpu_count()} CPUs "
        f"({cpu_model()}), load {os.getloadavg()[0]:.2f} at the end",
        "",
        "```",
        args.command,
        "```",
        "",
        f"model {result['model']}, pipeline {result['pipeline']}"
        f" (few-shot {'on' if result['few_shot'] else 'off'}), dataset"
        f" {dataset}, questions {result['offset']}..{result['offset'] + n - 1}"
        f", batch {result.get('batch', 0)}, latency measured alone on the first"
        f" {result.get('latency_questions') or n} per profile",
        "",
        "| profile | n | accuracy % [95% CI] | answered % | agreement with full % [95% CI] | "
        f"fidelity {'/'.join(stages)} | mean s | p90 s | speedup vs full | "
        "generated tokens per stage | early-exit rate per stage | latency: measured alone, prediction error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in profiles:
        fidelity = "/".join("-" if s["fidelity"] is None else f"{s['fidelity']:.3f}"
                            for s in p["stages"])
        tokens = "/".join(f"{s['mean_generated_tokens']:.1f}" for s in p["stages"])
        exits = "/".join(f"{s['early_exit_rate']:.2f}" for s in p["stages"])
        check = p.get("latency_check", {})
        latency = f"{p.get('latency_measured', p['n'])} measured"
        if check.get("n"):
            latency += (f", {100 * check['mean_abs_relative_error']:.1f}% per question"
                        f" (mean {100 * check['mean_relative_error']:+.1f}%)")
        lines.append(
            f"| {profile_label(p['profile'])} | {p['n']} | "
            f"{with_ci(p['accuracy'], p['accuracy_ci95'])} | {pct(p['answered_rate'])} | "
            f"{with_ci(p['agreement'], p['agreement_ci95'])} | {fidelity} | "
            f"{p['mean_seconds']:.3f} | {p['p90_seconds']:.3f} | {p['speedup']:.2f}x | "
            f"{tokens} | {exits} | {latency} |")
    lines += [
        "",
        "Per stage (mean over questions):",
        "",
        "| profile | stage | fidelity (hits/total) | mean s | p90 s | prefill s | decode s | "
        "prompt tokens | generated tokens | early-exit rate |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in profiles:
        for s in p["stages"]:
            fidelity = ("-" if s["fidelity"] is None else
                        f"{s['fidelity']:.3f} ({s['fidelity_hits']}/{s['fidelity_total']})")
            lines.append(
                f"| {profile_label(p['profile'])} | {s['name']} | {fidelity} | "
                f"{s['mean_seconds']:.3f} | {s['p90_seconds']:.3f} | "
                f"{s['mean_prefill_seconds']:.3f} | {s['mean_decode_seconds']:.3f} | "
                f"{s['mean_prompt_tokens']:.1f} | {s['mean_generated_tokens']:.1f} | "
                f"{s['early_exit_rate']:.2f} |")
    lines += [
        "",
        "Accuracy is against the dataset's labels (chance: 1 / choices);"
        " agreement counts questions where the profile extracts the same answer"
        " as full (both none counts as agreeing). Fidelity is teacher-forced:"
        " the share of full's generated tokens the profile predicts as its"
        " argmax on full's stage prompts and outputs (docs/evaluation.md)."
        " Speedup is full's mean end-to-end latency over the profile's, same"
        " questions, same run. Latency of the questions after the first"
        " measured ones is predicted from each profile's measured per-token"
        " prefill and decode costs times that question's real token counts;"
        " the last column is the two-fold check of that prediction on the"
        " measured questions.",
        "",
    ]
    with open(args.out_md, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
