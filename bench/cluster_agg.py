#!/usr/bin/env python3
"""Aggregate one bench/cluster.sh run: RAW_DIR -> a tidy CSV (section,config,metric,value,unit)
plus tables and the issue's ratios on stdout. Only the standard library is needed.

   bench/cluster_agg.py RAW_DIR CSV

Definitions (the same for the cluster and in-process, all on the client side):
  tokens/s      (tokens - 1) / (arrival of the last token - arrival of the first)
  TTFT          first token's arrival: since the request was sent (cluster: includes
                tokenization, placement, OpenSession on the worker and the drafter, the prompt
                transfer and prefill) or since generation began (in-process: the model is
                already loaded, as in a server)
  inter-token   gap between consecutive tokens as the client receives them; tokens delivered
  latency       together (one TokenEvent, or one in-process step) count a gap of ~0
  per delivery  tokens per TokenEvent (cluster) or per verification step (in-process)
"""
import csv
import glob
import os
import statistics
import sys


def pct(xs, q):
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))
    return s[k]


def read_timing(path):
    """Token arrival times (ms), tokens per delivery, summary dict."""
    times, per_event, summ = [], [], {}
    with open(path) as f:
        for line in f:
            if line.startswith("# summary"):
                for kv in line.split()[2:]:
                    k, _, v = kv.partition("=")
                    try:
                        summ[k] = float(v)
                    except ValueError:
                        summ[k] = v
                continue
            if line.startswith("#") or not line.strip():
                continue
            t, n = line.split()
            n = int(n)
            times += [float(t)] * n
            per_event.append(n)
    return times, per_event, summ


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    raw, out_csv = sys.argv[1], sys.argv[2]
    meta = {}
    with open(os.path.join(raw, "meta.txt")) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            meta[k] = v
    rows = [("meta", k, "", v, "") for k, v in meta.items()]
    reps = int(meta["reps"])

    print()
    print(f"CPU: {meta['cpu']}, {meta['vcpus']} vCPUs ({meta['simd']}); load average "
          f"{meta['load_start']} at the start, {meta.get('load_end', '?')} at the end")
    print("This machine is shared with other work: compare only ratios taken within this run.")

    # ---- floors ----
    floor = {}
    with open(os.path.join(raw, "floor.txt")) as f:
        for line in f:
            w = line.split()
            if w[0] == "perftest":
                floor[f"perftest_{w[1]}_p50_us"] = float(w[2])
                floor[f"perftest_{w[1]}_mean_us"] = float(w[3])
            elif w[0] == "wake":
                floor[f"wake_{w[1]}_p50_us"] = float(w[2])
                floor[f"wake_{w[1]}_mean_us"] = float(w[3])
                floor[f"wake_{w[1]}_p99_us"] = float(w[4])
    for k, v in floor.items():
        rows.append(("floor", k.rsplit("_", 2)[0], k.rsplit("_", 2)[1] + "_one_way", v, "us"))

    # ---- latency ----
    configs = [("cluster", "ar"), ("local", "ar"), ("cluster", "si"), ("local", "si"),
               ("cluster", "async")]
    prompts = {0: "chat: count from 1 to 40", 1: "code: def fibonacci(n):"}
    lat, lat_tps = {}, {}
    print(f"\n## Latency: {meta['n_gen']} tokens, greedy, ngram:3:2 + chain:4, median of "
          f"{reps} interleaved runs (inter-token percentiles over all their tokens)\n")
    print("| prompt | mode | where | tokens/s | TTFT ms | inter-token p50 ms | p99 ms | "
          "tokens per delivery | accepted/step |")
    print("|---|---|---|---|---|---|---|---|---|")
    identical = True
    for p, pname in prompts.items():
        ref = None
        for where, mode in configs:
            tps, ttft, itl, tpe, acc = [], [], [], [], []
            for rep in range(1, reps + 1):
                base = os.path.join(raw, "t", f"lat_{rep}_{p}_{where}_{mode}")
                times, per_event, summ = read_timing(base + ".txt")
                with open(base + ".out", "rb") as f:
                    text = f.read()
                if ref is None:
                    ref = text
                elif text != ref:
                    identical = False
                    print(f"OUTPUT DIFFERS: {base}.out", file=sys.stderr)
                tps.append((len(times) - 1) / ((times[-1] - times[0]) / 1e3))
                ttft.append(times[0])
                itl += [b - a for a, b in zip(times, times[1:])]
                # in-process: the tokens of one verification step arrive together
                tpe.append(len(times) / (summ["steps"] if where == "local" else len(per_event)))
                if summ.get("steps"):
                    acc.append(summ.get("accepted", 0) / summ["steps"])
            r = {"tokens_per_s": statistics.median(tps), "ttft_ms": statistics.median(ttft),
                 "itl_p50_ms": pct(itl, 50), "itl_p99_ms": pct(itl, 99),
                 "tokens_per_delivery": statistics.median(tpe),
                 "accepted_per_step": statistics.median(acc) if acc else 0.0}
            lat[(p, where, mode)] = r
            lat_tps[(p, where, mode)] = tps
            cfg = f"p{p}_{where}_{mode}"
            for k, v in r.items():
                rows.append(("latency", cfg, k, round(v, 4),
                             "tok/s" if k == "tokens_per_s" else "ms" if "ms" in k else ""))
            for i, v in enumerate(tps):
                rows.append(("latency_raw", cfg, f"tokens_per_s_rep{i + 1}", round(v, 3), "tok/s"))
            print(f"| {pname} | {mode} | {'cluster' if where == 'cluster' else 'in-process'} | "
                  f"{r['tokens_per_s']:.1f} | {r['ttft_ms']:.1f} | {r['itl_p50_ms']:.2f} | "
                  f"{r['itl_p99_ms']:.2f} | {r['tokens_per_delivery']:.2f} | "
                  f"{r['accepted_per_step']:.2f} |")
    # where a step's time goes: client-side step time vs the coordinator's chunk round trip and
    # the worker's compute (both from the session summary), medians over the runs
    print("\n## Per verification step (ms; medians over the runs)\n")
    print("| prompt | mode | where | step | worker compute | network path (round trip - "
          "compute) | waiting for the drafter (Commit -> its answer) | rest (step - round trip - "
          "drafter wait: client stream, scheduling) |")
    print("|---|---|---|---|---|---|---|---|")
    fwd = {}  # (p, where, mode) -> the target forward per step: worker compute / in-process verify
    n_steps = {}  # (p, where, mode, rep) -> verification steps of that run
    for p, pname in prompts.items():
        for where, mode in configs:
            step, comp, net, dwait, ver_l = [], [], [], [], []
            for rep in range(1, reps + 1):
                times, _, summ = read_timing(
                    os.path.join(raw, "t", f"lat_{rep}_{p}_{where}_{mode}.txt"))
                steps = int(summ["steps"])
                n_steps[(p, where, mode, rep)] = steps
                step.append((times[-1] - times[0]) / max(1, steps - 1))
                if where == "cluster":
                    comp.append(summ["compute_ms_mean"])
                    net.append(summ["chunk_rtt_ms_mean"] - summ["compute_ms_mean"])
                    dwait.append(summ["draft_wait_ms_mean"])
                else:
                    ver_l.append(summ["verify_ms"] / steps)
            st = statistics.median(step)
            cfg = f"p{p}_{where}_{mode}"
            rows.append(("step", cfg, "step_ms", round(st, 4), "ms"))
            if where == "cluster":
                c, n, dw = statistics.median(comp), statistics.median(net), statistics.median(dwait)
                fwd[(p, where, mode)] = c
                rows += [("step", cfg, "compute_ms", round(c, 4), "ms"),
                         ("step", cfg, "network_ms", round(n, 4), "ms"),
                         ("step", cfg, "draft_wait_ms", round(dw, 4), "ms")]
                print(f"| {pname} | {mode} | cluster | {st:.2f} | {c:.2f} | {n:.2f} | {dw:.2f} | "
                      f"{st - c - n - dw:.2f} |")
            else:
                ver = statistics.median(ver_l)
                fwd[(p, where, mode)] = ver
                rows.append(("step", cfg, "verify_ms", round(ver, 4), "ms"))
                print(f"| {pname} | {mode} | in-process | {st:.2f} | {ver:.2f} (verify; the rest "
                      f"of the step drafts) | - | - | - |")
    print(f"\noutputs of every run of a prompt (cluster and in-process, all modes) identical: "
          f"{'yes' if identical else 'NO'}")
    rows.append(("latency", "all", "outputs_identical", int(identical), ""))

    # ---- si with one compute thread on each side ----
    print("\n## si with one compute thread on each side (worker threads = 1, in-process -t 1)\n")
    print("| prompt | cluster tokens/s | in-process tokens/s | ratio | cluster worker compute "
          "per step ms | in-process verify per step ms |")
    print("|---|---|---|---|---|---|")
    si1 = {}
    for p, pname in prompts.items():
        v = {}
        for where in ("cluster", "local"):
            tps, per = [], []
            for rep in range(1, reps + 1):
                times, _, summ = read_timing(
                    os.path.join(raw, "t", f"t1_{rep}_{p}_{where}_si.txt"))
                tps.append((len(times) - 1) / ((times[-1] - times[0]) / 1e3))
                per.append(summ["compute_ms_mean"] if where == "cluster"
                           else summ["verify_ms"] / summ["steps"])
            v[where] = (statistics.median(tps), statistics.median(per))
        r = v["cluster"][0] / v["local"][0]
        si1[p] = r
        rows += [("latency_1thread", f"p{p}_cluster_si", "tokens_per_s", round(v["cluster"][0], 3),
                  "tok/s"),
                 ("latency_1thread", f"p{p}_local_si", "tokens_per_s", round(v["local"][0], 3),
                  "tok/s"),
                 ("ratio", f"p{p}", "si_cluster_over_local_1thread", round(r, 3), "")]
        print(f"| {pname} | {v['cluster'][0]:.1f} | {v['local'][0]:.1f} | {r:.2f} | "
              f"{v['cluster'][1]:.2f} | {v['local'][1]:.2f} |")

    # ---- per-chunk overhead ----
    def overhead(prefix):
        ovh, rtt, comp = [], [], []
        for rep in range(1, reps + 1):
            _, _, s = read_timing(os.path.join(raw, "t", f"{prefix}_{rep}.txt"))
            if s.get("n_prompt") != 1:
                print(f"warning: overhead run {prefix} {rep}: prompt of {s.get('n_prompt')} "
                      "tokens", file=sys.stderr)
            rtt.append(s["chunk_rtt_ms_mean"] * 1e3)
            comp.append(s["compute_ms_mean"] * 1e3)
            ovh.append((s["chunk_rtt_ms_mean"] - s["compute_ms_mean"]) * 1e3)
        return ovh, rtt, comp

    ovh, rtt, comp = overhead("ovh")
    ovh_np, _, _ = overhead("ovhnp")
    o = statistics.median(ovh)
    o_np = statistics.median(ovh_np)
    floor_rt = 2 * floor["perftest_sleep_mean_us"]
    floor_rt_poll = 2 * floor["perftest_poll_p50_us"]
    rows += [("chunk", "ar_1token", "rtt_mean_us", round(statistics.median(rtt), 2), "us"),
             ("chunk", "ar_1token", "compute_mean_us", round(statistics.median(comp), 2), "us"),
             ("chunk", "ar_1token", "overhead_us", round(o, 2), "us"),
             ("chunk", "ucx_floor", "round_trip_sleep_us", round(floor_rt, 3), "us"),
             ("chunk", "ucx_floor", "round_trip_poll_p50_us", round(floor_rt_poll, 3), "us"),
             ("chunk", "ratio", "overhead_over_floor", round(o / floor_rt, 3), ""),
             ("chunk", "ar_1token_worker_nopoll", "overhead_us", round(o_np, 2), "us")]
    print("\n## Network path per chunk (ar, 1-token prompt, 200 chunks per run, median of runs)\n")
    print("| quantity | µs |")
    print("|---|---|")
    print(f"| chunk round trip at the coordinator | {statistics.median(rtt):.1f} |")
    print(f"| worker compute (forward + verification) | {statistics.median(comp):.1f} |")
    print(f"| **network path = round trip - compute** | **{o:.1f}** (runs: "
          f"{', '.join(f'{x:.0f}' for x in ovh)}) |")
    print(f"| the same, worker not polling between chunks (poll_us = 0; runs interleaved) | "
          f"{o_np:.1f} (runs: {', '.join(f'{x:.0f}' for x in ovh_np)}) |")
    print(f"| ucx_perftest ucp_am_lat 64 B, TCP loopback, sleeping (-E sleep), round trip = "
          f"2 x mean one-way | {floor_rt:.1f} |")
    print(f"| ucx_perftest, busy-polling (-E poll), round trip = 2 x p50 one-way (mean: "
          f"{2 * floor['perftest_poll_mean_us']:.0f}) | {floor_rt_poll:.1f} |")
    for k in ("poll", "condvar"):
        print(f"| waking a sleeping thread ({k}), one handoff: p50 / mean / p99 | "
              f"{floor[f'wake_{k}_p50_us']:.1f} / {floor[f'wake_{k}_mean_us']:.1f} / "
              f"{floor[f'wake_{k}_p99_us']:.1f} |")

    # ---- CPU the cluster's other processes take, and what stolen CPU costs a forward ----
    cpu = {}
    with open(os.path.join(raw, "cpu.txt")) as f:
        for line in f:
            name, oth, cli = line.split()
            cpu[name] = (float(oth), float(cli))  # ms
    client_base = statistics.median(v[1] for k, v in cpu.items() if k.startswith("cpubase_"))
    print("\n## CPU of the other processes during the cluster's runs (they share the 2 vCPUs with "
          "the worker's forward)\n")
    print(f"CPU time (coordinator + drafter: their threads' schedstat; the client: its rusage) "
          f"summed over the {reps} runs; the client's start-up and shutdown ({client_base:.0f} "
          f"ms, a 1-token run) taken off each run.\n")
    print("| prompt | mode | coordinator + drafter µs per step | client µs per step | worker "
          "compute per step, cluster - in-process µs |")
    print("|---|---|---|---|---|")
    for p, pname in prompts.items():
        for mode in ("ar", "si"):
            o_ms = c_ms = steps = 0
            for rep in range(1, reps + 1):
                name = f"lat_{rep}_{p}_cluster_{mode}"
                steps += n_steps[(p, "cluster", mode, rep)]
                o_ms += cpu[name][0]
                c_ms += max(0.0, cpu[name][1] - client_base)
            o_us, c_us = o_ms * 1e3 / steps, c_ms * 1e3 / steps
            d_us = (fwd[(p, "cluster", mode)] - fwd[(p, "local", mode)]) * 1e3
            rows += [("cpu", f"p{p}_cluster_{mode}", "other_us_per_step", round(o_us, 1), "us"),
                     ("cpu", f"p{p}_cluster_{mode}", "client_us_per_step", round(c_us, 1), "us"),
                     ("cpu", f"p{p}_cluster_{mode}", "compute_minus_local_us", round(d_us, 1),
                      "us")]
            print(f"| {pname} | {mode} | {o_us:.0f} | {c_us:.0f} | {d_us:.0f} |")
    print("\nIn-process ar (code prompt) beside bench_cluster_wake --steal, which keeps a CPU busy "
          "for B µs every 4 ms (paired with the B = 0 run of the same repetition):\n")
    print("| B µs | CPU taken per step µs | verify per step ms | slowdown per step µs | slowdown "
          "/ CPU taken |")
    print("|---|---|---|---|---|")
    steal = {}
    for burn in (0, 150, 300):
        for rep in range(1, reps + 1):
            _, _, summ = read_timing(os.path.join(raw, "t", f"steal_{rep}_{burn}.txt"))
            with open(os.path.join(raw, f"steal_{rep}_{burn}.txt")) as f:
                w = f.read().split()
            per = summ["verify_ms"] / summ["steps"]
            steal[(burn, rep)] = (per, float(w[2]) / float(w[3]) * per * 1e3)  # ms, µs taken
    for burn in (0, 150, 300):
        per = statistics.median(steal[(burn, r)][0] for r in range(1, reps + 1))
        taken = statistics.median(steal[(burn, r)][1] for r in range(1, reps + 1))
        slow = statistics.median((steal[(burn, r)][0] - steal[(0, r)][0]) * 1e3
                                 for r in range(1, reps + 1))
        rows += [("steal", f"burn{burn}", "verify_ms_per_step", round(per, 4), "ms"),
                 ("steal", f"burn{burn}", "cpu_taken_us_per_step", round(taken, 1), "us"),
                 ("steal", f"burn{burn}", "slowdown_us_per_step", round(slow, 1), "us")]
        ratio = f"{slow / taken:.2f}" if burn else "-"
        print(f"| {burn} | {taken:.0f} | {per:.2f} | {slow:.0f} | {ratio} |")

    # ---- throughput: batched and unbatched runs alternate; ratios of adjacent pairs ----
    tp = {}
    with open(os.path.join(raw, "tp.txt")) as f:
        for line in f:
            w = line.split()
            b, mode, n, rep = int(w[1]), w[2], int(w[3]), int(w[4])
            t0, t1 = float(w[5]), float(w[6])
            f0, b0, v0, f1, b1, v1 = map(int, w[7:13])
            gen = 0
            for path in glob.glob(os.path.join(raw, "t", f"tp_{b}_{mode}_{n}_{rep}_*.txt")):
                gen += int(read_timing(path)[2].get("n_gen", 0))
            wall = t1 - t0
            tp[(b, mode, n, rep)] = r = {
                "wall_s": wall, "verified_per_s": (v1 - v0) / wall,
                "committed_per_s": gen / wall, "forwards": f1 - f0, "batched_forwards": b1 - b0,
                "positions_per_forward": (v1 - v0) / max(1, f1 - f0)}
            for k, v in r.items():
                rows.append(("throughput", f"batching{b}_{mode}_n{n}_rep{rep}", k, round(v, 3), ""))
    tp_reps = sorted({k[3] for k in tp})
    print(f"\n## Worker throughput: N concurrent sessions of 64 tokens, one worker "
          f"(medians of {len(tp_reps)} alternating pairs)\n")
    print("| mode | sessions | verified tokens/s batched | one forward per session | ratio "
          "(per pair) | committed tokens/s batched / not | positions per forward batched / not |")
    print("|---|---|---|---|---|---|---|")
    ratio16 = {}
    for mode in ("ar", "si"):
        for n in (1, 4, 16):
            med = lambda b, k: statistics.median(tp[(b, mode, n, r)][k] for r in tp_reps)
            ratios = [tp[(1, mode, n, r)]["verified_per_s"] / tp[(0, mode, n, r)]["verified_per_s"]
                      for r in tp_reps]
            ratio = statistics.median(ratios)
            if n == 16:
                ratio16[mode] = ratio
            rows.append(("throughput", f"{mode}_n{n}", "batched_over_unbatched", round(ratio, 3), ""))
            print(f"| {mode} | {n} | {med(1, 'verified_per_s'):.0f} | {med(0, 'verified_per_s'):.0f} "
                  f"| {ratio:.2f}x ({', '.join(f'{x:.2f}' for x in ratios)}) | "
                  f"{med(1, 'committed_per_s'):.0f} / {med(0, 'committed_per_s'):.0f} | "
                  f"{med(1, 'positions_per_forward'):.1f} / {med(0, 'positions_per_forward'):.1f} |")

    # ---- the targets ----
    print("\n## Targets (issue 7)\n")
    for p, pname in prompts.items():
        # each repetition runs the cluster and in-process next to each other: the median of the
        # per-repetition ratios follows the pair, not the machine's drift over the run
        def pair(a, b):
            return statistics.median(x / y for x, y in zip(lat_tps[(p, "cluster", a)],
                                                             lat_tps[(p, "local", b)]))

        r, ra, ry = pair("si", "si"), pair("ar", "ar"), pair("async", "si")
        r_med = lat[(p, "cluster", "si")]["tokens_per_s"] / lat[(p, "local", "si")]["tokens_per_s"]
        rows += [("ratio", f"p{p}", "si_cluster_over_local", round(r, 3), ""),
                 ("ratio", f"p{p}", "si_cluster_over_local_of_medians", round(r_med, 3), ""),
                 ("ratio", f"p{p}", "ar_cluster_over_local", round(ra, 3), ""),
                 ("ratio", f"p{p}", "async_cluster_over_local_si", round(ry, 3), "")]
        print(f"- si through the cluster / in-process si, {pname}: {r:.2f} (median of the "
              f"{reps} per-repetition ratios; target >= 0.90: {'met' if r >= 0.9 else 'NOT met'}; "
              f"ratio of the medians {r_med:.2f}); with one compute thread each {si1[p]:.2f}; "
              f"ar {ra:.2f}; async / in-process si {ry:.2f}")
    print(f"- network path per chunk / UCX floor (sleeping round trip): {o / floor_rt:.1f}x "
          f"(target <= 3x: {'met' if o <= 3 * floor_rt else 'NOT met'})")
    for mode in ("si", "ar"):
        r16 = ratio16[mode]
        print(f"- batched / unbatched worker at 16 sessions, {mode}: {r16:.2f}x (target >= 1.5x: "
              f"{'met' if r16 >= 1.5 else 'NOT met'})")

    with open(out_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["section", "config", "metric", "value", "unit"])
        w.writerows(rows)
    print(f"\nwrote {out_csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
