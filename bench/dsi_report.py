#!/usr/bin/env python3
"""Summarise bench/dsi.sh's CSVs: per (ratio, P) cell the tokens/s of ar, si, async and dsi at
each W (mean over the prompts), dsi's best ratio over max(ar, si, async), and the real-model
table. With matplotlib, also docs/img/dsi.png.

    bench/dsi_report.py bench/out/dsi.csv bench/out/dsi_real.csv"""
import csv
import os
import sys
from collections import defaultdict
from statistics import median


def mean(xs):
    return sum(xs) / len(xs) if xs else 0.0


def main():
    rows = list(csv.DictReader(open(sys.argv[1])))
    real = list(csv.DictReader(open(sys.argv[2]))) if len(sys.argv) > 2 else []
    bad = [r for r in rows + real if r["identical"] != "1"]
    tps = defaultdict(list)
    ar = defaultdict(list)
    for r in rows:
        if r["mode"] == "ar":
            ar[r["ratio"]].append(float(r["tok_s"]))
        else:
            tps[(r["ratio"], r["p"], r["mode"], int(r["workers"]))].append(float(r["tok_s"]))
    ratios = sorted({k[0] for k in tps}, key=float)
    ps = sorted({k[1] for k in tps}, key=float)
    ws = sorted({k[3] for k in tps if k[2] == "dsi"})
    print("\nEMULATED latencies (bench/dsi.sh header); tokens/s, mean over prompts")
    head = f"{'ratio':>5} {'P':>5} {'ar':>7} {'si':>7} {'async':>7} " + " ".join(
        f"{'dsi W=' + str(w):>9}" for w in ws) + f" {'dsi/best':>9}"
    print(head)
    cells = []
    for ra in ratios:
        for p in ps:
            a = mean(ar[ra])
            si = mean(tps[(ra, p, "si", 1)])
            asy = mean(tps[(ra, p, "async", 1)])
            d = [mean(tps[(ra, p, "dsi", w)]) for w in ws]
            best_other = max(a, si, asy)
            ratio = max(d) / best_other if best_other else 0
            cells.append((ra, p, a, si, asy, d, ratio))
            print(f"{ra:>5} {p:>5} {a:7.1f} {si:7.1f} {asy:7.1f} " +
                  " ".join(f"{x:9.1f}" for x in d) + f" {ratio:9.2f}")
    if real:
        print("\nNO emulation: real default model, W = 2; tokens/s, median of the repetitions;"
              " vs ar: median of the ratios within a repetition")
        print("(prompt 0 code, 1 history: n-gram drafter; 2 chat, 3 summary (bench/spec's ChatML "
              "prompts): random drafter, never right)")
        by = defaultdict(list)
        per_rep = {}
        for r in real:
            runs = by[(r["mode"], r["prompt"])]
            runs.append(float(r["tok_s"]))
            # files without a rep column (before 2026-12-02) ran the repetitions in order
            per_rep[(r["mode"], r["prompt"], r.get("rep", str(len(runs))))] = runs[-1]
        prompts = sorted({r["prompt"] for r in real})

        def vs_ar(m, p):
            q = [v / per_rep[("ar", p, rep)] for (mm, pp, rep), v in per_rep.items()
                 if mm == m and pp == p and per_rep.get(("ar", p, rep))]
            return median(q) if q else 0

        for m in ("ar", "si", "async", "dsi"):
            print(f"  {m:6} " + " ".join(f"{median(by[(m, p)]):7.1f}" for p in prompts) +
                  ("" if m == "ar" else "   vs ar: " + " ".join(
                      f"{vs_ar(m, p):5.2f}" for p in prompts)))
    print(f"\ntoken check: {len(rows) + len(real) - len(bad)}/{len(rows) + len(real)} runs "
          "identical to target-only")
    if not ratios:
        return 1 if bad else 0
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 1 if bad else 0
    fig, axes = plt.subplots(1, len(ratios), figsize=(4.2 * len(ratios), 3.6), squeeze=False)
    for ax, ra in zip(axes[0], ratios):
        for p in ps:
            c = [x for x in cells if x[0] == ra and x[1] == p][0]
            base = max(c[2], c[3], c[4])
            ax.plot(ws, [x / base for x in c[5]], marker="o", label=f"P={p}")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_title(f"target/drafter latency {ra}x (emulated)")
        ax.set_xlabel("workers (dsi chunks in flight)")
        ax.set_ylabel("dsi / best of ar, si, async")
        ax.set_xticks(ws)
        ax.legend()
    fig.tight_layout()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    fig.savefig(os.path.join(root, "docs/img/dsi.png"), dpi=110)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
