#!/usr/bin/env python3
"""The PyTorch peer of saeperf's training step: the same SAE trained in float32 the way dictionary_learning does it.

One step (dictionary_learning's StandardTrainer with ConstrainedAdam):
    f     = relu((x - b_dec) @ W_enc + b_enc)            (or TopK(relu(.)) with --topk k)
    x_hat = f @ W_dec + b_dec
    loss  = mean_b ||x - x_hat||^2 + l1 * mean_b ||f||_1
    loss.backward(); remove from each decoder row's gradient its component along the row; Adam step; renormalise rows.
Layouts follow saeperf (SAELens): W_enc [d_in, d_sae], W_dec [d_sae, d_in]. Data: random normal activations already on
the device (like `runner kernels bench`); PyTorch's step is dense, so its speed does not depend on the values.
TF32 is off, so every matmul is true float32 as in saeperf's kernels.
Timing: on CUDA, events around each step after warm-up; on the CPU (--device cpu, with --threads set to saeperf's
thread count), the wall clock around each step. The median step gives tokens/s = batch / median.

Usage: python3 scripts/torch_baseline.py [--device cuda|cpu] [--threads N]
                                         [--batch 4096 --d-in 576 --d-sae 16384 --steps 30 --warmup 5]
                                         [--topk K] [--json-out FILE]
Prints one JSON object on stdout (and writes it to --json-out). Exit status 2: PyTorch (or the device) is missing.
"""
import argparse
import json
import statistics
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--d-in", type=int, default=576)
    ap.add_argument("--d-sae", type=int, default=16384)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--l1", type=float, default=1e-3)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--topk", type=int, default=0, help="TopK SAE with this k (0: ReLU + L1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    ap.add_argument("--json-out")
    a = ap.parse_args()

    try:
        import torch
    except ImportError as e:
        print(f"error: PyTorch is not installed: {e}", file=sys.stderr)
        return 2
    cuda = a.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("error: PyTorch sees no CUDA device", file=sys.stderr)
        return 2
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(a.seed)
    dev = torch.device(a.device)
    B, d, F = a.batch, a.d_in, a.d_sae

    w_dec = torch.randn(F, d, device=dev)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    params = {
        "w_enc": torch.nn.Parameter(w_dec.t().clone()),
        "b_enc": torch.nn.Parameter(torch.zeros(F, device=dev)),
        "w_dec": torch.nn.Parameter(w_dec),
        "b_dec": torch.nn.Parameter(torch.zeros(d, device=dev)),
    }
    opt = torch.optim.Adam(params.values(), lr=a.lr, betas=(0.9, 0.999))
    x = torch.randn(B, d, device=dev)
    l1 = 0.0 if a.topk else a.l1

    def step():
        pre = (x - params["b_dec"]) @ params["w_enc"] + params["b_enc"]
        f = torch.relu(pre)
        if a.topk:
            vals, idx = f.topk(a.topk, dim=-1, sorted=False)
            f = torch.zeros_like(f).scatter_(-1, idx, vals)
        x_hat = f @ params["w_dec"] + params["b_dec"]
        loss = (x - x_hat).pow(2).sum(-1).mean() + l1 * f.sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            w = params["w_dec"]
            wn = w / w.norm(dim=1, keepdim=True)
            w.grad -= (w.grad * wn).sum(1, keepdim=True) * wn
        opt.step()
        with torch.no_grad():
            params["w_dec"] /= params["w_dec"].norm(dim=1, keepdim=True)
        return loss

    def timed_ms(fn):
        """Milliseconds of one call of fn, measured the device's way."""
        if not cuda:
            t0 = time.perf_counter()
            out = fn()
            return (time.perf_counter() - t0) * 1e3, out
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        out = fn()
        e.record()
        e.synchronize()
        return s.elapsed_time(e), out

    for _ in range(a.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(a.steps):
        ms, loss = timed_ms(step)
        times.append(ms)
    # The encoder GEMM alone, for the same yardstick as saeperf's encode row.
    w = params["w_enc"].detach()
    xc = x - params["b_dec"].detach()
    for _ in range(3):
        xc @ w
    if cuda:
        torch.cuda.synchronize()
    gemm = [timed_ms(lambda: xc @ w)[0] for _ in range(a.steps)]
    med = statistics.median(times)
    gmed = statistics.median(gemm)
    out = {
        "peer": "pytorch float32 (dictionary_learning step: ConstrainedAdam)",
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "shape": {"batch": B, "d_in": d, "d_sae": F},
        "activation": f"topk k={a.topk}" if a.topk else "relu",
        "steps": a.steps,
        "step_ms_median": med,
        "step_ms_min": min(times),
        "tokens_per_sec": B / (med / 1e3),
        "encoder_matmul_ms_median": gmed,
        "encoder_matmul_gflops": 2.0 * B * d * F / (gmed / 1e3) / 1e9,
        "final_loss": float(loss.item()),
    }
    text = json.dumps(out, indent=2)
    print(text)
    if a.json_out:
        with open(a.json_out, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
