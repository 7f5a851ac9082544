"""Run directories and eval JSONs as data for the page: curves, per-class tables, confusion matrices,
and each class's worst examples when the JSON carries per-image results.

The metric JSON keys are fixed by CONVENTIONS ("Metric JSON"); per-class tables are read from the
``{class: value}`` members every task writes (``AP`` / ``num_gt``, ``IoU`` / ``F1``, ``per_class``).
Per-image results are the optional ``per_image`` records every task's eval writes (their format:
:mod:`rsvision.tasks.per_image`; a list, or the name of a ``.per_image.jsonl`` file beside the JSON);
:func:`worst_records` ranks them per class.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["run_summary", "eval_summary", "worst_records", "add_eval_examples", "image_path"]

_SKIP = {"task", "classes", "confusion_matrix", "per_image", "per_image_count", "per_class", "metric"}


def run_summary(run: dict) -> dict:
    """Series of ``metrics.csv`` (``{metric: [[epoch, step, value], ...]}``), the last value of each and the
    run's files."""
    from rsvision.viz.plots import read_metrics_csv

    series = read_metrics_csv(run["path"] / "metrics.csv")
    clean = {k: [[None if math.isnan(a) else a, None if math.isnan(b) else b, v] for a, b, v in pts]
             for k, pts in series.items()}
    return {"id": run["id"], "rel": run["rel"], "files": run["files"], "series": clean,
            "last": {k: pts[-1][2] for k, pts in series.items() if pts}}


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _table(d: dict) -> tuple[list[str], list[dict]]:
    cols: list[str] = []
    rows: dict[str, dict] = {}
    for cls, vals in (d.get("per_class") or {}).items():
        if isinstance(vals, dict):
            for k, v in vals.items():
                if _num(v) or v is None:
                    rows.setdefault(str(cls), {})[k] = v
                    if k not in cols:
                        cols.append(k)
    for k, v in d.items():
        if k in _SKIP or not isinstance(v, dict) or not v or not all(_num(x) or x is None for x in v.values()):
            continue
        cols.append(k)
        for cls, x in v.items():
            rows.setdefault(str(cls), {})[k] = x
    order = [str(c) for c in d.get("classes") or []] + sorted(set(rows) - {str(c) for c in d.get("classes") or []})
    return cols, [{"class": c, **rows[c]} for c in order if c in rows]


def _records(d: dict, json_path: Path) -> list[dict]:
    from rsvision.outputs import read_per_image

    return [r for r in read_per_image(d.get("per_image"), json_path) if "image" in r]


def worst_records(d: dict, json_path: Path, n: int = 12) -> dict[str, list[tuple[Any, dict]]]:
    """``{class: [(value, record), ...]}``, the ``n`` worst per class (:mod:`rsvision.tasks.per_image`):
    classify: lowest ``p_true`` of the class's images (records without it: its mistakes, most confident
    first); ``errors``: most first, images with none left out; ``IoU`` / ``F1`` / ``AP`` / ``accuracy``:
    lowest first, images where the class is undefined (null) left out."""
    recs = _records(d, json_path)
    out: dict[str, list[tuple[Any, dict]]] = {}
    if recs and "true" in recs[0]:
        named = [str(c) for c in d.get("classes") or []]
        for c in named + sorted({str(r.get("true")) for r in recs} - set(named)):
            mine = [r for r in recs if str(r.get("true")) == c]
            if mine and all(_num(r.get("p_true")) for r in mine):
                out[c] = [(r["p_true"], r) for r in sorted(mine, key=lambda r: r["p_true"])[:n]]
            else:
                bad = sorted((r for r in mine if str(r.get("pred")) != c), key=lambda r: -float(r.get("score") or 0))
                out[c] = [(r.get("score"), r) for r in bad[:n]]
        return out
    for key, most in (("errors", True), ("IoU", False), ("F1", False), ("AP", False), ("accuracy", False)):
        if recs and isinstance(recs[0].get(key), dict):
            for c in sorted({c for r in recs if isinstance(r.get(key), dict) for c in r[key]}):
                vals = [(r[key][c], r) for r in recs if isinstance(r.get(key), dict) and _num(r[key].get(c))
                        and (not most or r[key][c] > 0)]
                vals.sort(key=lambda t: -t[0] if most else t[0])
                out[c] = vals[:n]
            break
    return out


def image_path(rec: dict, json_path: Path) -> Path:
    """A record's image: absolute as written, or relative to the eval JSON's folder."""
    img = Path(str(rec.get("image", "")))
    return img if img.is_absolute() else json_path.parent / img


def add_eval_examples(catalog) -> None:
    """Allow-list the worst examples of every eval under PATH that lie outside it (tile views only,
    :meth:`~rsvision.viz.viewer.layers.Catalog.add_examples`)."""
    for e in catalog.evals.values():
        try:
            d = json.loads(Path(e["path"]).read_text())
        except (OSError, ValueError):
            continue
        worst = worst_records(d, Path(e["path"]))
        catalog.add_examples([image_path(r, Path(e["path"])) for lst in worst.values() for _, r in lst])


def _worst(d: dict, json_path: Path, catalog, n: int = 12) -> dict[str, list[dict]]:
    from rsvision.viz.viewer.layers import PathRefused

    def item(rec: dict, value: Any) -> dict:
        res = {"image": str(rec.get("image", "")), "value": value, "true": rec.get("true"), "pred": rec.get("pred")}
        for k in ("FP", "missed"):
            if isinstance(rec.get(k), dict):
                res[k] = rec[k]
        p = image_path(rec, json_path)
        res["view"] = catalog.view_of_image(p)
        try:
            rel = p.resolve().relative_to(catalog.root).as_posix()
            res["rel"] = catalog.file(rel).relative_to(catalog.root).as_posix()
        except (ValueError, OSError, PathRefused):
            pass  # outside PATH: a tile view when allow-listed, never the file itself
        return res

    return {c: [item(r, v) for v, r in lst] for c, lst in worst_records(d, json_path, n).items()}


def eval_summary(e: dict, catalog) -> dict:
    """The page's view of an eval JSON: headline numbers, the per-class table, the confusion matrix and
    the worst examples per class."""
    d = json.loads(Path(e["path"]).read_text())
    cols, rows = _table(d)
    headline = {k: v for k, v in d.items() if _num(v) and k not in _SKIP}
    return {"id": e["id"], "rel": e["rel"], "task": d.get("task"), "metric": d.get("metric"), "headline": headline,
            "columns": cols, "rows": rows, "classes": d.get("classes"), "confusion_matrix": d.get("confusion_matrix"),
            "worst": _worst(d, Path(e["path"]), catalog)}
