#!/usr/bin/env python3
"""Measure the speed detector on this machine (a benchmark, not a test).

1. False-alarm rate: N+1 clean runs of the op micro-benchmarks (branch "main"), then N A/A comparisons of each run
   with the one before it. Every speed row that is not "noise" is a false alarm. The first comparisons use the
   minimum threshold (short history); from the 11th on, the history fence is learned from the earlier runs.
2. Power: for each injected slowdown (SAEPERF_INJECT_SLOWDOWN, read only by the op timing loop), T runs on branch
   "inject", each compared with the newest clean run; a slowdown is "detected" for an op when its row says regression.

Usage: python3 bench/detector.py RUNNER [--aa 20] [--trials 5] [--slowdowns 0.02,0.05,0.1,0.2,0.5] [--profile quick]
"""
import argparse, json, os, subprocess, sys, tempfile

ap = argparse.ArgumentParser()
ap.add_argument("runner")
ap.add_argument("--aa", type=int, default=20)
ap.add_argument("--trials", type=int, default=5)
ap.add_argument("--slowdowns", default="0.02,0.05,0.1,0.2,0.5")
ap.add_argument("--profile", default="quick")
ap.add_argument("--suite", default="bench/suite.toml")
a = ap.parse_args()
db = os.path.join(tempfile.mkdtemp(prefix="saeperf-detector-"), "store")


def bench(branch, slowdown=None):
    env = dict(os.environ)
    env.pop("SAEPERF_INJECT_SLOWDOWN", None)
    if slowdown:
        env["SAEPERF_INJECT_SLOWDOWN"] = str(slowdown)
    o = subprocess.run([a.runner, "--db", db, "bench", "--suite", a.suite, "--profile", a.profile, "--filter", "op/",
                        "--baseline", "none", "--branch", branch, "--commit", "0" * 40, "--json"],
                       env=env, capture_output=True, text=True)
    if o.returncode != 0:
        sys.exit(f"bench failed: {o.stderr}")
    return json.loads(o.stdout)["run"]["meta"]["id"]


def compare(base, head, raw=False):
    o = subprocess.run([a.runner, "--db", db, "compare", base, head, "--suite", a.suite, "--json"]
                       + (["--no-yardstick"] if raw else []), capture_output=True, text=True)
    if o.returncode not in (0, 2, 3):
        sys.exit(f"compare failed: {o.stderr}")
    return [r for r in json.loads(o.stdout)["rows"] if r["metric"] == "time"]


clean = [bench("main")]
for i in range(a.aa):
    clean.append(bench("main"))
for raw in (False, True):
    mode = "raw times" if raw else "yardstick where it helps"
    alarms_short, alarms_fence, rows_short, rows_fence, cmp_alarm = 0, 0, 0, 0, 0
    for i in range(a.aa):
        rows = compare(clean[i], clean[i + 1], raw)
        bad = [r for r in rows if r["verdict"] != "noise"]
        cmp_alarm += bool(bad)
        if any("history fence" in r["detail"] for r in rows):
            alarms_fence += len(bad); rows_fence += len(rows)
        else:
            alarms_short += len(bad); rows_short += len(rows)
        for r in bad:
            print(f"[{mode}] A/A #{i+1}: false alarm {r['bench']} {r['verdict']} {r['change']*100:+.1f}% ({r['detail']})")
    print(f"[{mode}] {a.aa} A/A comparisons, {cmp_alarm} with any alarm; false-alarm rows: "
          f"{alarms_short}/{rows_short} (minimum threshold), {alarms_fence}/{rows_fence} (history fence)")
print("slowdown  mode  detected(op rows)  per op")
for s in [float(x) for x in a.slowdowns.split(",")]:
    heads = [bench("inject", s) for _ in range(a.trials)]
    for raw in (False, True):
        per_op = {}
        for h in heads:
            for r in compare(clean[-1], h, raw):
                per_op.setdefault(r["bench"], []).append(r["verdict"] == "regression")
        hits = sum(sum(v) for v in per_op.values()); total = sum(len(v) for v in per_op.values())
        detail = ", ".join(f"{k.split('/')[-1]} {sum(v)}/{len(v)}" for k, v in sorted(per_op.items()))
        print(f"{s*100:5.0f}%  {'raw ' if raw else 'yard'}  {hits}/{total}    {detail}")
