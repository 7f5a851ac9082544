"""``rsvision dota ...`` under faults: used output folders, failed runs, bad data, bad options.

Every case checks the exit status (2 for what the user can fix), that the message names the file /
option, and that the output folder holds exactly what it held before (plus the good results).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import warnings
import zipfile

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from rsvision.cli import app
from rsvision.data import dota
from rsvision.errors import DataError


def _run(*args):
    return CliRunner().invoke(app, ["dota", *map(str, args)])


def _png(path, h, w, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _box(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _files(folder):
    """Every file under ``folder`` (relative path -> bytes); {} when it does not exist."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _no_leftovers(folder):
    hidden = [str(p) for p in folder.rglob(".*")] if folder.exists() else []
    assert hidden == [], hidden  # no temporary file, staging folder or lock left behind


def _tif(path, h, w, nodata=None, fill=None, tile=128, **kw):
    import rasterio
    from rasterio.windows import Window

    profile = dict(driver="GTiff", width=w, height=h, count=3, dtype="uint8", tiled=True, blockxsize=tile,
                   blockysize=tile, **kw)
    if nodata is not None:
        profile.update(nodata=nodata, sparse_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            for (x, y, ww, hh) in fill or []:
                dst.write(np.full((3, hh, ww), 9, np.uint8), window=Window(x, y, ww, hh))
    return path


SPLIT = ["--sizes", "128", "--gaps", "32"]


# --- 1. a used --out is refused; --exist-ok replaces same names and touches nothing else -------------
def test_resplit_into_used_out_is_refused_and_exist_ok_touches_nothing_else(tmp_path):
    src, out = tmp_path / "img", tmp_path / "out"
    _png(src / "a.png", 200, 200)
    assert _run("split", "--img-dir", src, "--out", out, *SPLIT).exit_code == 0
    first = _files(out)
    assert len(first) == 8  # 4 windows: 4 patches + 4 label files
    r = _run("split", "--img-dir", src, "--out", out, "--sizes", "64", "--gaps", "0")
    assert r.exit_code == 2 and str(out) in r.output and "--exist-ok" in r.output
    assert _files(out) == first
    (out / "notes.txt").write_text("mine")
    r = _run("split", "--img-dir", src, "--out", out, "--sizes", "64", "--gaps", "0", "--exist-ok")
    assert r.exit_code == 0, r.output
    now = _files(out)
    assert all(now[k] == v for k, v in first.items()) and now["notes.txt"] == b"mine"  # nothing deleted
    assert len(now) == len(first) + 1 + 2 * 16  # plus the 4 x 4 new windows
    _no_leftovers(out)


def test_split_into_a_folder_another_command_writes_is_refused(tmp_path):
    src, out = tmp_path / "img", tmp_path / "out"
    _png(src / "a.png", 100, 100)
    out.mkdir()
    (out / ".rsvision.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    r = _run("split", "--img-dir", src, "--out", out, *SPLIT, "--exist-ok")
    assert r.exit_code == 2 and "another rsvision command" in r.output
    assert list(out.iterdir()) == [out / ".rsvision.lock"]


def test_images_sharing_a_stem_get_distinct_patch_names(tmp_path):
    src, out = tmp_path / "img", tmp_path / "out"
    _png(src / "a.png", 100, 100, seed=1)
    _tif(src / "a.tif", 100, 100, fill=[(0, 0, 100, 100)])
    r = _run("split", "--img-dir", src, "--out", out, *SPLIT, "--json", tmp_path / "s.json")
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in (out / "images").iterdir())
    assert len(names) == 2 and len({n.split("__")[0] for n in names}) == 2  # neither overwrote the other


# --- 6. corrupt images: stop (nothing written for it) unless --skip-bad; nodata; budget ----------------
def test_truncated_png_stops_unless_skip_bad(tmp_path):
    src, out = tmp_path / "img", tmp_path / "out"
    _png(src / "a.png", 150, 150)
    data = _png(src / "b.png", 150, 150, seed=2).read_bytes()
    (src / "b.png").write_bytes(data[: len(data) // 2])
    r = _run("split", "--img-dir", src, "--out", out, *SPLIT)
    assert r.exit_code == 2 and "b.png" in r.output and "--skip-bad" in r.output
    assert {k.split("/")[1].split("__")[0] for k in _files(out)} == {"a"}  # the good results, nothing of b
    _no_leftovers(out)
    r = _run("split", "--img-dir", src, "--out", tmp_path / "o2", *SPLIT, "--skip-bad", "--json", tmp_path / "s.json")
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["images"] == 1 and "b.png" in s["failed"] and "b.png" in r.output


def test_truncated_geotiff_leaves_nothing_behind(tmp_path):
    src, out = tmp_path / "img", tmp_path / "out"
    src.mkdir()
    full = _tif(tmp_path / "full.tif", 512, 512, fill=[(0, 0, 512, 512)]).read_bytes()
    (src / "scene.tif").write_bytes(full[: len(full) // 2])  # the header is fine, the last tiles are gone
    r = _run("split", "--img-dir", src, "--out", out, *SPLIT)
    assert r.exit_code == 2 and "scene.tif" in r.output, r.output
    assert _files(out) == {} and not out.exists()  # the folder this run created is gone again
    out.mkdir()
    (out / "keep.txt").write_text("x")
    r = _run("split", "--img-dir", src, "--out", out, *SPLIT, "--exist-ok")
    assert r.exit_code == 2 and _files(out) == {"keep.txt": b"x"}
    _no_leftovers(out)


def test_sparse_geotiff_writes_only_windows_with_pixels(tmp_path):
    src, out = tmp_path / "img", tmp_path / "out"
    src.mkdir()
    _tif(src / "sparse.tif", 2048, 2048, nodata=0, fill=[(1100, 300, 200, 200)], tile=256)
    r = _run("split", "--img-dir", src, "--out", out, "--sizes", "512", "--gaps", "0", "--json", tmp_path / "s.json")
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["patches"] == 1 and s["skipped_nodata"] == 15
    assert sorted(_files(out)) == ["annfiles/sparse__512__1024___0.txt", "images/sparse__512__1024___0.png"]


def test_no_keep_empty_writes_only_windows_with_objects(tmp_path):
    src, ann, out = tmp_path / "img", tmp_path / "ann", tmp_path / "out"
    _png(src / "a.png", 220, 300)
    dota.write_label_txt(ann / "a.txt", np.array([_box(10, 10, 40, 40)], float), ["plane"])
    r = _run("split", "--img-dir", src, "--ann-dir", ann, "--out", out, *SPLIT, "--no-keep-empty")
    assert r.exit_code == 0, r.output
    labels = {k: v for k, v in _files(out).items() if k.startswith("annfiles/")}
    assert list(labels) == ["annfiles/a__128__0___0.txt"] and b"plane" in labels["annfiles/a__128__0___0.txt"]
    r = _run("split", "--img-dir", src, "--out", tmp_path / "o2", *SPLIT, "--no-keep-empty")
    assert r.exit_code == 2 and "--ann-dir" in r.output and not (tmp_path / "o2").exists()


def test_pixel_budget_checked_before_any_work(tmp_path, monkeypatch):
    src, out = tmp_path / "img", tmp_path / "out"
    _png(src / "a.png", 64, 64)
    monkeypatch.setenv("RSVISION_MAX_PIXELS", "1000")
    r = _run("split", "--img-dir", src, "--out", out, *SPLIT)
    assert r.exit_code == 2 and "a.png" in r.output and "RSVISION_MAX_PIXELS" in r.output and not out.exists()
    assert _run("split", "--img-dir", src, "--out", out, *SPLIT, "--max-pixels", "4096").exit_code == 0
    monkeypatch.delenv("RSVISION_MAX_PIXELS")
    huge = tmp_path / "huge"
    huge.mkdir()
    _tif(huge / "scene.tif", 100_000, 100_000, nodata=0, tile=512, compress="deflate")  # sparse: a few MB
    r = _run("split", "--img-dir", huge, "--out", tmp_path / "o2")
    assert r.exit_code == 2 and "scene.tif" in r.output and "--max-pixels" in r.output
    assert not (tmp_path / "o2").exists()


# --- 7. bad numeric options: named, before any work ----------------------------------------------------
BAD_OPTIONS = [
    (["split", "--sizes", "0"], "--sizes"),
    (["split", "--gaps", "-5"], "--gaps"),
    (["split", "--sizes", "128", "--gaps", "128"], "--gaps"),
    (["split", "--rates", "0"], "--rates"),
    (["split", "--rates", "-1.5"], "--rates"),
    (["split", "--iof-thr", "1.5"], "--iof-thr"),
    (["split", "--img-rate-thr", "-0.1"], "--img-rate-thr"),
    (["split", "--workers", "0"], "--workers"),
    (["split", "--max-pixels", "0"], "--max-pixels"),
    (["merge", "--iou-thr", "1.5"], "--iou-thr"),
    (["merge", "--iou-thr", "-0.1"], "--iou-thr"),
    (["eval", "--iou-thr", "2"], "--iou-thr"),
    (["eval", "--version", "coco"], "--version"),
]


@pytest.mark.parametrize("args,opt", BAD_OPTIONS, ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_bad_numeric_options_are_named_before_any_work(tmp_path, args, opt):
    src, ann, dets, out = tmp_path / "img", tmp_path / "ann", tmp_path / "dets", tmp_path / "out"
    _png(src / "a.png", 100, 100)
    dota.write_label_txt(ann / "a.txt", np.array([_box(10, 10, 40, 40)], float), ["plane"])
    dota.write_task1(dets, {"plane": [("a", 0.9, _box(10, 10, 40, 40))]})
    where = {"split": ["--img-dir", src, "--out", out], "merge": ["--dets", dets, "--out", out],
             "eval": ["--dets", dets, "--ann-dir", ann, "--json", out / "m.json"]}[args[0]]
    r = _run(args[0], *where, *args[1:])
    assert r.exit_code == 2 and opt in r.output, r.output
    assert not out.exists()


# --- 2. submit: refuse an existing zip; a failed run leaves it as it was --------------------------------
def test_failed_submit_never_truncates_the_zip(tmp_path):
    full, patch, z = tmp_path / "full", tmp_path / "patch", tmp_path / "sub" / "s.zip"
    dota.write_task1(full, {"plane": [("P1", 0.9, _box(0, 0, 10, 10))]})
    dota.write_task1(patch, {"plane": [("P1__128__0___0", 0.9, _box(0, 0, 10, 10))]})
    assert _run("submit", "--dets", full, "--out", z).exit_code == 0
    before = z.read_bytes()
    r = _run("submit", "--dets", full, "--out", z)
    assert r.exit_code == 2 and str(z) in r.output and "--exist-ok" in r.output and z.read_bytes() == before
    r = _run("submit", "--dets", patch, "--out", z, "--exist-ok")
    assert r.exit_code == 2 and "Task1_plane.txt" in r.output and "merge" in r.output
    assert z.read_bytes() == before and _files(z.parent) == {"s.zip": before}
    dota.write_task1(full, {"ship": [("P2", 0.5, _box(0, 0, 10, 10))]})
    assert _run("submit", "--dets", full, "--out", z, "--exist-ok").exit_code == 0
    with zipfile.ZipFile(z) as zf:
        assert zf.read("Task1_ship.txt").startswith(b"P2 0.5")


# --- 3. merge: claimed --out, atomic Task1, nothing else touched ----------------------------------------
def test_merge_claims_out_and_touches_nothing_else(tmp_path):
    dets, out = tmp_path / "patch", tmp_path / "out"
    dota.write_task1(dets, {"plane": [("P9__128__0___0", 0.9, _box(100, 10, 120, 30))]})
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "Task1_helicopter.txt").write_text("P1 0.5 0 0 1 0 1 1 0 1\n")
    before = _files(out)
    r = _run("merge", "--dets", dets, "--out", out)
    assert r.exit_code == 2 and str(out) in r.output and "--exist-ok" in r.output and _files(out) == before
    r = _run("merge", "--dets", dets, "--out", out, "--exist-ok")
    assert r.exit_code == 0, r.output
    now = _files(out)
    assert {k: now[k] for k in before} == before and now["Task1_plane.txt"].startswith(b"P9 0.9 100.00")
    _no_leftovers(out)
    (dets / "Task1_ship.txt").write_text("P9__128__0___0 0.5 1 2 3\n")
    r = _run("merge", "--dets", dets, "--out", tmp_path / "o2")
    assert r.exit_code == 2 and "Task1_ship.txt:1" in r.output and not (tmp_path / "o2").exists()


def test_append_task1_keeps_earlier_rows(tmp_path):
    dota.append_task1(tmp_path, "P1", np.array([_box(0, 0, 4, 4)], float), [0.5], ["plane"])
    (tmp_path / "Task1_plane.txt").write_bytes((tmp_path / "Task1_plane.txt").read_bytes().rstrip(b"\n"))
    dota.append_task1(tmp_path, "P2", np.array([_box(1, 1, 4, 4)], float), [0.25], ["plane"])
    assert [d.image for d in dota.read_task1(tmp_path / "Task1_plane.txt")] == ["P1", "P2"]
    _no_leftovers(tmp_path)


# --- 4. eval: unknown ground-truth classes are errors; no ground truth is not a crash --------------------
def _eval_case(tmp_path, second_class):
    ann, dets = tmp_path / "ann", tmp_path / "dets"
    dota.write_label_txt(ann / "A.txt", np.array([_box(0, 0, 10, 10), _box(20, 20, 30, 30)], float),
                         ["plane", second_class])
    dota.write_task1(dets, {"plane": [("A", 0.9, _box(0, 0, 10, 10))]})
    return ann, dets


def test_eval_unknown_ground_truth_class_names_file_and_line(tmp_path):
    ann, dets = _eval_case(tmp_path, "plnae")
    m = tmp_path / "m.json"
    r = _run("eval", "--dets", dets, "--ann-dir", ann, "--json", m)
    assert r.exit_code == 2 and f"{ann / 'A.txt'}:2" in r.output and "'plnae'" in r.output, r.output
    assert "classes found" in r.output and "plane, plnae" in r.output and not m.exists()
    r = _run("eval", "--dets", dets, "--ann-dir", ann, "--version", "dota1.0", "--json", m)
    assert r.exit_code == 2 and f"{ann / 'A.txt'}:2" in r.output and "'plnae'" in r.output and not m.exists()
    with pytest.raises(DataError) as exc:
        dota.evaluate(dets, ann)
    assert exc.value.line == 2
    # fixed: mAP averages the classes with ground truth (ship: AP 0); harbor has detections only: AP null
    ann, dets = _eval_case(tmp_path, "ship")
    dota.write_task1(dets, {"harbor": [("A", 0.9, _box(0, 0, 10, 10))]})
    r = _run("eval", "--dets", dets, "--ann-dir", ann, "--json", m)
    assert r.exit_code == 0, r.output
    m = json.loads(m.read_text())
    assert m["AP"]["plane"] == pytest.approx(1.0) and m["AP"]["ship"] == 0.0 and m["AP"]["harbor"] is None
    assert m["mAP"] == pytest.approx(0.5)


def test_eval_without_any_ground_truth(tmp_path):
    ann, dets = tmp_path / "ann", tmp_path / "dets"
    dota.write_label_txt(ann / "A.txt", np.zeros((0, 8)), [])
    dota.write_label_txt(ann / "B.txt", np.array([_box(0, 0, 10, 10)], float), ["plane"], difficult=[1])
    dota.write_task1(dets, {"plane": [("A", 0.9, _box(0, 0, 10, 10))]})
    r = _run("eval", "--dets", dets, "--ann-dir", ann, "--json", tmp_path / "m.json")
    assert r.exit_code == 0, r.output
    assert "no class has" in r.output and "mAP is null" in r.output
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["mAP"] is None and all(v is None for v in m["AP"].values())


# --- 5. self-intersecting quads: a file:line warning (kept), an error in strict mode --------------------
BOWTIE = "0 0 10 0 4 10 6 -2"  # edges 1-2 and 3-4 cross; non-zero shoelace area


def test_self_intersecting_quad_is_reported(tmp_path, caplog):
    src, ann, out = tmp_path / "img", tmp_path / "ann", tmp_path / "out"
    _png(src / "a.png", 100, 100)
    ann.mkdir()
    p = ann / "a.txt"
    p.write_text(f"10 10 40 10 40 40 10 40 plane 0\n{BOWTIE} ship 0\n")
    with caplog.at_level(logging.WARNING):
        a = dota.read_label_txt(p)
    assert a.classes == ["plane", "ship"] and a.lines == [1, 2]  # kept, as the devkit / MMRotate use it
    assert len(a.warnings) == 1 and f"{p}:2" in a.warnings[0] and "self-intersecting" in a.warnings[0]
    assert f"{p}:2" in caplog.text
    with pytest.raises(DataError) as exc:
        dota.read_label_txt(p, strict=True)
    assert exc.value.line == 2 and "self-intersecting" in str(exc.value)
    r = _run("split", "--img-dir", src, "--ann-dir", ann, "--out", out, *SPLIT)
    assert r.exit_code == 0 and f"{p}:2" in r.output and "self-intersecting" in r.output, r.output
    r = _run("split", "--img-dir", src, "--ann-dir", ann, "--out", tmp_path / "o2", *SPLIT, "--strict")
    assert r.exit_code == 2 and f"{p}:2" in r.output and not (tmp_path / "o2").exists()
