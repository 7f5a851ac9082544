"""MTP evidence on the shared real data (issue 26, item 5): does multi-task pretraining help downstream?

Pretrains an encoder (``--encoder``: LSKNet-T, the default, or the reduced ViT + RVSA ``vit_t_rvsa``)
twice on the same images and the same step budget with ``rsvision pretrain mtp``:

* ``mtp``: semantic segmentation + rotated detection (+ instance segmentation when ``--instance``),
* ``seg``: semantic segmentation only (the single-task baseline),

on multi-task labels made from the shared DOTA, iSAID and DIOR-R images, with one DOTA image
(``HELDOUT``, P1888) left out. Then fine-tunes at equal budgets from (a) scratch, (b) ``seg``, (c) ``mtp``
(``--pretrained RUN/encoder.pth``) on

* RSSCN7 classification (the config's seeded 60/20/20 split; OA on its test split),
* LoveDA segmentation (the two shared tiles: rows 0-767 train, rows 768-1023 test; mIoU),
* LEVIR-CD change detection (the six shared pairs: rows 0-767 train, rows 768-1023 test; F1),
* rotated detection: train on 256 px patches of the DOTA vehicle images P0003-P0005 (seen by
  pretraining), test on the held-out P1888, never seen by pretraining (large / small vehicle; mAP VOC07
  at IoU 0.5 on the merged full image).

Every fine-tune is scored on ``last.ckpt`` (no checkpoint selection on the test data). Everything runs
the CLI in subprocesses with ``OMP_NUM_THREADS=1`` and ``trainer.threads=1``, ``--jobs`` at a time;
budgets are steps (``trainer.extra.max_steps``), set in ``BUDGET``. Rerunning skips finished runs and
resumes interrupted ones (``--resume`` from ``last.ckpt``).

    python benchmarks/evidence_mtp.py --out runs/evidence_mtp --seeds 0 1 2 --jobs 2
    python benchmarks/evidence_mtp.py --out runs/evidence_mtp_vit --encoder vit_t_rvsa --seeds 0 --jobs 2

Writes ``OUT/data`` (derived crops / patches / configs), ``OUT/runs/<name>`` (run directories, logs),
``OUT/eval/<name>.json`` (each eval's ``--json``), ``OUT/results.json`` and ``OUT/table.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = (ROOT / ".." / "shared" / "data").resolve()
HELDOUT = "P1888"  # DOTA image that pretraining never sees; the detection test image
DOTA_PRETRAIN = ["P0003", "P0004", "P0005", "P0075", "P0168", "P0706", "P0770"]  # every shared DOTA image but HELDOUT
DET_TRAIN = ["P0003", "P0004", "P0005"]  # vehicle images, same classes as HELDOUT
DET_CLASSES = ["large-vehicle", "small-vehicle"]
REPEAT = 7  # DIOR-R's one image x7, iSAID's three x7 (see prepare): an epoch is 7 steps, as DOTA's 7 images
SPLIT_ROW = 768  # LoveDA / LEVIR-CD tiles are 1024 rows: 0..767 train, 768..1023 test

# Step budgets and sizes (equal for the three arms of a task). Measured and sized in the README.
BUDGET = {
    "pretrain": {"steps": 120, "img_size": 256, "batch_size": 3},
    "classify": {"steps": 80, "img_size": 128, "batch_size": 16},
    "segment": {"steps": 80, "img_size": 128, "batch_size": 8},
    "change": {"steps": 80, "img_size": 128, "batch_size": 8},
    "detect": {"steps": 80, "img_size": 256, "batch_size": 2},
}
TASKS = ("classify", "segment", "change", "detect")
# Encoders: what differs in pretraining. The ViT follows MTP's optimiser (layer-wise lr decay 0.9); its
# pos-embed is built for the 256 px pretraining crops and resized on the fly for other sizes.
ENCODERS = {
    "lsknet_t": {"backbone_kwargs": {"drop_path_rate": 0.1}, "optim": {}},
    "vit_t_rvsa": {"backbone_kwargs": {"img_size": 256, "drop_path_rate": 0.1}, "optim": {"layer_decay": 0.9}},
}
ARMS = ("scratch", "seg", "mtp")
METRIC = {"classify": "overall_accuracy", "segment": "mIoU", "change": "F1", "detect": "mAP"}
LABEL = {"classify": "RSSCN7 OA", "segment": "LoveDA mIoU", "change": "LEVIR-CD F1", "detect": f"DOTA {HELDOUT} mAP"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- data ----------------------------------------------------------------------------------------
def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        os.symlink(src.resolve(), dst)


def _rows(src: Path, dst: Path, r0: int, r1: int) -> None:
    from PIL import Image

    if dst.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im.load()
        crop = im.crop((0, r0, im.width, min(r1, im.height)))
    tmp = dst.with_name(dst.name + ".tmp.png")
    crop.save(tmp)
    tmp.replace(dst)


def prepare(out: Path, instance: bool, encoder: str = "lsknet_t") -> dict[str, Path]:
    """Derived data sets and the two pretraining configs under ``out/data`` (idempotent)."""
    import yaml

    d = out / "data"
    dota = SHARED / "dota"
    # detection: train patches of DET_TRAIN, the held-out image whole (eval) and as patches (val)
    for split, names in (("det_src_train", DET_TRAIN), ("det_src_test", [HELDOUT])):
        for n in names:
            _link(dota / "images" / f"{n}.png", d / split / "images" / f"{n}.png")
            _link(dota / "labelTxt" / f"{n}.txt", d / split / "labelTxt" / f"{n}.txt")
    s = BUDGET["detect"]["img_size"]
    for src, dst in (("det_src_train", "det/train"), ("det_src_test", "det/val")):
        if not (d / dst / "annfiles").is_dir():
            run_logged([*CLI, "dota", "split", "--img-dir", str(d / src / "images"), "--ann-dir",
                        str(d / src / "labelTxt"), "--out", str(d / dst), "--sizes", str(s), "--gaps", str(s // 4),
                        "--no-keep-empty"], d / f"split_{dst.replace('/', '_')}.log")
    # LoveDA / LEVIR-CD: row split of every tile
    lv = SHARED / "seg" / "loveda"
    for p in sorted((lv / "images").glob("*.png")):
        for sub in ("images", "masks"):
            _rows(lv / sub / p.name, d / "loveda" / "train" / sub / p.name, 0, SPLIT_ROW)
            _rows(lv / sub / p.name, d / "loveda" / "test" / sub / p.name, SPLIT_ROW, 10**6)
    cd = SHARED / "change" / "levir"
    for p in sorted((cd / "A").glob("*.png")):
        for sub in ("A", "B", "label"):
            _rows(cd / sub / p.name, d / "levir" / "train" / sub / p.name, 0, SPLIT_ROW)
            _rows(cd / sub / p.name, d / "levir" / "test" / sub / p.name, SPLIT_ROW, 10**6)
    # MTP zips one loader per dataset and an epoch ends with the shortest: DIOR-R's single image would
    # make every step an epoch (two ~100 MB checkpoint writes per step). Each DIOR-R / iSAID image is
    # listed REPEAT times under new names (symlinks): the same images, drawn uniformly as before.
    dior, isaid = SHARED / "dior_r", SHARED / "seg" / "isaid"
    for k in range(REPEAT):
        _link(dior / "JPEGImages-trainval" / "00001.jpg", d / "mtp_dior" / "JPEGImages-trainval" / f"00001_{k}.jpg")
        _link(dior / "Annotations" / "Oriented Bounding Boxes" / "00001.xml",
              d / "mtp_dior" / "Annotations" / "Oriented Bounding Boxes" / f"00001_{k}.xml")
        for p in sorted((isaid / "images").glob("*.png")):
            for sub in ("images", "masks"):
                _link(isaid / sub / p.name, d / "mtp_isaid" / sub / f"{p.stem}_{k}.png")
    # pretraining configs: same data, same budget; only model.tasks differs
    b = BUDGET["pretrain"]
    base = {
        "data": {"datasets": [
            {"name": "dota", "format": "dota", "root": str(dota), "names": DOTA_PRETRAIN},
            {"name": "dior", "format": "dior", "root": str(d / "mtp_dior")},
            {"name": "isaid", "format": "isaid", "root": str(d / "mtp_isaid")},
        ], "img_size": b["img_size"], "batch_size": b["batch_size"], "batch_mode": "avg"},
        "model": {"name": encoder, "backbone_kwargs": ENCODERS[encoder]["backbone_kwargs"], "seg_channels": 64,
                  "preset": "small"},
        "optim": {"lr": 1.0e-3, "weight_decay": 0.05, "schedule": "cosine", "min_lr_ratio": 0.0, "warmup_steps": 20,
                  **ENCODERS[encoder]["optim"]},
        "trainer": {"max_epochs": 100000, "gradient_clip_val": 5.0, "device": "cpu", "threads": 1,
                    "progress": "none", "log_every_n_steps": 5, "extra": {"max_steps": b["steps"]}},
    }
    assert HELDOUT not in DOTA_PRETRAIN and not (SHARED / "seg" / "isaid" / "images" / f"{HELDOUT}.png").exists()
    cfgs = {}
    for arm, tasks in (("mtp", ["semantic", "rotated"] + (["instance"] if instance else [])), ("seg", ["semantic"])):
        c = json.loads(json.dumps(base))
        c["model"]["tasks"] = tasks
        path = d / f"pretrain_{arm}.yaml"
        path.write_text(yaml.safe_dump(c, sort_keys=False))
        cfgs[arm] = path
    return cfgs


# --- runs ----------------------------------------------------------------------------------------
CLI = [sys.executable, "-m", "rsvision.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_logged(cmd: list[str], logfile: Path) -> float:
    logfile.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(logfile, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT)
    if rc != 0:
        raise RuntimeError(f"exit {rc}: {' '.join(cmd)} (log: {logfile})")
    return time.time() - t0


def train(name: str, cmd: list[str], out: Path) -> float | None:
    """Train into ``out/runs/name`` unless done; resume a killed run; return the wall seconds of this call."""
    rd = out / "runs" / name
    done = rd / "train.done"
    if done.exists():
        return None
    if rd.exists() and not (rd / "last.ckpt").exists():
        shutil.rmtree(rd)  # killed before its first checkpoint: nothing to resume
    resume = ["--resume"] if (rd / "last.ckpt").exists() else []
    log(f"train {name}{' (resume)' if resume else ''}")
    secs = run_logged([*cmd, "--out", str(rd), *resume], out / "logs" / f"{name}.log")
    done.write_text(json.dumps({"seconds": secs, "resumed": bool(resume)}))
    log(f"done {name} in {secs:.0f} s")
    return secs


def finetune_cmd(task: str, arm: str, seed: int, out: Path, encoder: str = "lsknet_t") -> list[str]:
    b, d = BUDGET[task], out / "data"
    steps = b["steps"]
    common = ["--model", encoder, "--seed", str(seed), "--device", "cpu", "--set", "trainer.threads=1", "--set", "trainer.progress=none",
              "--set", f"trainer.extra.max_steps={steps}", "--set", "trainer.max_time=null",
              "--batch-size", str(b["batch_size"]), "--img-size", str(b["img_size"])]
    if arm != "scratch":
        common += ["--pretrained", str(out / "runs" / f"pretrain_{arm}" / "encoder.pth")]
    if task == "classify":
        return [*CLI, "classify", "train", "--config", str(ROOT / "configs" / "rsscn7_lsknet_t.yaml"),
                "--data", str(SHARED / "rsscn7" / "train"), "--epochs", "1000", "--set", "optim.schedule=cosine",
                "--set", "optim.warmup_steps=15", *(["--set", "model.fast=false"] if encoder != "lsknet_t" else []),
                *common]
    if task == "segment":
        # one epoch = 2 tiles x samples_per_image / batch = the whole budget (validation once, at the end)
        spi = -(-steps * b["batch_size"] // 2)
        return [*CLI, "segment", "train", "--config", str(ROOT / "configs" / "seg_loveda_upernet_lsknet_t.yaml"),
                "--data", str(d / "loveda" / "train"), "--set", f"data.val_root={d / 'loveda' / 'test'}",
                "--epochs", "1", "--set", f"data.samples_per_image={spi}", "--set", "model.channels=64",
                "--set", "optim.lr=0.0005", "--set", "optim.warmup_steps=15", "--set", f"sliding.size={b['img_size']}",
                "--set", "sliding.overlap=0", *common]
    if task == "change":
        spi = -(-steps * b["batch_size"] // 6)
        return [*CLI, "change", "train", "--config", str(ROOT / "configs" / "change_levir_siam_diff.yaml"),
                "--data", str(d / "levir" / "train"), "--set", f"data.val_root={d / 'levir' / 'test'}",
                "--epochs", "1", "--set", f"data.samples_per_image={spi}",
                "--set", "model.channels=64", "--set", "optim.lr=0.0005", "--set", "optim.warmup_steps=15",
                "--set", f"sliding.size={b['img_size']}", "--set", "sliding.overlap=0", *common]
    if task == "detect":
        return [*CLI, "detect", "train", "--data", str(d / "det"), "--preset", "small",
                "--epochs", "1000", "--set", f"data.classes={json.dumps(DET_CLASSES)}", "--set", "data.num_workers=0",
                "--set", "data.rotate_p=0.0", "--set", "optim.lr=0.0005", "--set", "optim.base_batch=2",
                "--set", "optim.warmup_steps=15", "--set", "optim.milestones=[100000]", *common]
    raise ValueError(task)


def evaluate(task: str, name: str, out: Path) -> dict:
    js = out / "eval" / f"{name}.json"
    if js.exists():
        return json.loads(js.read_text())
    ck = out / "runs" / name / "last.ckpt"
    d = out / "data"
    args = {"classify": ["--data", str(SHARED / "rsscn7" / "train"), "--split", "test"],
            "segment": ["--data", str(d / "loveda" / "test")],
            "change": ["--data", str(d / "levir" / "test")],
            "detect": ["--img-dir", str(d / "det_src_test" / "images"), "--ann-dir", str(d / "det_src_test" / "labelTxt"),
                       "--window", str(BUDGET["detect"]["img_size"]), "--overlap", str(BUDGET["detect"]["img_size"] // 4),
                       "--device", "cpu"]}[task]
    js.parent.mkdir(parents=True, exist_ok=True)
    run_logged([*CLI, task, "eval", "--checkpoint", str(ck), *args, "--json", str(js)], out / "logs" / f"{name}.eval.log")
    return json.loads(js.read_text())


def finetune(task: str, arm: str, seed: int, out: Path, encoder: str = "lsknet_t") -> dict:
    name = f"{task}_{arm}_s{seed}"
    train(name, finetune_cmd(task, arm, seed, out, encoder), out)
    m = evaluate(task, name, out)
    done = json.loads((out / "runs" / name / "train.done").read_text())
    return {"task": task, "arm": arm, "seed": seed, "metric": METRIC[task], "value": m[METRIC[task]],
            "train_seconds": done["seconds"], "resumed": done["resumed"]}


# --- report --------------------------------------------------------------------------------------
def table(rows: list[dict]) -> str:
    head = "| task (metric) | " + " | ".join({"scratch": "(a) scratch", "seg": "(b) seg-only pretrain",
                                            "mtp": "(c) MTP pretrain"}[a] for a in ARMS) + " |"
    lines = [head, "|---|" + "---|" * len(ARMS)]
    for task in TASKS:
        cells = []
        for arm in ARMS:
            v = [r["value"] for r in rows if r["task"] == task and r["arm"] == arm and r["value"] is not None]
            if not v:
                cells.append("-")
            elif len(v) == 1:
                cells.append(f"{v[0]:.3f} (1 seed)")
            else:
                cells.append(f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f} ({len(v)} seeds)")
        lines.append(f"| {LABEL[task]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def loss_summary(run_dir: Path) -> dict:
    """Logged training loss of a pretraining run: the first value, the mean of the last five."""
    import csv

    with open(run_dir / "metrics.csv") as f:
        v = [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(f) if r.get("train/loss")]
    return {"steps_logged": [v[0][0], v[-1][0]], "loss_first": v[0][1],
            "loss_last5_mean": statistics.mean(x for _, x in v[-5:])} if v else {}


def collect(out: Path, seeds: list[int], tasks: list[str]) -> tuple[dict, list[dict]]:
    """What has finished so far (``--report-only``): pretraining runs and every scored cell."""
    pre, rows = {}, []
    for arm in ("mtp", "seg"):
        done = out / "runs" / f"pretrain_{arm}" / "train.done"
        if done.exists():
            pre[arm] = {**json.loads(done.read_text()), **loss_summary(done.parent)}
    for s in seeds:
        for t in tasks:
            for a in ARMS:
                name = f"{t}_{a}_s{s}"
                js, done = out / "eval" / f"{name}.json", out / "runs" / name / "train.done"
                if js.exists() and done.exists():
                    d = json.loads(done.read_text())
                    rows.append({"task": t, "arm": a, "seed": s, "metric": METRIC[t],
                                 "value": json.loads(js.read_text())[METRIC[t]], "train_seconds": d["seconds"],
                                 "resumed": d["resumed"]})
    return pre, rows


def write_report(out: Path, rows: list[dict], pre: dict, args) -> None:
    res = {"budget": BUDGET, "heldout": HELDOUT, "dota_pretrain": DOTA_PRETRAIN, "det_train": DET_TRAIN,
           "seeds": args.seeds, "instance": args.instance, "encoder": args.encoder, "pretrain": pre,
           "runs": sorted(rows, key=lambda r: (TASKS.index(r["task"]), ARMS.index(r["arm"]), r["seed"]))}
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(res, indent=2))
    tmp.replace(out / "results.json")
    (out / "table.md").write_text(table(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/evidence_mtp"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (each one thread)")
    ap.add_argument("--instance", action="store_true", help="MTP arm adds model.tasks instance (Mask R-CNN)")
    ap.add_argument("--encoder", default="lsknet_t", choices=sorted(ENCODERS), help="encoder of every arm")
    ap.add_argument("--prepare-only", action="store_true")
    ap.add_argument("--report-only", action="store_true", help="only collect finished runs into the report")
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        pre, rows = collect(out, args.seeds, args.tasks)
        write_report(out, rows, pre, args)
        print(table(rows))
        return
    cfgs = prepare(out, args.instance, args.encoder)
    if args.prepare_only:
        return
    pre: dict = {}
    rows: list[dict] = []
    # one pool: the pretrainings first, then seed 0 of every cell, then the other seeds; a scratch cell
    # runs while the pretrainings do, a pretrained cell waits for its encoder (submitted after it: no deadlock)
    with ThreadPoolExecutor(args.jobs) as ex:
        pf = {arm: ex.submit(train, f"pretrain_{arm}", [*CLI, "pretrain", "mtp", "--config", str(c)], out)
              for arm, c in cfgs.items()}

        def cell(t: str, a: str, s: int) -> dict:
            if a in pf:
                pf[a].result()
            return finetune(t, a, s, out, args.encoder)

        # first seed arm by arm (scratch cells overlap the pretrainings); later seeds as whole scratch / seg /
        # mtp triples, the cheap tasks (classify, segment) for every seed before the slow ones (change, detect),
        # so a run cut short by the clock still has whole triples
        jobs = [(t, a, args.seeds[0]) for a in ARMS for t in args.tasks]
        for group in (("classify", "segment"), ("change", "detect")):
            jobs += [(t, a, s) for s in args.seeds[1:] for t in args.tasks if t in group for a in ARMS]
        futs = {ex.submit(cell, t, a, s): (t, a, s) for t, a, s in jobs}
        for arm, f in pf.items():
            try:
                f.result()
                rd = out / "runs" / f"pretrain_{arm}"
                pre[arm] = {**json.loads((rd / "train.done").read_text()), **loss_summary(rd)}
            except Exception as exc:
                log(f"FAILED pretrain {arm}: {exc}")
        for f in as_completed(futs):
            t, a, s = futs[f]
            try:
                rows.append(f.result())
            except Exception as exc:  # one broken cell must not hide the others
                log(f"FAILED {t} {a} s{s}: {exc}")
                rows.append({"task": t, "arm": a, "seed": s, "metric": METRIC[t], "value": None, "error": str(exc)})
            write_report(out, rows, pre, args)
    write_report(out, rows, pre, args)
    print(table(rows))


if __name__ == "__main__":
    main()
