#!/usr/bin/env python3
"""Draws a budget search's report: per stage, metric against latency.

Usage: scripts/plot_search.py SEARCH_CSV OUT_DIR

SEARCH_CSV is the table litestage-search writes (SearchTableCsv in
engine/stages/search_report.h; docs/search.md, "Report"). For every stage
searched, OUT_DIR/<stage>.png shows each evaluated candidate of that stage
(skip budgets k labelled "k=N", early-exit grid points labelled
"window@threshold") at (mean end-to-end latency, metric) with its 95%
interval, full as a reference, the target as a horizontal line, and the
chosen candidates circled. Needs only python3 and matplotlib.
"""

import csv
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")  # Files only: no display needed.
import matplotlib.pyplot as plt  # noqa: E402


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    required = {"phase", "stage", "k", "window", "threshold", "metric",
                "metric_ci_low", "metric_ci_high", "target", "mean_latency_s",
                "chosen"}
    if not rows:
        raise ValueError(f"{path}: no rows")
    missing = required - set(rows[0].keys())
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    return rows


def file_name(stage):
    # Stage names come from pipeline files: keep them safe as file names.
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stage) or "stage"


def label(row):
    if row["phase"] == "skip":
        return f"k={row['k']}"
    if row["window"] in ("", "0"):
        return "no exit"
    return f"{row['window']}@{row['threshold']}"


def plot_stage(stage, rows, full, out_path):
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    styles = {"skip": ("o", "tab:blue", "skip budget k"),
              "early_exit": ("s", "tab:orange", "early exit (window@threshold)")}
    for phase, (marker, color, legend) in styles.items():
        # The early-exit phase's "no exit" row is the chosen budget again,
        # already drawn as a skip point.
        points = [r for r in rows if r["phase"] == phase and
                  not (phase == "early_exit" and r["window"] in ("", "0"))]
        if not points:
            continue
        x = [float(r["mean_latency_s"]) for r in points]
        y = [float(r["metric"]) for r in points]
        low = [yi - float(r["metric_ci_low"]) for yi, r in zip(y, points)]
        high = [float(r["metric_ci_high"]) - yi for yi, r in zip(y, points)]
        ax.errorbar(x, y, yerr=[low, high], fmt=marker, color=color,
                    ecolor=color, alpha=0.8, capsize=2, label=legend)
        for xi, yi, r in zip(x, y, points):
            ax.annotate(label(r), (xi, yi), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
        chosen = [(xi, yi) for xi, yi, r in zip(x, y, points)
                  if r["chosen"] == "1"]
        if chosen:
            ax.scatter([c[0] for c in chosen], [c[1] for c in chosen], s=220,
                       facecolors="none", edgecolors="red", linewidths=1.5,
                       label=f"chosen ({phase.replace('_', ' ')})", zorder=3)
    if full is not None:
        ax.scatter([float(full["mean_latency_s"])], [float(full["metric"])],
                   marker="*", s=140, color="black", label="full", zorder=4)
        ax.axhline(float(full["target"]), color="gray", linestyle="--",
                   linewidth=1, label="target")
    ax.set_xlabel("mean end-to-end latency per question (s)")
    ax.set_ylabel("metric")
    ax.set_title(f"stage {stage}: metric against latency")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)


def main(argv):
    if len(argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    csv_path, out_dir = argv[1], argv[2]
    try:
        rows = read_rows(csv_path)
    except (OSError, ValueError, csv.Error) as error:
        sys.stderr.write(f"plot_search: {error}\n")
        return 1
    os.makedirs(out_dir, exist_ok=True)
    full = next((r for r in rows if r["phase"] == "full"), None)
    stages = []
    for r in rows:
        if r["phase"] != "full" and r["stage"] not in stages:
            stages.append(r["stage"])
    for stage in stages:
        out_path = os.path.join(out_dir, file_name(stage) + ".png")
        plot_stage(stage, [r for r in rows if r["stage"] == stage], full,
                   out_path)
        print(out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
