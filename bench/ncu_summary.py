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
    total, count, dram = defaultdict(float), defaultdict(int), defaultdict(float)
    for row in csv.DictReader(lines):
        name = re.sub(r"\(.*", "", row["Kernel Name"])[:90]  # drop argument lists
        value = float(row["Metric Value"].replace(",", ""))
        if row.get("Metric Name") == "dram__bytes_read.sum":
            dram[name] += value * {"byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9}[row["Metric Unit"]]
            continue
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        scale = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3,
                 "ms": 1e3}[row["Metric Unit"]]
        total[name] += value * scale
        count[name] += 1
    s = sum(total.values())
    print(f"{sum(count.values())} kernels, {s / 1e3:.2f} ms of kernel time in all")
    print(f"{'us':>10} {'share':>6} {'calls':>6} {'us/call':>8} {'DRAM GB/s':>9}  kernel")
    for name, t in sorted(total.items(), key=lambda kv: -kv[1])[:top]:
        bw = f"{dram[name] / (t * 1e3):9.0f}" if dram.get(name) else f"{'':>9}"
        print(f"{t:>10.1f} {100 * t / s:>5.1f}% {count[name]:>6} {t / count[name]:>8.2f} {bw}  {name}")


if __name__ == "__main__":
    main()
