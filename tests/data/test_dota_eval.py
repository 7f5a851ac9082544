"""DOTA task-1 evaluation (hand-computed AP, devkit transcription), merge and submission."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from shapely.geometry import Polygon
from typer.testing import CliRunner

from rsvision.data import dota
from rsvision.errors import DataError
from tests.conftest import shared_path


def _box(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _devkit_voc_eval(det_rows, gt_objects, classname, ovthresh=0.5, use_07_metric=True):
    """Line-by-line transcription of DOTA_devkit ``voc_eval`` (polyiou replaced by shapely)."""
    class_recs, npos = {}, 0
    for imagename, objs in gt_objects.items():
        R = [o for o in objs if o["name"] == classname]
        bbox = np.array([x["bbox"] for x in R])
        difficult = np.array([x["difficult"] for x in R]).astype(bool)
        npos = npos + sum(~difficult)
        class_recs[imagename] = {"bbox": bbox, "difficult": difficult, "det": [False] * len(R)}
    image_ids = [x[0] for x in det_rows]
    confidence = np.array([float(x[1]) for x in det_rows])
    BB = np.array([[float(z) for z in x[2:]] for x in det_rows]).reshape(-1, 8)
    sorted_ind = np.argsort(-confidence)
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            gx0, gy0 = np.min(BBGT[:, 0::2], axis=1), np.min(BBGT[:, 1::2], axis=1)
            gx1, gy1 = np.max(BBGT[:, 0::2], axis=1), np.max(BBGT[:, 1::2], axis=1)
            bx0, by0, bx1, by1 = np.min(bb[0::2]), np.min(bb[1::2]), np.max(bb[0::2]), np.max(bb[1::2])
            iw = np.maximum(np.minimum(gx1, bx1) - np.maximum(gx0, bx0) + 1.0, 0.0)
            ih = np.maximum(np.minimum(gy1, by1) - np.maximum(gy0, by0) + 1.0, 0.0)
            inters = iw * ih
            uni = (bx1 - bx0 + 1.0) * (by1 - by0 + 1.0) + (gx1 - gx0 + 1.0) * (gy1 - gy0 + 1.0) - inters
            overlaps = inters / uni
            keep_index = np.where(overlaps > 0)[0]
            if len(keep_index) > 0:
                ious = []
                for g in BBGT[keep_index]:
                    a, b = Polygon(g.reshape(4, 2)), Polygon(bb.reshape(4, 2))
                    inter = a.intersection(b).area
                    ious.append(inter / (a.area + b.area - inter))
                ovmax = np.max(ious)
                jmax = keep_index[np.argmax(ious)]
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return dota.voc_ap(rec, prec, use_07_metric)


def _hand_case(tmp_path):
    ann = tmp_path / "ann"
    dota.write_label_txt(ann / "A.txt", np.array([_box(0, 0, 10, 10), _box(100, 100, 120, 110), _box(50, 50, 60, 60)],
                                                 float), ["plane", "plane", "ship"])
    dota.write_label_txt(ann / "B.txt", np.array([_box(0, 0, 10, 10), _box(30, 30, 40, 40)], float),
                         ["plane", "plane"], difficult=[0, 1])
    dota.write_label_txt(ann / "C.txt", np.zeros((0, 8)), [])
    dets = tmp_path / "dets"
    dota.write_task1(dets, {
        "plane": [
            ("A", 0.9, _box(0, 0, 10, 10)),  # TP (A1)
            ("A", 0.8, _box(0.5, 0, 10, 10)),  # duplicate of A1: FP
            ("B", 0.7, _box(30, 30, 40, 40)),  # matches the difficult one: ignored
            ("B", 0.6, _box(0, 0, 10, 10)),  # TP (B1)
            ("C", 0.95, _box(100, 100, 120, 110)),  # wrong image... scored below, see test
        ],
        "ship": [("A", 0.5, _box(50, 50, 60, 55))],  # IoU exactly 0.5: not a match (strict >)
    })
    return ann, dets


def test_hand_computed_ap(tmp_path):
    ann, dets = _hand_case(tmp_path)
    res = dota.evaluate(dets, ann, classes=["plane", "ship", "harbor"])
    # plane, score order: C(FP) A1(TP) dup(FP) B-difficult(ignored) B1(TP); npos = 3
    # tp = [0,1,1,1,2], fp = [1,1,2,2,2] -> rec = [0,1/3,1/3,1/3,2/3], prec = [0,1/2,1/3,1/3,1/2]
    # VOC07: t = 0..0.3 -> max prec 1/2 ; t = 0.4..0.6 -> 1/2 ; t >= 0.7 -> 0  => 7 * 0.5 / 11
    assert res["AP"]["plane"] == pytest.approx(3.5 / 11, abs=1e-12)
    assert res["AP"]["ship"] == 0.0 and res["AP"]["harbor"] is None
    assert res["num_gt"] == {"plane": 3, "ship": 1, "harbor": 0}
    assert res["mAP"] == pytest.approx((3.5 / 11 + 0.0) / 2, abs=1e-12)
    assert res["task"] == "detect" and res["metric"] == "voc07" and res["iou_thr"] == 0.5
    # VOC12 all-point: mrec = [0,0,1/3,1/3,1/3,2/3,1], envelope mpre = [.5,.5,.5,.5,.5,.5,0]
    # -> 1/3 * 1/2 + 1/3 * 1/2 = 1/3
    res12 = dota.evaluate(dets, ann, classes=["plane", "ship"], metric="voc12")
    assert res12["AP"]["plane"] == pytest.approx(1 / 3, abs=1e-12)
    # a looser threshold turns the exact-0.5 ship into a match
    assert dota.evaluate(dets, ann, classes=["ship"], iou_thr=0.49)["AP"]["ship"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        dota.evaluate(dets, ann, metric="coco")


def test_per_image_errors_of_the_hand_case(tmp_path):
    ann, dets = _hand_case(tmp_path)
    res = dota.evaluate(dets, ann, classes=["plane", "ship", "harbor"], per_image=True)
    per = {r["image"]: r for r in res["per_image"]}
    # plane: A = A1 found, its duplicate false, A2 missed; B = B1 found, the difficult match ignored;
    # C = one false positive. ship: A's exact-0.5 box is false and its ship missed. No harbor anywhere.
    assert per["A"]["FP"] == {"plane": 1, "ship": 1} and per["A"]["missed"] == {"plane": 1, "ship": 1}
    assert per["B"]["FP"] == {"plane": 0} and per["B"]["missed"] == {"plane": 0}
    assert per["C"]["FP"] == {"plane": 1} and per["C"]["missed"] == {"plane": 0}
    assert per["A"]["errors"] == {"plane": 2, "ship": 2} and per["C"]["errors"] == {"plane": 1}
    assert "per_image" not in dota.evaluate(dets, ann, classes=["plane"])


def test_matches_devkit_transcription_on_random_detections():
    rng = np.random.default_rng(0)
    gts, gt_objects = {}, {}
    for k in range(6):
        centres = rng.uniform(0, 300, (15, 2))
        sizes = rng.uniform(8, 40, (15, 2))
        polys = np.array([_box(x - w / 2, y - h / 2, x + w / 2, y + h / 2) for (x, y), (w, h) in zip(centres, sizes)])
        names = list(rng.choice(["plane", "ship"], 15))
        diff = (rng.random(15) < 0.15).astype(int)
        gts[f"I{k}"] = {"polys": polys, "classes": names, "difficult": diff}
        gt_objects[f"I{k}"] = [{"name": n, "difficult": int(d), "bbox": list(p)} for p, n, d in zip(polys, names, diff)]
    dets = {"plane": [], "ship": []}
    for name, g in gts.items():
        for p, c in zip(g["polys"], g["classes"]):
            for _ in range(rng.integers(0, 3)):
                q = p + rng.normal(0, 3, 8)
                dets[c].append((name, float(np.round(rng.random(), 2)), q))  # rounded: score ties
        for _ in range(5):  # pure false positives
            x, y = rng.uniform(0, 300, 2)
            dets[str(rng.choice(["plane", "ship"]))].append((name, float(rng.random()), np.array(_box(x, y, x + 20, y + 9))))
    for metric in ("voc07", "voc12"):
        res = dota.evaluate_polys(dets, gts, ["plane", "ship"], 0.5, metric)
        for c in ("plane", "ship"):
            rows = [[img, s, *q] for img, s, q in dets[c]]
            ref = _devkit_voc_eval(rows, gt_objects, c, 0.5, metric == "voc07")
            assert res["AP"][c] == pytest.approx(min(ref, 1.0), abs=1e-12)
            assert 0.2 < res["AP"][c] < 0.99


def test_merge_and_submit(tmp_path):
    # two overlapping patches of image P9 see the same object; one more object only in the second
    patch_dets = {"plane": [
        dota.Detection("P9__128__0___0", 0.9, tuple(_box(100, 10, 120, 30))),
        dota.Detection("P9__128__96___0", 0.8, tuple(_box(4, 10, 24, 30))),  # same object, shifted
        dota.Detection("P9__128__96___0", 0.7, tuple(_box(60, 60, 80, 70))),
    ], "ship": []}
    merged = dota.merge_detections(patch_dets, iou_thr=0.1)
    assert [(d.image, d.score) for d in merged["plane"]] == [("P9", 0.9), ("P9", 0.7)]
    assert merged["plane"][1].poly[:2] == (156.0, 60.0)
    dota.write_task1(tmp_path / "patch", patch_dets)
    from rsvision.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["dota", "merge", "--dets", str(tmp_path / "patch"), "--out", str(tmp_path / "full")])
    assert res.exit_code == 0, res.output
    assert len((tmp_path / "full" / "Task1_plane.txt").read_text().splitlines()) == 2
    res = runner.invoke(app, ["dota", "submit", "--dets", str(tmp_path / "full"), "--out", str(tmp_path / "s.zip")])
    assert res.exit_code == 0, res.output
    with zipfile.ZipFile(tmp_path / "s.zip") as zf:
        assert sorted(zf.namelist()) == sorted(f"Task1_{c}.txt" for c in dota.DOTA1_0_CLASSES)
        assert zf.read("Task1_plane.txt").decode().startswith("P9 0.9 100.00 10.00")
    with pytest.raises(DataError, match="merge"):
        dota.make_submission(tmp_path / "patch", tmp_path / "bad.zip")
    (tmp_path / "full" / "Task1_spaceship.txt").write_text("")
    with pytest.raises(DataError, match="spaceship"):
        dota.make_submission(tmp_path / "full", tmp_path / "bad.zip")


def test_cli_eval_json(tmp_path):
    from rsvision.cli import app

    ann, dets = _hand_case(tmp_path)
    res = CliRunner().invoke(app, ["dota", "eval", "--dets", str(dets), "--ann-dir", str(ann), "--json",
                                   str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    assert "plane" in res.output and "mAP" in res.output
    m = json.loads((tmp_path / "m.json").read_text())
    assert set(m) == {"task", "metric", "iou_thr", "mAP", "AP", "num_gt"}
    assert len(m["AP"]) == 15  # classes=None: DOTA-v1.0 list (all names fit)
    assert m["AP"]["plane"] == pytest.approx(3.5 / 11) and m["AP"]["bridge"] is None
    assert m["mAP"] == pytest.approx(3.5 / 22)


def test_real_dota_gt_as_detections(tmp_path):
    ann_dir = shared_path("data", "dota", "labelTxt")
    gts = dota.load_ground_truth(ann_dir)
    rng = np.random.default_rng(1)
    rows: dict[str, list] = {}
    for img, g in gts.items():
        for p, c in zip(g["polys"], g["classes"]):
            rows.setdefault(c, []).append((img, float(rng.random()), p))
    dota.write_task1(tmp_path, rows)
    res = dota.evaluate(tmp_path, ann_dir, metric="voc12")
    present = [c for c, n in res["num_gt"].items() if n]
    assert len(present) == 11 and res["mAP"] == pytest.approx(1.0, abs=1e-9)
    assert res["num_gt"]["ship"] == 525  # 531 ships, 6 difficult


def test_real_split_merge_eval_roundtrip(tmp_path):
    """Patch labels of a real split, used as patch detections, merge back to the full-image ground truth."""
    img_dir = shared_path("data", "dota", "images")
    ann_dir = shared_path("data", "dota", "labelTxt")
    full = tmp_path / "gt"
    full.mkdir()
    (full / "P0706.txt").write_bytes((ann_dir / "P0706.txt").read_bytes())
    dota.split_image(img_dir / "P0706.png", full / "P0706.txt", tmp_path / "split",
                     dota.SplitConfig(sizes=[800], gaps=[200]))
    rng = np.random.default_rng(0)
    patch_dets: dict[str, list] = {}
    for p in sorted((tmp_path / "split" / "annfiles").glob("*.txt")):
        ann = dota.read_label_txt(p)
        for poly, c in zip(ann.polys, ann.classes):
            patch_dets.setdefault(c, []).append(dota.Detection(p.stem, float(rng.random()), tuple(poly)))
    assert sum(map(len, patch_dets.values())) > 536  # overlapping windows duplicate objects
    dota.write_task1(tmp_path / "patch", patch_dets)
    dota.merge_task1_dir(tmp_path / "patch", tmp_path / "merged")
    merged = dota.read_task1_dir(tmp_path / "merged")
    assert all(d.image == "P0706" for rows in merged.values() for d in rows)
    assert len(merged["ship"]) == 531  # every duplicate removed, every ship kept
    res = dota.evaluate(tmp_path / "merged", full)
    assert res["AP"]["ship"] == pytest.approx(1.0) and res["num_gt"]["ship"] == 525
