"""SkySense V2 evidence (issue 27 item 5): SSL-pretrained vs from scratch at equal total steps, on real data.

Rows: 19-class multi-label classification of the 54 shared S1 / S2 pairs (``../shared/data/multimodal``,
``index.csv``) with S1, S2 and S1+S2 input, the missing-modality row (the S1+S2 models scored on S2 only)
and RSSCN7 scene classification (``../shared/data/rsscn7/train``, optical RGB as the ``hr`` modality).

Compute rule (steps x batch size, not wall time: the machine is shared): the SSL arm is ``P`` pretraining
steps (``rsvision pretrain ssl``) plus ``F`` fine-tuning steps (``rsvision classify train --pretrained``);
the scratch arm is ``P + F`` fine-tuning steps, same batch size, same recipe otherwise. One SSL run per
seed and dataset: the pairs encoder is pretrained on S1+S2 jointly (one backbone for both sensors) and
fine-tuned for each row. An SSL step encodes 2 global + 2 local views (student) and 2 global views
(teacher), so it costs more than a fine-tuning step; the CPU seconds of each arm are reported beside it.

Splits (one fixed file per dataset, written once under ``OUT/splits``, read by every arm): pairs: train =
the official train + val pairs (36), val = the official test pairs (18), scored on val; RSSCN7: the
stratified 60 / 20 / 20 split of ``classify train`` (seed 0), scored on test. Every arm is scored with its
``last.ckpt`` (no model selection). Seeds change initialisation, data order and augmentations.

    OMP_NUM_THREADS=1 python benchmarks/evidence_skysense.py --out runs/evidence_skysense --jobs 3

Resumable: a run whose ``OUT/results/<run>.json`` exists is skipped; an interrupted one resumes from its
``last.ckpt``. Writes ``OUT/evidence.json`` and ``OUT/evidence.md`` (the README table) after each run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
S2 = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
MODS = {"s1": {"s1": ["VV", "VH"]}, "s2": {"s2": S2}, "s1s2": {"s2": S2, "s1": ["VV", "VH"]}}
ARMS = ("scratch", "ssl", "scratchcpu")
ROW_NAMES = {"s1": "S1", "s2": "S2", "s1s2": "S1+S2", "s1s2_on_s2": "S1+S2 -> S2 (missing S1)", "rsscn7": "RSSCN7"}


def plan(a: argparse.Namespace) -> dict[str, dict]:
    """Every run: kind, dataset, modalities, arm, seed, steps, dependency."""
    runs: dict[str, dict] = {}
    for s in a.seeds:
        runs[f"ssl_pairs_s{s}"] = dict(kind="ssl", data="pairs", seed=s, steps=a.pre_steps)
        runs[f"ssl_rsscn7_s{s}"] = dict(kind="ssl", data="rsscn7", seed=s, steps=a.pre_steps)
        for row in [*MODS, "rsscn7"]:
            data = "rsscn7" if row == "rsscn7" else "pairs"
            runs[f"ft_{row}_scratch_s{s}"] = dict(kind="ft", data=data, row=row, arm="scratch", seed=s,
                                                  steps=a.pre_steps + a.ft_steps)
            runs[f"ft_{row}_ssl_s{s}"] = dict(kind="ft", data=data, row=row, arm="ssl", seed=s, steps=a.ft_steps,
                                              after=f"ssl_{data}_s{s}")
            if a.cpu_steps:  # scratch at the SSL arm's CPU time instead of its step count
                runs[f"ft_{row}_scratchcpu_s{s}"] = dict(kind="ft", data=data, row=row, arm="scratchcpu", seed=s,
                                                         steps=a.cpu_steps)
    return runs


def write_splits(a: argparse.Namespace) -> dict[str, Path]:
    sys.path.insert(0, str(ROOT))
    from rsvision.data.classification import load_or_create_splits, scan_class_folders
    from rsvision.data.multimodal import read_dataset
    from rsvision.data.pair_inputs import write_pair_split_file

    d = a.out / "splits"
    d.mkdir(parents=True, exist_ok=True)
    pairs, img = d / "pairs_split.csv", d / "rsscn7_split.csv"
    if not pairs.exists():
        write_pair_split_file(pairs, {s.id: "val" if s.split == "test" else "train" for s in read_dataset(a.pairs)})
    if not img.exists():
        samples, classes = scan_class_folders(a.rsscn7)
        load_or_create_splits(samples, a.rsscn7, img, classes)
    return {"pairs": pairs, "rsscn7": img}


def config(a: argparse.Namespace, name: str, r: dict, splits: dict[str, Path]) -> dict:
    trainer = {"max_epochs": 100000, "seed": r["seed"], "threads": 1, "progress": "none", "log_every_n_steps": 5,
               "extra": {"max_steps": r["steps"]}}
    model: dict = {"name": "skysense_v2_tiny"}
    if r["kind"] == "ssl":
        trainer["extra"]["limit_val_batches"] = 0  # fixed budget: the last weights are the encoder
        if r["data"] == "pairs":
            data = {"root": str(a.pairs), "split_file": str(splits["pairs"]), "modalities": MODS["s1s2"],
                    "img_size": a.pair_size, "local_size": a.pair_size // 2, "batch_size": a.pair_batch}
        else:
            data = {"root": str(a.rsscn7), "format": "images", "split_file": str(splits["rsscn7"]),
                    "modalities": {"hr": ["R", "G", "B"]}, "img_size": a.img_size, "local_size": a.img_size // 2,
                    "source_size": 2 * a.img_size, "batch_size": a.img_batch}
        return {"data": data, "model": model, "optim": {"lr": a.lr, "warmup_steps": 5}, "trainer": trainer}
    if r["arm"] == "ssl":
        model["pretrained"] = str(a.out / "runs" / r["after"] / "encoder.pth")
    if r["data"] == "pairs":
        data = {"root": str(a.pairs), "format": "pairs", "split_file": str(splits["pairs"]),
                "modalities": MODS[r["row"]], "img_size": a.pair_size, "batch_size": a.pair_batch}
        optim = {"lr": a.lr, "warmup_steps": 5, "label_smoothing": 0.0}
    else:
        data = {"root": str(a.rsscn7), "split_file": str(splits["rsscn7"]), "img_size": a.img_size,
                "resize": a.img_size, "eval_size": a.img_size, "batch_size": a.img_batch}
        optim = {"lr": a.lr, "warmup_steps": 5}
    return {"data": data, "model": model, "optim": optim, "trainer": trainer}


def sh(cmd: list[str], log: Path) -> None:
    """Run ``cmd`` with one torch thread, appending it to ``OUT/commands.txt`` and its output to ``log``."""
    with open(log.parent.parent / "commands.txt", "a") as f:
        f.write(" ".join(cmd) + "\n")
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=True, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})


def execute(a: argparse.Namespace, name: str) -> None:
    """One run (a process of its own): train through the CLI, score ``last.ckpt``, write its result JSON
    (metrics, steps, wall and CPU seconds of the run's processes)."""
    r = plan(a)[name]
    splits = write_splits(a)
    run_dir, log = a.out / "runs" / name, a.out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cfg_path = a.out / "configs" / f"{name}.yaml"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(yaml.safe_dump(config(a, name, r, splits), sort_keys=False))
    rsv = [sys.executable, "-m", "rsvision.cli"]
    verb = ["pretrain", "ssl"] if r["kind"] == "ssl" else ["classify", "train"]
    t0, c0, s0 = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    sh([*rsv, *verb, "--config", str(cfg_path), "--out", str(run_dir), *(["--resume"] if run_dir.exists() else [])],
       log)
    res: dict = {"run": name, **r, "config": str(cfg_path)}
    if r["kind"] == "ft":  # score last.ckpt in this process (rsvision.tasks.evaluate, what `classify eval` runs)
        import torch

        from rsvision.tasks import evaluate, load_task
        from rsvision.tasks.common import write_json

        torch.set_num_threads(1)
        task = load_task(run_dir / "last.ckpt", "cpu")
        split = "val" if r["data"] == "pairs" else "test"
        data = a.pairs if r["data"] == "pairs" else a.rsscn7
        evals = {"": None, "_on_s2": ["s2"]} if r["row"] == "s1s2" else {"": None}
        for suffix, mods in evals.items():
            m = evaluate(task, data, split=split, split_file=splits[r["data"]], modalities=mods)
            write_json(m, run_dir / f"eval_{split}{suffix}.json")
            keys = ("mAP", "f1_micro", "f1_macro") if r["data"] == "pairs" else ("overall_accuracy", "kappa")
            res["metrics" + suffix] = {k: m[k] for k in keys} | {"num_samples": m.get("num_samples"), "split": split}
    c1, s1 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    cpu = c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime + s1.ru_utime + s1.ru_stime - s0.ru_utime - s0.ru_stime
    res.update(wall_s=round(time.time() - t0, 1), cpu_s=round(cpu, 1))
    out = a.out / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, out)


def _ms(v: list[float]) -> str:
    return "-" if not v else f"{np.mean(v):.3f} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.3f} (n={len(v)})"


def chance(a: argparse.Namespace, splits: dict[str, Path]) -> dict[str, float]:
    """Reference scores without a model: pairs mAP of uniform random scores on the val pairs (mean of 300
    draws; with 1-3 positives per class it is well above the classes' prevalence), RSSCN7 OA 1 / classes."""
    import torch

    from rsvision.data.multimodal import BEN19_CLASSES, read_dataset
    from rsvision.tasks.metrics import multilabel_metrics

    val = [s for s in read_dataset(a.pairs, split_file=splits["pairs"]) if s.split == "val"]
    y = torch.zeros(len(val), len(BEN19_CLASSES))
    for i, s in enumerate(val):
        y[i, list(s.labels)] = 1
    g = torch.Generator().manual_seed(0)
    maps = [multilabel_metrics(torch.rand(y.shape, generator=g), y, BEN19_CLASSES)["mAP"] for _ in range(300)]
    n_cls = len([d for d in a.rsscn7.iterdir() if d.is_dir()])
    return {"pairs_mAP": float(np.mean(maps)), "rsscn7_OA": 1 / n_cls}


def summarise(a: argparse.Namespace) -> dict:
    """``evidence.json`` / ``evidence.md`` from the finished results (mean ± sample std over seeds)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes without positives in val
        ref = chance(a, write_splits(a))
    res = {p.stem: json.loads(p.read_text()) for p in sorted((a.out / "results").glob("*.json"))}
    cpu = {k: v["cpu_s"] for k, v in res.items()}
    rows = []
    for row, src, suffix in [("s1", "s1", ""), ("s2", "s2", ""), ("s1s2", "s1s2", ""),
                             ("s1s2_on_s2", "s1s2", "_on_s2"), ("rsscn7", "rsscn7", "")]:
        metric = "overall_accuracy" if row == "rsscn7" else "mAP"
        line = {"row": ROW_NAMES[row], "metric": "OA" if row == "rsscn7" else "mAP (macro)",
                "random": ref["rsscn7_OA" if row == "rsscn7" else "pairs_mAP"]}
        for arm in ARMS[: 3 if a.cpu_steps else 2]:
            done = [res[f"ft_{src}_{arm}_s{s}"] for s in a.seeds if f"ft_{src}_{arm}_s{s}" in res]
            vals = [d["metrics" + suffix][metric] for d in done]
            extra = [d["metrics" + suffix]["f1_micro" if row != "rsscn7" else "kappa"] for d in done]
            data = "rsscn7" if row == "rsscn7" else "pairs"
            cpus = [cpu[f"ft_{src}_{arm}_s{s}"] + (cpu.get(f"ssl_{data}_s{s}", 0) if arm == "ssl" else 0)
                    for s in a.seeds if f"ft_{src}_{arm}_s{s}" in res]
            line[arm] = {"values": vals, "mean_std": _ms(vals), "second": _ms(extra),
                         "cpu_s_mean": round(float(np.mean(cpus)), 1) if cpus else None}
        rows.append(line)
    summary = {"pre_steps": a.pre_steps, "ft_steps": a.ft_steps, "cpu_steps": a.cpu_steps, "seeds": a.seeds, "pair_batch": a.pair_batch,
               "img_batch": a.img_batch, "pair_size": a.pair_size, "img_size": a.img_size, "rows": rows,
               "runs_done": len(res), "runs_planned": len(plan(a))}
    P, F = a.pre_steps, a.ft_steps
    md = [f"| row | metric | random scores | from scratch ({P + F} steps) | SSL ({P} pretrain + {F} fine-tune steps) | "
          f"second metric scratch / SSL | CPU s per arm, scratch / SSL |", "|---|---|---|---|---|---|---|"]
    for ln in rows:
        second = "F1 micro" if ln["metric"].startswith("mAP") else "kappa"
        md.append(f"| {ln['row']} | {ln['metric']} | {ln['random']:.3f} | {ln['scratch']['mean_std']} | {ln['ssl']['mean_std']} | "
                  f"{second} {ln['scratch']['second']} / {ln['ssl']['second']} | "
                  f"{ln['scratch']['cpu_s_mean']} / {ln['ssl']['cpu_s_mean']} |")
    if a.cpu_steps:
        md += ["", f"| row | scratch at the SSL arm's CPU time ({a.cpu_steps} steps) | second metric | CPU s |",
               "|---|---|---|---|"]
        md += [f"| {ln['row']} | {ln['scratchcpu']['mean_std']} | {ln['scratchcpu']['second']} | "
               f"{ln['scratchcpu']['cpu_s_mean']} |" for ln in rows]
    (a.out / "evidence.json").write_text(json.dumps(summary, indent=1))
    (a.out / "evidence.md").write_text("\n".join(md) + f"\n\n{len(res)} of {len(plan(a))} runs finished.\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="results directory (resumable)")
    p.add_argument("--pairs", type=Path, default=ROOT.parent / "shared/data/multimodal")
    p.add_argument("--rsscn7", type=Path, default=ROOT.parent / "shared/data/rsscn7/train")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--pre-steps", type=int, default=60, help="P: SSL pretraining steps")
    p.add_argument("--ft-steps", type=int, default=60, help="F: fine-tuning steps of the SSL arm")
    p.add_argument("--cpu-steps", type=int, default=0,
                   help="also a scratch arm of N fine-tuning steps (N chosen so its CPU time matches the SSL arm's)")
    p.add_argument("--pair-batch", type=int, default=8)
    p.add_argument("--img-batch", type=int, default=16)
    p.add_argument("--pair-size", type=int, default=32, help="S1 / S2 crops resized to N px (120 px patches)")
    p.add_argument("--img-size", type=int, default=64, help="RSSCN7 images resized to N px (400 px originals)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--jobs", type=int, default=3, help="runs at once (each OMP_NUM_THREADS=1)")
    p.add_argument("--only", nargs="*", help="run only these runs (names as in OUT/results)")
    p.add_argument("--run", help=argparse.SUPPRESS)  # internal: execute one run in this process
    a = p.parse_args(argv)
    a.out, a.pairs, a.rsscn7 = a.out.resolve(), a.pairs.resolve(), a.rsscn7.resolve()
    if a.run:
        return execute(a, a.run)
    write_splits(a)
    runs = plan(a)
    todo = [n for n in runs if not (a.out / "results" / f"{n}.json").exists() and (not a.only or n in a.only)]
    done_ok = lambda n: (a.out / "results" / f"{n}.json").exists()  # noqa: E731
    worker = [sys.executable, __file__, "--out", str(a.out), "--pairs", str(a.pairs), "--rsscn7", str(a.rsscn7),
              "--seeds", *map(str, a.seeds), "--pre-steps", str(a.pre_steps), "--ft-steps", str(a.ft_steps),
              "--cpu-steps", str(a.cpu_steps),
              "--pair-batch", str(a.pair_batch), "--img-batch", str(a.img_batch), "--pair-size", str(a.pair_size),
              "--img-size", str(a.img_size), "--lr", str(a.lr)]
    failed: set[str] = set()
    with ThreadPoolExecutor(a.jobs) as pool:
        active: dict = {}
        while todo or active:
            ready = [n for n in todo if runs[n].get("after") is None or done_ok(runs[n]["after"])]
            blocked = [n for n in todo if runs[n].get("after") in failed]
            for n in blocked:
                todo.remove(n)
                failed.add(n)
            for n in ready[: a.jobs - len(active)]:
                todo.remove(n)
                print(f"{time.strftime('%H:%M:%S')} start {n}", flush=True)
                active[pool.submit(subprocess.run, [*worker, "--run", n])] = n
            if not active:
                break
            fin, _ = wait(active, return_when=FIRST_COMPLETED)
            for f in fin:
                n = active.pop(f)
                ok = f.result().returncode == 0
                print(f"{time.strftime('%H:%M:%S')} {'done' if ok else 'FAILED'} {n}", flush=True)
                if not ok:
                    failed.add(n)
                summarise(a)
    s = summarise(a)
    print((a.out / "evidence.md").read_text())
    if failed:
        print(f"failed or blocked: {sorted(failed)}")
    print(json.dumps({"runs_done": s["runs_done"], "runs_planned": s["runs_planned"]}))


if __name__ == "__main__":
    main()
