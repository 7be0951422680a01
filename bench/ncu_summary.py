#!/usr/bin/env python3
"""Sum the kernel times of an `ncu --metrics gpu__time_duration.sum --csv` log per kernel
name and print the largest shares (used by scripts/gpu_run.sh profile).

    python3 bench/ncu_summary.py profile.csv [--top 40]
"""
import csv
import re
import sys
from collections import defaultdict


def main():
    path = sys.argv[1]
    top = int(sys.argv[sys.argv.index("--top") + 1]) if "--top" in sys.argv else 40
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]  # ncu prints its own notes before the CSV
    total, count = defaultdict(float), defaultdict(int)
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = re.sub(r"\(.*", "", row["Kernel Name"])[:90]  # drop argument lists
        scale = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}[row["Metric Unit"]]
        total[name] += float(row["Metric Value"].replace(",", "")) * scale
        count[name] += 1
    s = sum(total.values())
    print(f"{sum(count.values())} kernels, {s / 1e3:.2f} ms of kernel time in all")
    print(f"{'us':>10} {'share':>6} {'calls':>6}  kernel")
    for name, t in sorted(total.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{t:>10.1f} {100 * t / s:>5.1f}% {count[name]:>6}  {name}")


if __name__ == "__main__":
    main()
