#!/usr/bin/env python3
"""Measure the speed detector with interleaved A/B timing (`runner bench --baseline auto`), a benchmark, not a test.

Each trial: a fresh store in a throw-away git repository (main + one PR commit), `runner bench --baseline auto` on the
PR with the merge base's runner = the same binary (SAEPERF_AUTO_BASE_RUNNER), so base and head op timings alternate
in 4 A/B rounds in one job. No history: the threshold is the suite's minimum (5%) and the rank test (p < 0.002).
A/A trials have no injection; power trials set SAEPERF_INJECT_SLOWDOWN, which reaches only the head.

Usage: python3 bench/detector_ab.py RUNNER [--aa 20] [--trials 3] [--slowdowns 0.05,0.1,0.2] [--profile quick]
"""
import argparse, json, os, subprocess, sys, tempfile

ap = argparse.ArgumentParser()
ap.add_argument("runner")
ap.add_argument("--aa", type=int, default=20)
ap.add_argument("--trials", type=int, default=3)
ap.add_argument("--slowdowns", default="0.05,0.1,0.2")
ap.add_argument("--profile", default="quick")
ap.add_argument("--suite", default="bench/suite.toml")
a = ap.parse_args()
runner = os.path.abspath(a.runner)
suite = os.path.abspath(a.suite)
root = tempfile.mkdtemp(prefix="saeperf-detector-ab-")
repo = os.path.join(root, "repo")
os.makedirs(repo)
git = lambda *args: subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)
git("init", "-q", "-b", "main"); git("config", "user.email", "d@example.invalid"); git("config", "user.name", "d")
open(os.path.join(repo, "a.txt"), "w").write("a"); git("add", "."); git("commit", "-qm", "base")
git("checkout", "-qb", "pr")
open(os.path.join(repo, "b.txt"), "w").write("b"); git("add", "."); git("commit", "-qm", "head")


def trial(i, slowdown=None):
    env = dict(os.environ, SAEPERF_AUTO_BASE_RUNNER=runner, SAEPERF_HOME=os.path.join(root, "home"))
    env.pop("SAEPERF_INJECT_SLOWDOWN", None)
    if slowdown:
        env["SAEPERF_INJECT_SLOWDOWN"] = str(slowdown)
    o = subprocess.run([runner, "--db", os.path.join(root, f"store-{i}"), "bench", "--suite", suite, "--profile",
                        a.profile, "--filter", "op/", "--baseline", "auto", "--json"],
                       cwd=repo, env=env, capture_output=True, text=True)
    if o.returncode not in (0, 2, 3):
        sys.exit(f"bench failed: {o.stderr}")
    return [r for r in json.loads(o.stdout)["comparison"]["rows"] if r["metric"] == "time"]


n = 0
alarms, rows_total, cmp_alarm = 0, 0, 0
for i in range(a.aa):
    n += 1
    rows = trial(n)
    bad = [r for r in rows if r["verdict"] != "noise"]
    alarms += len(bad); rows_total += len(rows); cmp_alarm += bool(bad)
    for r in bad:
        print(f"A/A #{i+1}: false alarm {r['bench']} {r['verdict']} {r['change']*100:+.1f}% ({r['detail']})")
print(f"interleaved A/A: {a.aa} comparisons, {cmp_alarm} with any alarm; false-alarm rows {alarms}/{rows_total}")
print("slowdown  detected(op rows)  per op (median measured change)")
for s in [float(x) for x in a.slowdowns.split(",")]:
    per_op = {}
    for t in range(a.trials):
        n += 1
        for r in trial(n, s):
            per_op.setdefault(r["bench"], []).append((r["verdict"] == "regression", r["change"]))
    hits = sum(sum(v for v, _ in l) for l in per_op.values()); total = sum(len(l) for l in per_op.values())
    detail = ", ".join(f"{k.split('/')[-1]} {sum(v for v, _ in l)}/{len(l)} ({sorted(c for _, c in l)[len(l)//2]*100:+.0f}%)"
                       for k, l in sorted(per_op.items()))
    print(f"{s*100:5.0f}%    {hits}/{total}    {detail}", flush=True)
