#!/usr/bin/env python3
"""Plot bench results for docs/performance.md.

    python3 scripts/plot_bench.py [ENGINE_CSV] [SPEC_CSV]   (default: docs/data/*.csv)

Writes docs/img/tree_cost.png (forward cost over T tree nodes relative to T=1) and
docs/img/spec_speedup.png (speculative / target-only tokens per second, best tree per drafter).
Needs matplotlib (pip install matplotlib)."""
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
engine_csv = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "docs/data/engine.csv")
spec_csv = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "docs/data/spec.csv")
out = os.path.join(ROOT, "docs/img")
os.makedirs(out, exist_ok=True)

eng = {r["metric"]: r["value"] for r in csv.DictReader(open(engine_csv))}
ts = [1, 2, 4, 8, 16, 32, 64]
cost = [float(eng[f"tree_cost_T{t}"]) for t in ts]
plt.figure(figsize=(5.5, 3.6))
plt.plot(ts, cost, "o-", label="specd (measured)")
plt.plot(ts, ts, ":", color="grey", label="T x (no batching gain)")
if all(f"tree_floor_T{t}" in eng for t in ts):
    floor = [max(1.0, float(eng[f"tree_floor_T{t}"])) for t in ts]
    plt.plot(ts, floor, "--", color="tab:green", lw=1,
             label="int8 dot-product floor (VNNI peak, measured)")
plt.axhline(1.5, color="tab:red", ls="--", lw=1, label="issue target at T=16 (1.5x)")
plt.xscale("log", base=2)
plt.yscale("log", base=2)
plt.xticks(ts, [str(t) for t in ts])
plt.xlabel("tree nodes in one forward (T)")
plt.ylabel("cost relative to T=1")
plt.title("Forward cost vs tree width (SmolLM2-135M Q4_1, 2 threads)", fontsize=9)
plt.legend(fontsize=8)
plt.tight_layout()
plt.savefig(os.path.join(out, "tree_cost.png"), dpi=110)

rows = list(csv.DictReader(open(spec_csv)))
prompts = ["chat", "code", "summary"]
fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), sharey=True)
for ax, temp in zip(axes, ["0.0", "0.8"]):
    drafters = sorted({r["drafter"] for r in rows})
    width = 0.8 / len(drafters)
    for i, d in enumerate(drafters):
        best = []
        for p in prompts:
            rs = [float(r["speedup"]) for r in rows if r["temp"] == temp and r["prompt"] == p
                  and r["drafter"] == d]
            best.append(max(rs) if rs else 0)
        ax.bar([k + i * width for k in range(len(prompts))], best, width, label=d)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks([k + width * (len(drafters) - 1) / 2 for k in range(len(prompts))])
    ax.set_xticklabels(prompts)
    ax.set_title(f"temperature {temp} (best tree per drafter)", fontsize=9)
axes[0].set_ylabel("speedup over target-only")
axes[0].legend(fontsize=8)
plt.tight_layout()
plt.savefig(os.path.join(out, "spec_speedup.png"), dpi=110)
print("wrote", os.path.join(out, "tree_cost.png"), "and", os.path.join(out, "spec_speedup.png"))
