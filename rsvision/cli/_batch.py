"""The ``--cluster`` / STAC branch shared by every ``<task> predict`` (:func:`rsvision.tasks.batch.predict_many`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import typer

from rsvision.cli._common import console

__all__ = ["wants_batch", "run_many", "split_names"]


def split_names(text: str | None) -> list[str] | None:
    """``"red, green,blue"`` -> ``["red", "green", "blue"]`` (None stays None)."""
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise typer.BadParameter(f"expected comma-separated names, got {text!r}", param_hint="--assets")
    return names


def wants_batch(cluster: str | None, inputs: Sequence[str], assets: str | None = None) -> bool:
    """Run through Dask when ``--cluster`` or ``--assets`` is given or an input is a STAC file."""
    from rsvision.data.stac import is_stac_file

    return bool(cluster) or assets is not None or any(is_stac_file(x) for x in inputs)


def run_many(checkpoint: Path, inputs: Sequence[str], out: Path, cluster: str | None, assets: str | None,
             crs: str | None, device: str | None, exist_ok: bool, task_name: str, **predict_kwargs: Any) -> None:
    """Predict every scene over the cluster, print what was done / skipped / failed (with reasons)
    and the merged outputs; exit 1 when a scene failed (rerunning the command retries those)."""
    from rich.table import Table

    from rsvision.tasks.batch import predict_many

    res = predict_many(checkpoint, inputs, out, cluster=cluster, assets=split_names(assets), crs=crs,
                       device=device or "auto", progress=True, exist_ok=exist_ok, task=task_name, **predict_kwargs)
    console.print(f"{len(res.done)} scene(s) done, {len(res.skipped)} already done (skipped), "
                  f"{len(res.failed)} failed, on {res.workers} worker(s) in {res.seconds:.1f} s "
                  f"({res.scenes_per_hour:.0f} scenes/h)")
    if res.failed:
        t = Table(title="failed scenes")
        t.add_column("scene")
        t.add_column("reason")
        for m in res.failed:
            t.add_row(m["scene"], str(m["reason"]))
        console.print(t)
    for kind, v in res.outputs.items():
        if isinstance(v, dict) and "path" in v:
            v = f"{v['path']} ({v['crs']}, {v['rows']} rows)"
        console.print(f"  {kind}: {v}")
    console.print(f"per-scene outputs and manifests in [bold]{out}[/]/<scene>/; summary in {out / 'summary.json'}")
    if res.failed:
        console.print(f"[red]{len(res.failed)} scene(s) failed[/]: run the same command again to retry them")
        raise typer.Exit(1)
