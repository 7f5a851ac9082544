"""Plain vs fast LSKNet / HAKSNet on this machine: eval forward and train step, one run.

    python benchmarks/bench_backbones.py                       # all four models, 2 threads
    python benchmarks/bench_backbones.py --models lsknet_t --repeats 5 --profile
    python benchmarks/bench_backbones.py --device cuda --repeats 20    # GPU: fp32, TF32 off
    python benchmarks/bench_backbones.py --malloc keep   # glibc keeps freed memory, as in the CLI

For each model: forward of 1x3x1024x1024 in eval (plain NCHW vs ``optimize_for_inference``) and
a train step on 8x3x256x256 (forward + backward + SGD step; plain NCHW vs
``optimize_for_training``), starting from the same random weights. Plain and fast runs
alternate (each timed call after an untimed one of the same path) and the table shows medians,
so a shared machine's load hits both alike; the load
average at start and end is printed. Wall time is the goal metric; the process CPU-time ratio is
shown too (it moves less with other users' load). The floor is FLOPs / (FLOP per CPU second of
a 2048x2048 fp32 matmul measured in the same run); train counts 3x forward FLOPs (forward,
input and weight grads); "fast/floor" is the fast path's CPU seconds over that floor.
On CUDA the timings synchronise the device, TF32 is off (fp32 as on the CPU), the CPU-time
columns are meaningless and the floor is the GPU's fp32 2048^2 matmul rate, in wall seconds.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch


_SYNC = lambda: None  # noqa: E731  (torch.cuda.synchronize on CUDA)


def _matmul_gflops(repeats: int = 5, device: str = "cpu") -> tuple[float, float]:
    """GFLOP/s of a 2048x2048 fp32 matmul: per wall second (best run), per CPU second (median)."""
    a, b = torch.randn(2048, 2048, device=device), torch.randn(2048, 2048, device=device)
    a @ b
    w, c = zip(*(_timed(lambda: a @ b) for _ in range(repeats)))
    if device != "cpu":  # CPU seconds mean nothing for a GPU: use wall time for both
        c = w
    return 2 * 2048**3 / min(w) / 1e9, 2 * 2048**3 / statistics.median(c) / 1e9


def _timed(fn) -> tuple[float, float]:
    _SYNC()
    w, c = time.perf_counter(), time.process_time()
    fn()
    _SYNC()
    return time.perf_counter() - w, time.process_time() - c


def _interleaved(fns: dict, repeats: int) -> dict:
    """Median wall and CPU seconds of each callable, the callables taking turns.

    Each timed call follows an untimed call of the same callable, so both paths are measured in
    their steady state (a scene or an epoch is many repeated calls): without it, each path's first
    call after the other's pays page faults for memory the other just returned to the OS.
    """
    res = {k: ([], []) for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            fn()
            w, c = _timed(fn)
            res[k][0].append(w)
            res[k][1].append(c)
    return {k: (statistics.median(w), statistics.median(c), min(w)) for k, (w, c) in res.items()}


def _train_step(model, x, opt):
    def step():
        opt.zero_grad(set_to_none=True)
        feats = model.forward_intermediates(x, intermediates_only=True)
        sum(f.square().mean() for f in feats).backward()
        opt.step()

    return step


def bench_model(name: str, args) -> dict:
    import timm

    from rsvision.models.complexity import count_macs
    from rsvision.models.fast import optimize_for_inference, optimize_for_training

    dev = args.device
    torch.manual_seed(0)
    plain = timm.create_model(name, num_classes=0).eval()
    out = {"model": name, "gmac_fwd": count_macs(plain, args.size) / 1e9}
    plain = plain.to(dev)
    fast = optimize_for_inference(plain)
    x = torch.randn(1, 3, args.size, args.size, device=dev)
    fns = {"plain": lambda: plain.forward_features(x), "fast": lambda: fast.forward_features(x)}
    with torch.inference_mode():
        diff = (plain.forward_features(x) - fast.forward_features(x)).abs().max().item()
        if args.compile:
            comp = optimize_for_inference(plain, compile=True)
            comp.forward_features(x)  # compiles (not timed)
            out["compile_diff"] = (plain.forward_features(x) - comp.forward_features(x)).abs().max().item()
            fns["compiled"] = lambda: comp.forward_features(x)
        r = _interleaved(fns, args.repeats)
    out.update(fwd=r, fwd_diff=diff)
    del fast, x, fns
    torch.manual_seed(0)
    plain_t = timm.create_model(name, num_classes=0).train().to(dev)
    fast_t = optimize_for_training(plain_t)
    xt = torch.randn(args.batch, 3, args.train_size, args.train_size, device=dev)
    xt_cl = xt.contiguous(memory_format=torch.channels_last)
    opt_p = torch.optim.SGD(plain_t.parameters(), lr=1e-6)
    opt_f = torch.optim.SGD(fast_t.parameters(), lr=1e-6)
    r = _interleaved({"plain": _train_step(plain_t, xt, opt_p), "fast": _train_step(fast_t, xt_cl, opt_f)}, args.repeats)
    out.update(train=r, gmac_train=args.batch * count_macs(plain_t, args.train_size) / 1e9)
    return out


def _profile(name: str, args) -> None:
    import timm

    from rsvision.models.fast import optimize_for_inference, optimize_for_training

    m = timm.create_model(name, num_classes=0).eval()
    f = optimize_for_inference(m)
    x = torch.randn(1, 3, args.size, args.size)
    with torch.inference_mode():
        f.forward_features(x)
        with torch.profiler.profile(record_shapes=True) as p:
            f.forward_features(x)
    print(f"\n== profile: fast forward {name} 1x3x{args.size}x{args.size}")
    print(p.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=34, max_shapes_column_width=60))
    t = optimize_for_training(timm.create_model(name, num_classes=0).train())
    xt = torch.randn(args.batch, 3, args.train_size, args.train_size).contiguous(memory_format=torch.channels_last)
    step = _train_step(t, xt, torch.optim.SGD(t.parameters(), lr=1e-6))
    step()
    with torch.profiler.profile() as p:
        step()
    print(f"\n== profile: fast train step {name} {args.batch}x3x{args.train_size}x{args.train_size}")
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["lsknet_t", "lsknet_s", "haksnet_t", "haksnet_s"])
    ap.add_argument("--size", type=int, default=1024, help="forward input size (square)")
    ap.add_argument("--batch", type=int, default=8, help="train batch")
    ap.add_argument("--train-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--threads", type=int, default=1,
        help="torch threads (default 1: on a shared machine, 2-thread runs mostly measure OpenMP barriers "
        "waiting for a descheduled thread)",
    )
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:<i>")
    ap.add_argument("--compile", action="store_true", help="also time optimize_for_inference(compile=True) (forward)")
    ap.add_argument("--profile", action="store_true", help="torch.profiler tables of the fast paths of the first model")
    ap.add_argument(
        "--malloc", choices=("system", "keep"), default="system",
        help="system: glibc's defaults (the goals' baseline); keep: rsvision.runtime.keep_freed_memory() first, "
        "as the rsvision CLI does (both paths then skip the page faults of fresh multi-MB blocks)",
    )
    args = ap.parse_args(argv)

    import rsvision  # noqa: F401  (registers the models)
    from rich.console import Console
    from rich.table import Table

    global _SYNC
    torch.set_num_threads(args.threads)
    if args.malloc == "keep":
        from rsvision.runtime import keep_freed_memory

        if not keep_freed_memory():
            print("--malloc keep: no glibc here, allocator unchanged", file=sys.stderr)
    if torch.device(args.device).type == "cuda":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
        _SYNC = torch.cuda.synchronize
    load0 = os.getloadavg()
    gf0 = _matmul_gflops(device=args.device)
    rows = [bench_model(n, args) for n in args.models]
    gf1 = _matmul_gflops(device=args.device)
    load1 = os.getloadavg()
    gf = max(gf0[0], gf1[0])  # wall GFLOP/s
    gfc = max(gf0[1], gf1[1])  # per CPU second

    t = Table(
        title=(
            f"plain vs fast: forward 1x3x{args.size}^2 eval, train step {args.batch}x3x{args.train_size}^2; "
            f"{args.device}, {args.threads} threads, malloc {args.malloc}, median of {args.repeats} interleaved runs"
        )
    )
    for c in ("model", "fwd plain s", "fwd fast s", "fwd x", "fwd CPU x", "fwd floor s", "fast/floor",
              "train plain s", "train fast s", "train x", "train CPU x", "train floor s", "fast/floor ", "max|diff|"):
        t.add_column(c, justify="left" if c == "model" else "right")
    for r in rows:
        (pw, pc, _), (fw, fc, _) = r["fwd"]["plain"], r["fwd"]["fast"]
        (tpw, tpc, _), (tfw, tfc, _) = r["train"]["plain"], r["train"]["fast"]
        # floor in CPU seconds (matmul FLOPs per CPU second), compared with the fast CPU seconds
        ffl = 2 * r["gmac_fwd"] / gfc
        tfl = 3 * 2 * r["gmac_train"] / gfc
        t.add_row(
            r["model"], f"{pw:.3f}", f"{fw:.3f}", f"{pw / fw:.2f}", f"{pc / fc:.2f}", f"{ffl:.3f}", f"{fc / ffl:.1f}",
            f"{tpw:.3f}", f"{tfw:.3f}", f"{tpw / tfw:.2f}", f"{tpc / tfc:.2f}", f"{tfl:.3f}", f"{tfc / tfl:.1f}",
            f"{r['fwd_diff']:.1e}",
        )
    c = Console(width=220)
    c.print(t)
    for r in rows:
        if "compiled" in r["fwd"]:
            pw, cw = r["fwd"]["plain"][0], r["fwd"]["compiled"][0]
            c.print(f"{r['model']}: optimize_for_inference(compile=True) forward {cw:.4f} s = {pw / cw:.2f}x plain "
                    f"(max|diff| {r['compile_diff']:.1e})")
    if args.device != "cpu":
        c.print(f"device: {torch.cuda.get_device_name(args.device)}")
    c.print(
        f"matmul 2048^2 fp32: {gf0[0]:.0f} / {gf1[0]:.0f} GFLOP/s per wall s, {gf0[1]:.0f} / {gf1[1]:.0f} per CPU s "
        f"(start / end); floor = FLOPs at {gfc:.0f} GFLOP per CPU s, fast/floor = fast CPU s / floor; "
        f"load average (1, 5, 15 min) at start {tuple(round(v, 2) for v in load0)}, "
        f"at end {tuple(round(v, 2) for v in load1)} on {os.cpu_count()} CPUs; torch {torch.__version__}"
    )
    c.print("goals (LSKNet-T): forward >= 3x, train step >= 1.5x (wall, medians)")
    if args.profile:
        _profile(args.models[0], args)


if __name__ == "__main__":
    sys.exit(main())
