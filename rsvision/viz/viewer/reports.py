"""Run directories and eval JSONs as data for the page: curves, per-class tables, confusion matrices,
and each class's worst examples when the JSON carries per-image results.

The metric JSON keys are fixed by CONVENTIONS ("Metric JSON"); per-class tables are read from the
``{class: value}`` members every task writes (``AP`` / ``num_gt``, ``IoU`` / ``F1``, ``per_class``).
Per-image results are an optional ``per_image`` list: ``{"image", "true", "pred", "score"}`` records
(classification: the confident mistakes of a class come first) or ``{"image", "<metric>": {class: value}}``
records (lowest value first).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["run_summary", "eval_summary"]

_SKIP = {"task", "classes", "confusion_matrix", "per_image", "per_class", "metric"}


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


def _worst(d: dict, json_path: Path, catalog, n: int = 12) -> dict[str, list[dict]]:
    from rsvision.viz.viewer.layers import PathRefused

    per = d.get("per_image")
    if not isinstance(per, list):
        return {}
    out: dict[str, list[dict]] = {}

    def item(rec: dict, value: Any) -> dict:
        img = str(rec.get("image", ""))
        res = {"image": img, "value": value, "true": rec.get("true"), "pred": rec.get("pred")}
        p = Path(img) if Path(img).is_absolute() else json_path.parent / img
        try:
            rel = p.resolve().relative_to(catalog.root).as_posix()
            res["rel"] = catalog.file(rel).relative_to(catalog.root).as_posix()
            res["view"] = next((w.id for w in catalog.views.values() if w.base is not None and w.base.rel == rel), None)
        except (ValueError, OSError, PathRefused):
            pass  # outside PATH: named, not linked
        return res

    recs = [r for r in per if isinstance(r, dict) and "image" in r]
    if recs and "true" in recs[0]:
        named = [str(c) for c in d.get("classes") or []]
        for c in named + sorted({str(r["true"]) for r in recs} - set(named)):
            bad = [r for r in recs if str(r["true"]) == c and str(r.get("pred")) != c]
            bad.sort(key=lambda r: -float(r.get("score") or 0))
            out[c] = [item(r, r.get("score")) for r in bad[:n]]
        return out
    for key in ("IoU", "F1", "AP", "accuracy"):
        if recs and isinstance(recs[0].get(key), dict):
            classes = sorted({c for r in recs for c in r[key]})
            for c in classes:
                vals = [(r[key][c], r) for r in recs if _num(r[key].get(c))]
                vals.sort(key=lambda t: t[0])
                out[c] = [item(r, v) for v, r in vals[:n]]
            break
    return out


def eval_summary(e: dict, catalog) -> dict:
    """The page's view of an eval JSON: headline numbers, the per-class table, the confusion matrix and
    the worst examples per class."""
    d = json.loads(Path(e["path"]).read_text())
    cols, rows = _table(d)
    headline = {k: v for k, v in d.items() if _num(v) and k not in _SKIP}
    return {"id": e["id"], "rel": e["rel"], "task": d.get("task"), "metric": d.get("metric"), "headline": headline,
            "columns": cols, "rows": rows, "classes": d.get("classes"), "confusion_matrix": d.get("confusion_matrix"),
            "worst": _worst(d, Path(e["path"]), catalog)}
