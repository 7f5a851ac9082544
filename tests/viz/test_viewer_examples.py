"""``rsvision view``: an eval's per-image records become each class's worst examples, linked to a view of
the image (allow-listed, tiles only, when it lies outside PATH), and a batch-predict folder shows the scene
rasters its manifests name outside PATH; any other path outside PATH stays refused.

Expected values come from the inputs: the classifier's records from its own softmax, worst orders from
sorting the records by hand, tiles from the raster's pixels.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import morecantile
import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("rio_tiler")

import rasterio  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from rsvision.outputs import PER_IMAGE_INLINE_MAX, read_per_image  # noqa: E402
from rsvision.tasks.common import write_json  # noqa: E402
from rsvision.viz.viewer.app import create_app  # noqa: E402


def _client(root: Path, tmp_path: Path) -> TestClient:
    return TestClient(create_app(root, cache_dir=tmp_path / "cache"))


def _png(resp) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    return np.asarray(Image.open(io.BytesIO(resp.content)).convert("RGBA"))


def _view(cat: dict, vid: str) -> dict:
    return next(v for v in cat["views"] if v["id"] == vid)


def test_classify_eval_records_link_each_class_to_its_worst_images(tmp_path):
    from rsvision.data.synthetic.scenes import make_scene_dataset
    from rsvision.tasks import evaluate
    from rsvision.tasks.classification import ClassificationTask

    data, root = tmp_path / "data", tmp_path / "results"  # the images lie outside the viewed folder
    make_scene_dataset(data, num_classes=3, per_class=3, size=32, seed=0)
    torch.manual_seed(0)
    classes = ["field", "forest", "water"]
    task = ClassificationTask(model={"name": "resnet18"}, data={"classes": classes, "in_chans": 3, "mean": [120.0] * 3,
                                                                "std": [50.0] * 3, "img_size": 32}).eval()
    m = evaluate(task, data, fast=False)
    recs = m["per_image"]
    assert len(recs) == 9 and all(Path(r["image"]).is_file() and r["id"] == Path(r["image"]).stem for r in recs)
    cm = np.zeros((3, 3), int)
    for r in recs:
        assert r["true"] == Path(r["image"]).parent.name  # class folders
        cm[classes.index(r["true"]), classes.index(r["pred"])] += 1
        assert 0 <= r["p_true"] <= r["score"] <= 1 and (r["p_true"] == r["score"]) == (r["true"] == r["pred"])
    assert cm.tolist() == m["confusion_matrix"]
    probs = {r["path"]: r["probs"] for r in task.predict([data / c for c in classes], fast=False)}  # the same softmax as predict
    for r in recs:
        assert r["p_true"] == pytest.approx(probs[r["image"]][classes.index(r["true"])], abs=1e-5)

    root.mkdir()
    write_json(m, root / "eval.json")
    c = _client(root, tmp_path)
    cat = c.get("/api/catalog").json()
    ev = c.get(f"/api/evals/{cat['evals'][0]['id']}").json()
    assert [r["class"] for r in ev["rows"]] == classes and set(ev["worst"]) == set(classes)
    for cls, items in ev["worst"].items():  # every image of the class, the lowest true-class probability first
        mine = sorted((r for r in recs if r["true"] == cls), key=lambda r: r["p_true"])
        assert [i["image"] for i in items] == [r["image"] for r in mine]
        assert [i["value"] for i in items] == pytest.approx([r["p_true"] for r in mine])
        for it in items:  # a tile view of the image outside PATH, never the file itself
            v = _view(cat, it["view"])
            assert v["example"] and v["base"]["external"] and "rel" not in it
            assert c.get("/api/file", params={"path": it["image"]}).status_code == 403
    it = ev["worst"]["water"][0]
    base = _view(cat, it["view"])["base"]
    tile = _png(c.get(f"/api/tiles/{base['id']}/0/0/0.png", params={"stretch": "none"}))  # zoom 0: 1 px a pixel
    img = np.asarray(Image.open(it["image"]).convert("RGB"))
    assert np.array_equal(tile[:32, :32, :3], img) and (tile[:32, :32, 3] == 255).all()


def test_dense_and_detection_records_rank_worst_first(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    ims = []
    for i in range(3):
        p = root / f"im{i}.png"
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(p)
        ims.append(p.name)
    (root / "seg.json").write_text(json.dumps({"task": "segment", "mIoU": 0.5, "IoU": {"bg": 0.9, "roof": 0.1},
                                               "classes": ["bg", "roof"], "per_image": [
        {"image": ims[0], "IoU": {"bg": 0.9, "roof": None}}, {"image": ims[1], "IoU": {"bg": 0.5, "roof": 0.2}},
        {"image": ims[2], "IoU": {"bg": 0.7, "roof": 0.0}}]}))
    (root / "det.json").write_text(json.dumps({"task": "detect", "mAP": 0.4, "AP": {"ship": 0.4}, "per_image": [
        {"image": ims[0], "errors": {"ship": 0}, "FP": {"ship": 0}, "missed": {"ship": 0}},
        {"image": ims[1], "errors": {"ship": 3}, "FP": {"ship": 1}, "missed": {"ship": 2}},
        {"image": ims[2], "errors": {"ship": 1}, "FP": {"ship": 1}, "missed": {"ship": 0}}]}))
    c = _client(root, tmp_path)
    cat = c.get("/api/catalog").json()
    evals = {e["task"]: c.get(f"/api/evals/{e['id']}").json() for e in cat["evals"]}
    seg = evals["segment"]["worst"]
    assert [i["image"] for i in seg["roof"]] == [ims[2], ims[1]]  # lowest first; absent (null) left out
    assert [i["image"] for i in seg["bg"]] == [ims[1], ims[2], ims[0]]
    ship = evals["detect"]["worst"]["ship"]
    assert [(i["image"], i["value"], i["FP"]["ship"], i["missed"]["ship"]) for i in ship] == \
        [(ims[1], 3, 1, 2), (ims[2], 1, 1, 0)]  # most errors first; none left out
    names = {v["id"]: v["name"] for v in cat["views"]}
    assert all(names[i["view"]] == i["image"] == i["rel"] for i in ship + seg["roof"])  # images under PATH


def test_detect_example_outside_path_gets_its_task1_detections(tmp_path):
    img, root = tmp_path / "data" / "P7.png", tmp_path / "r"
    img.parent.mkdir()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(img)
    (root / "dets").mkdir(parents=True)  # detect eval --dets r/dets: the merged Task1 files
    (root / "dets" / "Task1_ship.txt").write_text("P7 0.9 2 2 12 2 12 12 2 12\n")
    (root / "m.json").write_text(json.dumps({"task": "detect", "mAP": 0.0, "AP": {"ship": 0.0}, "per_image": [
        {"image": str(img), "id": "P7", "errors": {"ship": 2}, "FP": {"ship": 1}, "missed": {"ship": 1}}]}))
    c = _client(root, tmp_path)
    cat = c.get("/api/catalog").json()
    (item,) = c.get(f"/api/evals/{cat['evals'][0]['id']}").json()["worst"]["ship"]
    v = _view(cat, item["view"])
    assert v["base"]["external"] and v["base"]["rel"] == str(img) and not v["example"]  # the detections' view
    assert [x["fmt"] for x in v["vectors"]] == ["task1"] and len(cat["views"]) == 1
    assert c.get("/api/file", params={"path": str(img)}).status_code == 403


def test_long_record_lists_go_to_a_jsonl_file_beside_the_json(tmp_path):
    root = tmp_path / "r"
    n = PER_IMAGE_INLINE_MAX + 5
    recs = [{"image": f"/nowhere/{i}.png", "id": str(i), "IoU": {"a": i / n}} for i in range(n)]
    p = write_json({"task": "segment", "mIoU": 0.5, "IoU": {"a": 0.5}, "per_image": recs}, root / "m.json")
    d = json.loads(p.read_text())
    assert d["per_image"] == "m.per_image.jsonl" and d["per_image_count"] == n
    assert read_per_image(d["per_image"], p) == recs
    few = write_json({"task": "segment", "per_image": recs[:3]}, tmp_path / "few.json")
    assert json.loads(few.read_text())["per_image"] == recs[:3] and not (tmp_path / "few.per_image.jsonl").exists()
    c = _client(root, tmp_path)
    (e,) = c.get("/api/catalog").json()["evals"]
    ev = c.get(f"/api/evals/{e['id']}").json()
    assert [i["image"] for i in ev["worst"]["a"]][:2] == ["/nowhere/0.png", "/nowhere/1.png"]
    assert "per_image_count" not in ev["headline"]
    for bad in ("../m.per_image.jsonl", str(p.with_name("m.per_image.jsonl")), "m.json"):
        assert read_per_image(bad, p) == []  # only a bare *.per_image.jsonl name beside the JSON


def _tif(path: Path, value: int, size: int = 64) -> None:
    from rasterio.transform import from_origin

    arr = np.full((3, size, size), value, np.uint8)
    arr[0, :, size // 2:] = 200
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                       crs="EPSG:32632", transform=from_origin(500000, 5000000, 1, 1)) as ds:
        ds.write(arr)


def test_batch_folder_shows_the_scene_rasters_its_manifests_name(tmp_path, monkeypatch):
    import geopandas as gpd
    from shapely.geometry import box

    scenes, b = tmp_path / "scenes", tmp_path / "preds"
    scenes.mkdir()
    for i, name in enumerate(("a", "b", "unlisted")):
        _tif(scenes / f"{name}.tif", 30 + 40 * i)
    (tmp_path / "secret.txt").write_text("secret")
    (scenes / "remote.vrt").write_text(
        '<VRTDataset rasterXSize="8" rasterYSize="8"><VRTRasterBand dataType="Byte" band="1"><SimpleSource>'
        '<SourceFilename>/vsicurl/http://example.com/x.tif</SourceFilename></SimpleSource></VRTRasterBand></VRTDataset>')
    b.mkdir()
    (b / "batch.json").write_text(json.dumps({"task": "detect", "scenes": ["a", "b", "s", "v", "t"]}))
    inputs = {"a": str(scenes / "a.tif"), "b": "scenes/b.tif",  # relative: to the batch folder's parent
              "s": str(tmp_path / "secret.txt"), "v": str(scenes / "remote.vrt"), "t": "../../etc/passwd"}
    for sid, inp in inputs.items():
        (b / sid).mkdir()
        (b / sid / "manifest.json").write_text(json.dumps({"scene": sid, "inputs": [inp], "status": "done"}))
    with rasterio.open(scenes / "a.tif") as ds:
        x0, y0, x1, y1 = ds.bounds
    gpd.GeoDataFrame({"scene": ["a", "b"], "class": ["ship", "ship"], "score": [0.9, 0.8]},
                     geometry=[box(x0 + 5, y0 + 5, x0 + 20, y0 + 20)] * 2, crs="EPSG:32632").to_parquet(
        b / "detections.parquet")
    monkeypatch.chdir(tmp_path / "scenes")  # the working folder does not hold "scenes/b.tif"
    c = _client(b, tmp_path)
    cat = c.get("/api/catalog").json()
    by_name = {v["name"]: v for v in cat["views"]}
    for sid, value in (("a", 30), ("b", 70)):
        v = by_name[sid]
        assert v["base"]["external"] and not v["example"] and v["base"]["rel"] == str(scenes / f"{sid}.tif")
        assert [x["name"] for x in v["vectors"]] == [f"detections.parquet [{sid}]"]  # its detections on it
        assert c.get("/api/file", params={"path": v["base"]["rel"]}).status_code == 403  # tiles only
        w, s_, e, n = v["base"]["bounds"]
        t = morecantile.tms.get("WebMercatorQuad").tile(w + 0.25 * (e - w), (s_ + n) / 2, 20)  # the left half
        tile = _png(c.get(f"/api/tiles/{v['base']['id']}/{t.z}/{t.x}/{t.y}.png", params={"stretch": "none"}))
        opaque = tile[tile[..., 3] == 255]
        assert len(opaque) > 1000 and (np.abs(opaque[:, 1].astype(int) - value) <= 1).all()
    text = json.dumps(cat)
    assert "secret" not in text and "remote.vrt" not in text and "unlisted" not in text and "passwd" not in text
    assert sum(1 for v in cat["views"] if v["base"] and v["base"]["external"]) == 2
    for url in ("/api/file?path=../scenes/unlisted.tif", "/api/file?path=../secret.txt", "/api/file?path=a/../../secret.txt",
                f"/api/file?path={scenes / 'a.tif'}", "/api/tiles/x9/0/0/0.png"):
        r = c.get(url)
        assert r.status_code in (403, 404) and "secret" not in r.text, url
