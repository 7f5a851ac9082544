"""``rsvision demo``: small end-to-end jobs on generated data, no download, CPU-friendly.

``rsvision demo classify`` trains a small scene classifier on synthetic scenes (about a minute
on 2 CPU cores) and shows predictions and the confusion matrix. ``rsvision demo detect`` trains a
small LSKNet-T Oriented R-CNN on synthetic oriented objects and predicts a held-out GeoTIFF scene
(under 5 minutes). ``rsvision demo`` with no subcommand runs the README's main job,
:data:`DEFAULT_DEMO` (the detector demo).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from rsvision.cli._common import console

app = typer.Typer(help="End-to-end demos on generated data (no download needed).", invoke_without_command=True)

#: name of the subcommand ``rsvision demo`` runs when none is given (the README's main job)
DEFAULT_DEMO = "detect"

DemoOutOpt = Annotated[Optional[Path], typer.Option(
    "--out", help="Where to write data and the run (default: ./rsvision-demo, or -2, -3 ... when that holds one).")]
ViewOpt = Annotated[bool, typer.Option("--view", help="Then open the outputs in the local web viewer (rsvision view).")]


def demo_dir(out: Path | None) -> Path:
    """``--out``, else the first free ``./rsvision-demo[-N]``: a rerun never overwrites an earlier demo, and
    nothing is left hidden in the system's temp folder. Announced before any work."""
    base, n = Path(out) if out is not None else Path("rsvision-demo"), 1
    while out is None and base.exists() and any(base.iterdir()):
        n += 1
        base = Path(f"rsvision-demo-{n}")
    console.print(f"demo outputs in [bold]{base.resolve()}[/]", soft_wrap=True)
    return base


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="demo")


@app.callback()
def _default(ctx: typer.Context, out: DemoOutOpt = None, view: ViewOpt = False) -> None:
    """Run a demo; with no subcommand, the default one (``--out`` and ``--view`` apply to it)."""
    if ctx.invoked_subcommand is None:
        cmd = ctx.command.get_command(ctx, DEFAULT_DEMO)
        kwargs = {p.name: p.default for p in cmd.params}
        kwargs["out"], kwargs["view"] = out, view
        ctx.invoke(cmd.callback, **kwargs)


@app.command()
def classify(
    out: DemoOutOpt = None,
    model: Annotated[str, typer.Option("--model", help="timm / rsvision model name.")] = "resnet18",
    epochs: Annotated[int, typer.Option("--epochs")] = 6,
    img_size: Annotated[int, typer.Option("--img-size")] = 48,
    threads: Annotated[int, typer.Option("--threads", help="torch CPU threads (0: torch default; 1 on a busy machine).")] = 0,
) -> None:
    """Generate a 4-class scene dataset, train a classifier, show predictions and the confusion matrix."""
    import time

    from rsvision.data.synthetic.scenes import make_scene_dataset
    from rsvision.tasks import load_task, predict, train
    from rsvision.tasks.classification import ClassifyConfig

    base = demo_dir(out)
    data, run = base / "scenes", base / "run"
    t0 = time.time()
    if not data.exists():
        make_scene_dataset(data, num_classes=4, per_class=30, size=64, seed=0)
    console.print(f"[bold]1.[/] synthetic scenes (4 classes x 30, 64 px): {data}")
    cfg = ClassifyConfig()
    cfg.data.root, cfg.data.img_size, cfg.data.batch_size = str(data), img_size, 16
    cfg.model.name = model
    cfg.optim.lr, cfg.optim.warmup_steps = 2e-3, 2  # half of the 4 steps per epoch
    t = cfg.trainer
    t.out, t.max_epochs, t.threads, t.device, t.max_time, t.log_every_n_steps = str(run), epochs, threads or None, "cpu", 3, 2
    console.print(f"[bold]2.[/] training {model} for {epochs} epochs -> {run}")
    result = train(cfg)
    m = result.test
    task = load_task(result.checkpoint)
    rows = [(line.split(",")[1], line.split(",")[2].strip())
            for line in (run / "splits.csv").read_text().splitlines()[1:] if line.startswith("test,")]
    sample = rows[:: max(1, len(rows) // 8)][:8]
    preds = list(predict(task, [data / p for p, _ in sample], top_k=2))
    tb = Table(title="3. predictions on held-out test images")
    for c in ("image", "true", "predicted", "probability", "runner-up"):
        tb.add_column(c)
    for (path, true), p in zip(sample, preds):
        (c1, p1), (c2, p2) = p["top"][0], p["top"][1]
        ok = "green" if c1 == true else "red"
        tb.add_row(Path(path).name, true, f"[{ok}]{c1}[/]", f"{100 * p1:.1f}%", f"{c2} {100 * p2:.1f}%")
    console.print(tb)
    if m is not None:
        console.print(f"[bold]4.[/] test split: OA {100 * m['overall_accuracy']:.1f}%, AA "
                      f"{100 * m['average_accuracy']:.1f}%, kappa {m['kappa']:.3f} on {m['num_samples']} images")
    console.print(f"   confusion matrix: [bold]{run / 'confusion_matrix.png'}[/]; curves: {run / 'curves.png'}")
    console.print(f"   done in {time.time() - t0:.0f} s. Same with the CLI:\n"
                  f"   rsvision classify train --data {data} --model {model} --img-size {img_size} "
                  f"--epochs {epochs} --out {run}\n"
                  f"   rsvision classify eval --checkpoint {run / 'best.ckpt'} --data {data} --split test\n"
                  f"   rsvision classify predict --checkpoint {run / 'best.ckpt'} {data}/*/*_000.png")


@app.command()
def detect(
    out: DemoOutOpt = None,
    minutes: Annotated[float, typer.Option("--minutes", help="Training budget (wall clock).")] = 3.5,
    train_images: Annotated[int, typer.Option("--train-images", help="Synthetic 192 px training images.")] = 240,
    scene_size: Annotated[int, typer.Option("--scene-size", help="Held-out GeoTIFF scene size (px).")] = 1024,
    threads: Annotated[int, typer.Option("--threads", help="torch compute threads (plus one data worker).")] = 1,
    view: ViewOpt = False,
) -> None:
    """Synthetic oriented objects -> train a small LSKNet-T Oriented R-CNN -> predict a held-out GeoTIFF scene."""
    import time

    from rsvision.cli.detect import print_detect_metrics
    from rsvision.tasks.detect_demo import run_detect_demo

    base = demo_dir(out)
    t0 = time.time()
    res = run_detect_demo(base, minutes=minutes, train_images=train_images, scene_size=scene_size, threads=threads,
                          console=console)
    print_detect_metrics(res["metrics"], title=f"held-out {scene_size}x{scene_size} scene")
    console.print(f"[bold]mAP@0.5 {100 * res['mAP']:.1f}[/] ({res['detections']} detections); "
                  f"drawn boxes: [bold]{res['png']}[/]; GeoJSON (UTM): [bold]{res['geojson']}[/]")
    console.print(f"   done in {time.time() - t0:.0f} s ({res['timings']}). Same with the CLI:\n"
                  f"   rsvision detect predict --checkpoint {res['checkpoint']} {base / 'data' / 'scene.tif'} "
                  f"--out {base / 'prediction'}")
    if view:
        from rsvision.cli.view import serve

        serve(base)
