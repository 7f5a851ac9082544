"""``rsvision dota split|merge|eval|submit``: the DOTA toolchain (a thin layer over :mod:`rsvision.data.dota`).

Outputs follow CONVENTIONS "Outputs": ``split`` / ``merge`` claim their ``--out`` folder (refused when it
holds results unless ``--exist-ok``; locked while they write), ``submit`` refuses an existing zip unless
``--exist-ok``; every file is written atomically and nothing a run did not write is deleted. Bad options
fail before any work. User errors (:class:`rsvision.errors.RSVisionError`) print one ``error:`` line
naming the file / option and exit with status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from rsvision.cli._common import ExistOkOpt, JsonOpt, check_writable_file, console, write_json
from rsvision.errors import ConfigError, RSVisionError

app = typer.Typer(help="DOTA toolchain: split large images, merge patch detections, evaluate (devkit task 1), "
                  "make the server submission.", no_args_is_help=True)

_MULTI = {"allow_extra_args": True, "ignore_unknown_options": True}


def _user_errors(fn):
    """Run a command; a user error is one ``error:`` line on stderr and exit status 2 (as ``rsvision``'s
    entry point does, but also under ``typer.testing.CliRunner``)."""

    @functools.wraps(fn)
    def command(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RSVisionError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc

    return command


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


@contextlib.contextmanager
def _quiet(name: str):
    """Hold back a library logger's warnings while the command collects and prints them itself."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _class_list(version: str) -> list[str]:
    from rsvision.data.dota import class_names

    try:
        return list(class_names(version))
    except ValueError as exc:
        raise ConfigError(f"--version: {exc}") from exc


_FRACTION = {"min": 0.0, "max": 1.0}  # typer range of a fraction option


@app.command(context_settings=_MULTI)
@_user_errors
def split(
    ctx: typer.Context,
    img_dir: Annotated[Path, typer.Option("--img-dir", help="Folder of full-size images.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (images/ and annfiles/ are created).")],
    ann_dir: Annotated[Optional[Path], typer.Option("--ann-dir", help="labelTxt folder (optional).")] = None,
    iof_thr: Annotated[float, typer.Option("--iof-thr", **_FRACTION, help="Keep an object in a window when >= "
                                           "this fraction of its area lies inside.")] = 0.7,
    img_rate_thr: Annotated[float, typer.Option("--img-rate-thr", **_FRACTION, help="Drop windows the image "
                                                "covers by no more than this fraction.")] = 0.6,
    padding: Annotated[bool, typer.Option("--padding/--no-padding", help="Pad border patches to the full "
                                          "window (MMRotate value BGR 104,116,124).")] = True,
    keep_empty: Annotated[bool, typer.Option("--keep-empty/--no-keep-empty", help="Write windows without "
                                             "objects (MMRotate does); --no-keep-empty needs --ann-dir.")] = True,
    max_pixels: Annotated[Optional[int], typer.Option("--max-pixels", min=1, help="Refuse images with more "
                                                      "pixels (default $RSVISION_MAX_PIXELS, else 2**31).")] = None,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Report truncated / corrupt images and split the "
                                           "others (default: stop at the first one).")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="A bad label line or self-intersecting polygon is "
                                         "an error (default: a file:line warning).")] = False,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Parallel processes.")] = 1,
    save_ext: Annotated[str, typer.Option("--save-ext", help="Patch image format.")] = ".png",
    exist_ok: ExistOkOpt = False,
    json_out: JsonOpt = None,
) -> None:
    """Split images into overlapping patches exactly like MMRotate's img_split.py.

    Window lists take several values, space-separated: --sizes 1024 [N ...] (default 1024),
    --gaps 200 [N ...] (one per size, default 200), --rates 1.0 [R ...] (default 1.0; a rate r
    uses windows of size/r original pixels, e.g. multi-scale: --rates 0.5 1.0 1.5 --gaps 500).
    Windows that are all nodata (dataset mask / alpha) are not written.
    """
    from rsvision.data.dota import SplitConfig, check_split_config, split_dataset

    ns = _multi_values(list(ctx.args))
    cfg = SplitConfig(sizes=ns.sizes or [1024], gaps=ns.gaps or [200], rates=ns.rates or [1.0], iof_thr=iof_thr,
                      img_rate_thr=img_rate_thr, padding=padding, save_ext=save_ext, keep_empty=keep_empty,
                      max_pixels=max_pixels)
    check_split_config(cfg)
    check_writable_file(json_out, "--json")
    n = sum(1 for p in img_dir.iterdir() if p.is_file()) if img_dir.is_dir() else 0
    from rsvision.progress import progress

    with progress(console, transient=False) as prog, _quiet("rsvision.data.dota.labels"):
        task = prog.add_task("split", total=n or None)
        summary = split_dataset(img_dir, ann_dir, out, cfg, workers=workers, exist_ok=exist_ok, skip_bad=skip_bad,
                                strict=strict, progress=lambda name: prog.update(task, advance=1,
                                                                                 description=f"split {name}"))
    t = Table(title=f"dota split -> {out}")
    for k in ("images", "patches", "objects", "nodata windows", "empty windows", "failed"):
        t.add_column(k, justify="right")
    t.add_row(str(summary["images"]), str(summary["patches"]), str(summary["objects"]),
              str(summary["skipped_nodata"]), str(summary["skipped_empty"]), str(len(summary["failed"])))
    console.print(t)
    for name, why in summary["failed"].items():
        typer.echo(f"skipped {name}: {why}", err=True)
    issues = summary["label_issues"]
    for msg in issues[:20]:  # label lines skipped or kept with a warning (file:line: reason)
        typer.echo(f"warning: {msg}", err=True)
    if len(issues) > 20:
        typer.echo(f"warning: ... {len(issues) - 20} more label problems (see the --json summary)", err=True)
    if json_out is not None:
        write_json({"sizes": list(cfg.sizes), "gaps": list(cfg.gaps), "rates": list(cfg.rates), **summary}, json_out)


@app.command()
@_user_errors
def merge(
    dets: Annotated[Path, typer.Option("--dets", help="Folder of patch-level Task1_<class>.txt files.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the full-image Task1 files.")],
    iou_thr: Annotated[float, typer.Option("--iou-thr", **_FRACTION, help="Per-class rotated NMS IoU threshold.")] = 0.1,
    exist_ok: ExistOkOpt = False,
    json_out: JsonOpt = None,
) -> None:
    """Merge patch detections onto the full images (shift by the patch offset + per-class rotated NMS)."""
    from rsvision.data.dota import merge_task1_dir

    check_writable_file(json_out, "--json")
    counts = merge_task1_dir(dets, out, iou_thr, exist_ok=exist_ok)
    if json_out is not None:
        write_json({"iou_thr": iou_thr, "detections": counts}, json_out)
    t = Table(title=f"dota merge -> {out}")
    t.add_column("class")
    t.add_column("detections", justify="right")
    for c, k in counts.items():
        t.add_row(c, str(k))
    console.print(t)


@app.command("eval")
@_user_errors
def eval_(
    dets: Annotated[Path, typer.Option("--dets", help="Folder of Task1_<class>.txt (image score x1 y1 ... y4).")],
    ann_dir: Annotated[Path, typer.Option("--ann-dir", help="labelTxt folder of the full images.")],
    metric: Annotated[str, typer.Option("--metric", help="voc07 (11-point, devkit default) | voc12 (all-point).")] = "voc07",
    iou_thr: Annotated[float, typer.Option("--iou-thr", **_FRACTION, help="A match needs IoU > this (strict).")] = 0.5,
    version: Annotated[Optional[str], typer.Option("--version", help="Class list: dota1.0 | dota1.5 | dota2.0 | "
                                                   "dior (default: the smallest that fits the data).")] = None,
    json_out: JsonOpt = None,
    all_images: Annotated[bool, typer.Option(
        "--all-images", help="Score every label file in --ann-dir (default: only the images the detections name).")] = False,
) -> None:
    """Evaluate Task1 detections exactly like the official DOTA devkit (task 1, oriented boxes).

    A ground-truth class outside the class list is an error naming the label file and line. mAP averages
    the classes that have ground truth; the others have AP null ("-"). By default only the images named in
    the detections are scored (an image with no detection at all is then not counted: pass --all-images
    to score the whole --ann-dir, as the DOTA server does with its test set).
    """
    from rsvision.data.dota import evaluate
    from rsvision.data.dota.labels import read_task1_dir

    if metric not in ("voc07", "voc12"):
        raise ConfigError(f"--metric must be voc07 or voc12, got {metric!r}")
    classes = _class_list(version) if version else None
    check_writable_file(json_out, "--json")
    images = None
    if not all_images:
        images = sorted({d.image for rows in read_task1_dir(dets, classes).values() for d in rows})
        n_ann = sum(1 for _ in Path(ann_dir).glob("*.txt")) if Path(ann_dir).is_dir() else 0
        console.print(f"scoring the {len(images)} image(s) named in the detections (of {n_ann} label files; "
                      "--all-images for all)")
    res = evaluate(dets, ann_dir, classes=classes, iou_thr=iou_thr, metric=metric, strict_classes=True,
                   images=images)
    t = Table(title=f"DOTA task 1 ({metric}, IoU > {iou_thr})")
    t.add_column("class")
    t.add_column("num_gt", justify="right")
    t.add_column("AP", justify="right")
    for c, ap in res["AP"].items():
        t.add_row(c, str(res["num_gt"][c]), "-" if ap is None else f"{ap:.4f}")
    t.add_section()
    t.add_row("[bold]mAP", str(sum(res["num_gt"].values())), "-" if res["mAP"] is None else f"[bold]{res['mAP']:.4f}")
    console.print(t)
    if res["mAP"] is None:
        typer.echo(f"warning: no class has (non-difficult) ground truth in {ann_dir}: mAP is null", err=True)
    if json_out is not None:
        p = write_json(res, json_out)
        console.print(f"metrics written to [bold]{p}[/]")


@app.command()
@_user_errors
def submit(
    dets: Annotated[Path, typer.Option("--dets", help="Folder of merged full-image Task1_<class>.txt files.")],
    out: Annotated[Path, typer.Option("--out", help="Zip file to write.")],
    version: Annotated[str, typer.Option("--version", help="dota1.0 | dota1.5 | dota2.0.")] = "dota1.0",
    allow_patches: Annotated[bool, typer.Option("--allow-patches", help="Accept patch-level image names.")] = False,
    exist_ok: Annotated[bool, typer.Option("--exist-ok", help="Replace an existing zip (atomically).")] = False,
) -> None:
    """Write the Task1 zip the DOTA evaluation server expects (one file per class, validated)."""
    from rsvision.data.dota import make_submission

    classes = _class_list(version)
    counts = make_submission(dets, out, version=version, classes=classes, allow_patches=allow_patches,
                             exist_ok=exist_ok)
    console.print(f"wrote [bold]{out}[/]: {len(counts)} class files, {sum(counts.values())} detections")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="dota")
