#!/usr/bin/env bash
# gpu-check.sh: the one script to hand a lent GPU machine (no Rust, no network; CUDA toolkit, PyTorch, cuBLAS).
#
# Runs, within about 8 minutes:
#   1. runner kernels check --backend cuda   every kernel against its CPU reference (+ NVRTC / ptxas resources)
#   2. runner kernels bench --backend cuda   CUDA-event timings of every op, cuBLAS SGEMM yardstick, train step
#   3. scripts/torch_baseline.py             the PyTorch float32 peer (ReLU + L1, and TopK), same shape, same GPU
#   4. runner bench --backend cuda           the suite's op micro-benchmarks (quick profile) timed on the GPU and
#                                            stored in a throw-away store, as a GPU machine's `runner bench` does
# and prints a short table last. Full JSON and the log go under $OUT (a fresh temporary folder when unset).
#
# Usage:  scripts/gpu-check.sh [RUNNER]      RUNNER defaults to target/gpu/runner, then target/release/runner.
# Build here first (see README): cargo build --release -p saeperf-runner && mkdir -p target/gpu &&
#   strip -o target/gpu/runner target/release/runner        and carry target/gpu.
# Exit code: 0 when the check passed and nothing failed to run, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
LOG="$OUT/gpu-check.log"
: > "$LOG"
SHAPE="${SAEPERF_BENCH_SHAPE:-4096,576,16384}"
TOPK="${SAEPERF_BENCH_TOPK:-64}"
IFS=, read -r BATCH DIN DSAE <<< "$SHAPE"

RUNNER="${1:-}"
for c in "$RUNNER" target/gpu/runner target/release/runner "$(command -v runner || true)"; do
  if [ -n "$c" ] && [ -x "$c" ]; then RUNNER="$c"; break; fi
done
if [ -z "$RUNNER" ] || [ ! -x "$RUNNER" ]; then
  echo "error: no runner binary (pass its path, or carry target/gpu/runner)" | tee -a "$LOG" >&2
  exit 1
fi

# Libraries: the toolkit's own (its NVRTC matches the driver's era: PTX must be no newer than the driver supports),
# then PyTorch's pip wheels (nvrtc, cublas). cudarc opens them by name through the loader.
LIBS=""
for d in "${CUDA_HOME:-/usr/local/cuda}/lib64" /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && LIBS="$LIBS:$d"
done
WHEELS="$(python3 - <<'PY' 2>/dev/null
import glob, os
try:
    import nvidia
    for base in list(nvidia.__path__):
        for d in sorted(glob.glob(os.path.join(base, "*", "lib"))):
            print(d)
except Exception:
    pass
PY
)"
for d in $WHEELS; do LIBS="$LIBS:$d"; done
export LD_LIBRARY_PATH="${LIBS#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
for d in "${CUDA_HOME:-/usr/local/cuda}/bin" /usr/local/cuda/bin; do [ -d "$d" ] && PATH="$PATH:$d"; done
export PATH

{
  echo "== gpu-check $(date -u +%FT%TZ)"
  echo "runner: $RUNNER"
  echo "OUT: $OUT"
  echo "LD_LIBRARY_PATH: $LD_LIBRARY_PATH"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "nvidia-smi failed"
  command -v ptxas && ptxas --version | tail -1
} >> "$LOG" 2>&1

status=0
run() {  # run NAME TIMEOUT OUTFILE CMD...
  local name="$1" t="$2" out="$3"; shift 3
  echo "== $name: $*" >> "$LOG"
  local t0=$SECONDS
  timeout "$t" "$@" > "$out" 2>> "$LOG"
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - t0)) s" >> "$LOG"
  echo "$name exit $rc ($((SECONDS - t0)) s)" >&2
  [ $rc -eq 0 ] || status=1
  return 0
}

run check 120 "$OUT/kernels-check.json" "$RUNNER" kernels check --backend cuda --json
run bench 150 "$OUT/bench.json" "$RUNNER" kernels bench --backend cuda --json --shape "$SHAPE" --topk "$TOPK"
run torch-relu 75 "$OUT/torch-relu.json" python3 scripts/torch_baseline.py --batch "$BATCH" --d-in "$DIN" --d-sae "$DSAE"
run torch-topk 75 "$OUT/torch-topk.json" python3 scripts/torch_baseline.py --batch "$BATCH" --d-in "$DIN" --d-sae "$DSAE" --topk "$TOPK"
run suite-ops 60 "$OUT/suite-ops.json" env SAEPERF_HOME="$OUT/home" "$RUNNER" --db "$OUT/store" bench --backend cuda \
  --profile quick --filter op/ --baseline none --json --quiet

OUT="$OUT" TOPK="$TOPK" python3 - <<'PY' 2>> "$LOG" | tee -a "$LOG"
import json, os
out = os.environ["OUT"]; topk = os.environ["TOPK"]
def load(n):
    try:
        with open(os.path.join(out, n)) as fh:
            return json.load(fh)
    except Exception as e:
        return {"_error": f"{n}: no result (see gpu-check.log)"}
check, bench, tr, tk, so = (load(n) for n in ("kernels-check.json", "bench.json", "torch-relu.json", "torch-topk.json", "suite-ops.json"))
rows, summary = [], {}
def row(k, v, target=""):
    rows.append((k, v, target)); summary[k] = v
if "checks" in check:
    worst = max([c["rel_err"] for c in check["checks"]] or [0.0])
    row("kernel check", f'{len(check["checks"])} comparisons, {check["failed"]} failed, worst {worst:.1e}', "rel <= 1e-4")
    sp = [r for r in check.get("resources", []) if r["arch"] == "sm_90" and r["spill_store_bytes"] + r["spill_load_bytes"] > 0]
    row("spilling kernels sm_90", str(len(sp)) if check.get("resources") else "no ptxas", "0")
else:
    row("kernel check", check.get("_error", "no result"))
t = {}
for x in bench.get("report", {}).get("timings", []):
    t[(x["op"], x["variant"])] = x
def fmt(k, key="vs_cublas"):
    x = t.get(k)
    if not x: return "-"
    s = f'{x["median_ms"]:.3f} ms, {x["gflops"]:.0f} GFLOP/s'
    if x.get(key) is not None: s += f', {x[key]:.2f}x cuBLAS'
    return s
row("device", bench.get("report", {}).get("device", bench.get("_error", "?")))
row("cuBLAS SGEMM B·d×d·F", fmt(("cublas_sgemm", "B×d·d×F"), "none"))
row("encode relu (GEMM+bias+ReLU)", fmt(("encode", "relu")), ">= 0.70x cuBLAS")
row(f"encode topk k={topk}", fmt(("encode", f"topk k={topk}")))
row("decode dense", fmt(("decode", "dense")))
row("backward dense", fmt(("backward", "dense")))
ours_r = t.get(("train_step", "relu"), {}).get("tokens_per_sec")
ours_k = t.get(("train_step", f"topk k={topk}"), {}).get("tokens_per_sec")
th_r, th_k = tr.get("tokens_per_sec"), tk.get("tokens_per_sec")
def ratio(a, b):
    return f"{a:,.0f} vs torch {b:,.0f} tokens/s = {a / b:.2f}x" if a and b else f"ours {a}, torch {b}"
row("train step relu", ratio(ours_r, th_r), ">= 1.5x torch")
row(f"train step topk k={topk}", ratio(ours_k, th_k), ">= 1.5x torch")
res = so.get("run", {}).get("results", [])
ok = [r for r in res if r.get("status") == "ok"]
row("runner bench --backend cuda (ops)", f"{len(ok)}/{len(res)} ok" if res else so.get("_error", "no result"), "all ok")
with open(os.path.join(out, "summary.json"), "w") as fh:
    json.dump({"summary": summary, "check": check, "bench": bench, "torch_relu": tr, "torch_topk": tk, "suite_ops": so}, fh, indent=2)
w = max(len(r[0]) for r in rows)
print("\n== saeperf gpu-check summary (full JSON: %s/summary.json)" % out)
for k, v, tgt in rows:
    print(f"{k:<{w}}  {v}" + (f"   [target {tgt}]" if tgt else ""))
PY
echo "log: $LOG"
exit $status
