"""``rsvision dota split|merge|eval|submit``: the DOTA toolchain (a thin layer over :mod:`rsvision.data.dota`)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rsvision.cli._common import JsonOpt, console, write_json
from rsvision.errors import ConfigError

app = typer.Typer(help="DOTA toolchain: split large images, merge patch detections, evaluate (devkit task 1), "
                  "make the server submission.", no_args_is_help=True)

_MULTI = {"allow_extra_args": True, "ignore_unknown_options": True}


def _multi_values(args: list[str]) -> argparse.Namespace:
    """``--sizes 1024 512 --gaps 200 --rates 0.5 1.0 1.5`` (space-separated lists, MMRotate style)."""
    p = argparse.ArgumentParser(prog="rsvision dota split", add_help=False, exit_on_error=False)
    p.add_argument("--sizes", nargs="+", type=int, action="extend")
    p.add_argument("--gaps", nargs="+", type=int, action="extend")
    p.add_argument("--rates", nargs="+", type=float, action="extend")
    try:
        ns, rest = p.parse_known_args(args)
    except (argparse.ArgumentError, ValueError) as exc:
        raise ConfigError(f"bad --sizes/--gaps/--rates value: {exc}") from exc
    if rest:
        raise ConfigError(f"unexpected argument(s): {' '.join(rest)}")
    return ns


@app.command(context_settings=_MULTI)
def split(
    ctx: typer.Context,
    img_dir: Annotated[Path, typer.Option("--img-dir", help="Folder of full-size images.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (images/ and annfiles/ are created).")],
    ann_dir: Annotated[Optional[Path], typer.Option("--ann-dir", help="labelTxt folder (optional).")] = None,
    iof_thr: Annotated[float, typer.Option("--iof-thr", help="Keep an object in a window when >= this "
                                           "fraction of its area lies inside.")] = 0.7,
    img_rate_thr: Annotated[float, typer.Option("--img-rate-thr", help="Drop windows the image covers "
                                                "by no more than this fraction.")] = 0.6,
    padding: Annotated[bool, typer.Option("--padding/--no-padding", help="Pad border patches to the full "
                                          "window (MMRotate value BGR 104,116,124).")] = True,
    workers: Annotated[int, typer.Option("--workers", help="Parallel processes.")] = 1,
    save_ext: Annotated[str, typer.Option("--save-ext", help="Patch image format.")] = ".png",
    json_out: JsonOpt = None,
) -> None:
    """Split images into overlapping patches exactly like MMRotate's img_split.py.

    Window lists take several values, space-separated: --sizes 1024 [N ...] (default 1024),
    --gaps 200 [N ...] (one per size, default 200), --rates 1.0 [R ...] (default 1.0; a rate r
    uses windows of size/r original pixels, e.g. multi-scale: --rates 0.5 1.0 1.5 --gaps 500).
    """
    from rsvision.data.dota import SplitConfig, split_dataset

    ns = _multi_values(list(ctx.args))
    cfg = SplitConfig(sizes=ns.sizes or [1024], gaps=ns.gaps or [200], rates=ns.rates or [1.0], iof_thr=iof_thr,
                      img_rate_thr=img_rate_thr, padding=padding, save_ext=save_ext)
    n = sum(1 for p in img_dir.iterdir() if p.is_file()) if img_dir.is_dir() else 0
    cols = (TextColumn("[bold]split"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.description}"))
    with Progress(*cols, console=console, transient=False) as prog:
        task = prog.add_task("", total=n or None)
        summary = split_dataset(img_dir, ann_dir, out, cfg, workers=workers,
                                progress=lambda name: prog.update(task, advance=1, description=name))
    t = Table(title=f"dota split -> {out}")
    for k in ("images", "patches", "objects"):
        t.add_column(k, justify="right")
    t.add_column("failed", justify="right")
    t.add_row(str(summary["images"]), str(summary["patches"]), str(summary["objects"]), str(len(summary["failed"])))
    console.print(t)
    for name, why in summary["failed"].items():
        console.print(f"[yellow]skipped[/] {name}: {why}")
    if json_out is not None:
        write_json({"sizes": list(cfg.sizes), "gaps": list(cfg.gaps), "rates": list(cfg.rates), **summary}, json_out)


@app.command()
def merge(
    dets: Annotated[Path, typer.Option("--dets", help="Folder of patch-level Task1_<class>.txt files.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the full-image Task1 files.")],
    iou_thr: Annotated[float, typer.Option("--iou-thr", help="Per-class rotated NMS IoU threshold.")] = 0.1,
    json_out: JsonOpt = None,
) -> None:
    """Merge patch detections onto the full images (shift by the patch offset + per-class rotated NMS)."""
    from rsvision.data.dota import merge_task1_dir

    counts = merge_task1_dir(dets, out, iou_thr)
    if json_out is not None:
        write_json({"iou_thr": iou_thr, "detections": counts}, json_out)
    t = Table(title=f"dota merge -> {out}")
    t.add_column("class")
    t.add_column("detections", justify="right")
    for c, k in counts.items():
        t.add_row(c, str(k))
    console.print(t)


@app.command("eval")
def eval_(
    dets: Annotated[Path, typer.Option("--dets", help="Folder of Task1_<class>.txt (image score x1 y1 ... y4).")],
    ann_dir: Annotated[Path, typer.Option("--ann-dir", help="labelTxt folder of the full images.")],
    metric: Annotated[str, typer.Option("--metric", help="voc07 (11-point, devkit default) | voc12 (all-point).")] = "voc07",
    iou_thr: Annotated[float, typer.Option("--iou-thr", help="A match needs IoU > this (strict).")] = 0.5,
    version: Annotated[Optional[str], typer.Option("--version", help="Class list: dota1.0 | dota1.5 | dota2.0 "
                                                   "(default: the smallest that fits the data).")] = None,
    json_out: JsonOpt = None,
) -> None:
    """Evaluate Task1 detections exactly like the official DOTA devkit (task 1, oriented boxes)."""
    from rsvision.data.dota import class_names, evaluate

    if metric not in ("voc07", "voc12"):
        raise ConfigError(f"--metric must be voc07 or voc12, got {metric!r}")
    classes = list(class_names(version)) if version else None
    res = evaluate(dets, ann_dir, classes=classes, iou_thr=iou_thr, metric=metric)
    t = Table(title=f"DOTA task 1 ({metric}, IoU > {iou_thr})")
    t.add_column("class")
    t.add_column("num_gt", justify="right")
    t.add_column("AP", justify="right")
    for c, ap in res["AP"].items():
        t.add_row(c, str(res["num_gt"][c]), "-" if ap is None else f"{ap:.4f}")
    t.add_section()
    t.add_row("[bold]mAP", str(sum(res["num_gt"].values())), "-" if res["mAP"] is None else f"[bold]{res['mAP']:.4f}")
    console.print(t)
    if json_out is not None:
        p = write_json(res, json_out)
        console.print(f"metrics written to [bold]{p}[/]")


@app.command()
def submit(
    dets: Annotated[Path, typer.Option("--dets", help="Folder of merged full-image Task1_<class>.txt files.")],
    out: Annotated[Path, typer.Option("--out", help="Zip file to write.")],
    version: Annotated[str, typer.Option("--version", help="dota1.0 | dota1.5 | dota2.0.")] = "dota1.0",
    allow_patches: Annotated[bool, typer.Option("--allow-patches", help="Accept patch-level image names.")] = False,
) -> None:
    """Write the Task1 zip the DOTA evaluation server expects (one file per class, validated)."""
    from rsvision.data.dota import make_submission

    counts = make_submission(dets, out, version=version, allow_patches=allow_patches)
    console.print(f"wrote [bold]{out}[/]: {len(counts)} class files, {sum(counts.values())} detections")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="dota")
