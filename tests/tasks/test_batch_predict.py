"""predict_many over a 2-process Dask LocalCluster: scenes in several CRSs, a local STAC catalog,
a corrupt scene, a killed CLI run resumed, results equal to single-process predict, one model load
per worker, the merged GeoParquet / masks VRT read back."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from rsvision.errors import ConfigError
from rsvision.tasks import load_task, predict
from rsvision.tasks.batch import MANIFEST, Scene, is_done, parse_cluster, predict_many, resolve_scenes

distributed = pytest.importorskip("distributed")
gpd = pytest.importorskip("geopandas")
pystac = pytest.importorskip("pystac")

# (CRS, x origin): two scenes side by side in EPSG:32632 (their masks mosaic into one VRT), others elsewhere
GRID = [("EPSG:32632", 500000.0), ("EPSG:32633", 400000.0), ("EPSG:3857", 1000000.0), ("EPSG:32632", 500080.0),
        ("EPSG:32631", 600000.0)]
H, W = 96, 80


def _write(path: Path, arr: np.ndarray, crs: str, x0: float) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0],
                       dtype=arr.dtype, crs=crs, transform=from_origin(x0, 5000000, 1, 1)) as ds:
        ds.write(arr)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    scenes, bands = root / "scenes", root / "bands"
    scenes.mkdir()
    bands.mkdir()
    for i, (crs, x0) in enumerate(GRID):
        arr = (np.random.default_rng(i).random((3, H, W)) * 255).astype(np.uint8)
        _write(scenes / f"s{i}.tif", arr, crs, x0)
        for b, name in enumerate(("red", "green", "blue")):  # the same pixels as one file per band (STAC assets)
            _write(bands / f"s{i}_{name}.tif", arr[b : b + 1], crs, x0)
    torch.manual_seed(0)
    from rsvision.tasks.detection import DetectionTask
    from rsvision.tasks.segmentation import SegmentationTask

    det = DetectionTask(model={"type": "OrientedRCNN", "backbone": "lsknet_t", "fpn_channels": 16, "fc_channels": 32,
                               "rcnn": {"score_thr": 0.0}}, data={"class_names": ["x", "y"], "img_size": 64})
    seg = SegmentationTask(model={"backbone": "lsknet_t", "decoder": "upernet", "channels": 16, "in_chans": 3},
                           data={"classes": ["a", "b", "c"], "mean": [120.0] * 3, "std": [50.0] * 3, "img_size": 64})
    ckpts = {}
    for name, task in (("det", det), ("seg", seg)):
        ckpts[name] = root / f"{name}.ckpt"
        torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, ckpts[name])
    return {"root": root, "scenes": scenes, "bands": bands, "ckpt": ckpts}


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    env = {"OMP_NUM_THREADS": "1"}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, env=env) as lc, \
            Client(lc) as c:
        yield c


@pytest.fixture(autouse=True)
def threads_like_the_workers():
    """Single-process references with the workers' torch threads (cores // 2): other thread counts sum
    floats in another order, and byte-equal files are the point here."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    yield
    torch.set_num_threads(before)


def _manifests(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob(f"*/{MANIFEST}"))}


def _one_load_per_worker(manifests) -> None:
    done = [m for m in manifests if m["status"] == "done"]
    pids = {m["worker"]["pid"] for m in done}
    assert all(m["worker"]["loads"] == 1 for m in done)  # the model stayed loaded for every later scene
    assert len(pids) <= 2 and len(done) > len(pids)  # two workers, each reused its model


def test_detect_many_equals_single_process_and_one_geoparquet(world, client, tmp_path):
    (tmp_path / "in").mkdir()
    for p in world["scenes"].glob("*.tif"):
        os.symlink(p, tmp_path / "in" / p.name)
    (tmp_path / "in" / "broken.tif").write_bytes(b"II*\x00 not a tiff at all")
    out = tmp_path / "out"
    res = predict_many(world["ckpt"]["det"], [tmp_path / "in"], out, cluster=client, png=False, score_thr=0.0)
    assert [m["scene"] for m in res.failed] == ["broken"] and len(res.done) == len(GRID)
    assert "broken.tif" in res.failed[0]["reason"]
    man = _manifests(out)
    assert man["broken"]["status"] == "failed" and man["broken"]["reason"]
    _one_load_per_worker(man.values())

    task = load_task(world["ckpt"]["det"])
    rows = 0
    for i, (crs, _) in enumerate(GRID):
        (r,) = predict(task, [world["scenes"] / f"s{i}.tif"], tmp_path / "single" / f"s{i}", png=False)
        rows += len(r["detections"].scores)
        for name in ("s%d.geojson" % i, "Task1_x.txt", "Task1_y.txt"):
            assert (out / f"s{i}" / name).read_bytes() == (tmp_path / "single" / f"s{i}" / name).read_bytes()
        assert man[f"s{i}"]["counts"] == r["counts"] and man[f"s{i}"]["checkpoint_sha256"]
    assert rows > 0

    merged = gpd.read_parquet(out / "detections.parquet")
    assert merged.crs == "EPSG:4326" and len(merged) == rows == res.outputs["parquet"]["rows"]  # mixed CRSs
    assert list(merged.columns) == ["scene", "class", "score", "geometry"]
    s0 = merged[merged.scene == "s0"].to_crs("EPSG:32632")
    ref = gpd.read_file(out / "s0" / "s0.geojson")
    assert len(s0) == len(ref)
    np.testing.assert_allclose(s0.geometry.centroid.x, ref.geometry.centroid.x, atol=1e-3)  # metres
    np.testing.assert_allclose(s0.score, ref.score, atol=1e-4)  # GeoJSON rounds to 4 decimals
    task1 = (out / "Task1_x.txt").read_text().splitlines()  # the scenes' lines, scene after scene
    assert task1 == [ln for i in range(len(GRID)) for ln in (out / f"s{i}" / "Task1_x.txt").read_text().splitlines()]

    # rerun: the done scenes are skipped, the corrupt one (now fixed) retried alone; --crs honoured
    (tmp_path / "in" / "broken.tif").unlink()
    _write(tmp_path / "in" / "broken.tif", np.zeros((3, 40, 40), np.uint8) + 100, "EPSG:32632", 0.0)
    again = predict_many(world["ckpt"]["det"], [tmp_path / "in"], out, cluster=client, png=False, score_thr=0.0,
                         crs="EPSG:32632")
    assert len(again.skipped) == len(GRID) and [m["scene"] for m in again.done] == ["broken"] and not again.failed
    assert gpd.read_parquet(out / "detections.parquet").crs == "EPSG:32632"
    assert (out / "s0" / MANIFEST).read_text() == json.dumps(man["s0"], indent=2) + "\n"  # untouched


def _catalog(world, root: Path) -> Path:
    """A STAC catalog of the scenes: one asset per band (eo:bands common names) plus the 3-band "visual"."""
    cat = pystac.Catalog("scenes", "test scenes")
    for i, (crs, x0) in enumerate(GRID):
        bbox = [x0, 5000000 - H, x0 + W, 5000000]
        item = pystac.Item(f"item{i}", geometry=None, bbox=None, datetime=datetime(2024, 1, 1), properties={})
        for b, (name, eo) in enumerate((("red", "B04"), ("green", "B03"), ("blue", "B02"))):
            bands = {"eo:bands": [{"name": eo, "common_name": name}]}
            item.add_asset(eo, pystac.Asset(str(world["bands"] / f"s{i}_{name}.tif"), media_type=pystac.MediaType.COG,
                                            roles=["data"], extra_fields=bands))
        item.add_asset("visual", pystac.Asset(str(world["scenes"] / f"s{i}.tif"), media_type=pystac.MediaType.GEOTIFF,
                                              roles=["visual"]))
        item.properties["proj:bbox"] = bbox
        cat.add_item(item)
    cat.normalize_hrefs(str(root / "stac"))
    cat.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return root / "stac" / "catalog.json"


def test_stac_catalog_by_band_names_equals_single_process_and_masks_mosaic(world, client, tmp_path):
    catalog = _catalog(world, tmp_path)
    out = tmp_path / "out"
    res = predict_many(world["ckpt"]["seg"], [catalog], out, cluster=client, assets=["red", "green", "blue"])
    assert len(res.done) == len(GRID) and not res.failed
    man = _manifests(out)
    _one_load_per_worker(man.values())
    task = load_task(world["ckpt"]["seg"])
    masks = {}
    for i, (crs, _) in enumerate(GRID):
        m = man[f"item{i}"]
        assert m["stac"]["assets"] == ["B04", "B03", "B02"] and m["inputs"][0].endswith(f"item{i}.vrt")
        (r,) = predict(task, [world["scenes"] / f"s{i}.tif"], tmp_path / "single" / f"s{i}")
        with rasterio.open(out / m["outputs"]["geotiff"]) as a, rasterio.open(r["files"]["geotiff"]) as b:
            masks[i] = a.read(1)
            assert a.crs == b.crs == crs and a.transform == b.transform
            np.testing.assert_array_equal(masks[i], b.read(1))  # the VRT stack reads the same pixels
    # masks in four CRSs: one mosaic per CRS; the two EPSG:32632 scenes side by side in one
    vrts = sorted(Path(p).name for p in res.outputs["mosaic"])
    assert vrts == ["masks_EPSG-32631.vrt", "masks_EPSG-32632.vrt", "masks_EPSG-32633.vrt", "masks_EPSG-3857.vrt"]
    with rasterio.open(out / "masks_EPSG-32632.vrt") as v:
        assert (v.width, v.height) == (2 * W, H) and v.crs == "EPSG:32632"
        mosaic = v.read(1)
    np.testing.assert_array_equal(mosaic[:, :W], masks[0])
    np.testing.assert_array_equal(mosaic[:, W:], masks[3])

    # the same items by asset key: the 3-band file itself, no VRT
    scenes = resolve_scenes("segment", [catalog], tmp_path / "vrt2", ["visual"])
    assert [Path(s.inputs[0]).name for s in scenes] == [f"s{i}.tif" for i in range(len(GRID))]
    with pytest.raises(ConfigError, match="nir"):
        resolve_scenes("segment", [catalog], tmp_path / "vrt3", ["red", "nir"])
    with pytest.raises(ConfigError, match="--assets"):  # three data assets: which?
        resolve_scenes("segment", [catalog], tmp_path / "vrt4")


def test_change_pairs_and_classification_through_the_cluster(world, client, tmp_path):
    """The other two predict families: change pairs (one folder per pair, masks mosaic) and classification
    (one image per scene, predictions merged), each equal to single-process predict."""
    from rsvision.tasks.change import ChangeTask
    from rsvision.tasks.classification import ClassificationTask

    torch.manual_seed(1)
    stats = {"mean": [120.0] * 3, "std": [50.0] * 3}
    tasks = {"change": ChangeTask(model={"backbone": "lsknet_t", "decoder": "upernet", "channels": 16, "in_chans": 3},
                                  data={"classes": ["unchanged", "changed"], "img_size": 64, **stats}),
             "classify": ClassificationTask(model={"name": "lsknet_t"}, data={"classes": ["p", "q", "r"], "in_chans": 3,
                                                                              "img_size": 32, **stats})}
    for d in ("A", "B"):
        (tmp_path / "pairs" / d).mkdir(parents=True)
    for i in (0, 1):
        crs, x0 = GRID[i]
        os.symlink(world["scenes"] / f"s{i}.tif", tmp_path / "pairs" / "A" / f"p{i}.tif")
        _write(tmp_path / "pairs" / "B" / f"p{i}.tif", (np.random.default_rng(9 + i).random((3, H, W)) * 255)
               .astype(np.uint8), crs, x0)
    inputs = {"change": [tmp_path / "pairs"], "classify": [world["scenes"] / "s0.tif", world["scenes"] / "s2.tif"]}
    for name, task in tasks.items():
        ckpt = tmp_path / f"{name}.ckpt"
        torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, ckpt)
        res = predict_many(ckpt, inputs[name], tmp_path / name, cluster=client)
        assert len(res.done) == 2 and not res.failed, res.failed
        single = list(predict(load_task(ckpt), inputs[name], tmp_path / f"{name}_single"))
        if name == "change":
            assert [Path(p).name for p in res.outputs["mosaic"]] == ["masks_EPSG-32632.vrt", "masks_EPSG-32633.vrt"]
            for r in single:
                stem = Path(r["files"]["geotiff"]).name
                scene = stem.removesuffix("_mask.tif")
                with rasterio.open(tmp_path / name / scene / stem) as a, rasterio.open(r["files"]["geotiff"]) as b:
                    np.testing.assert_array_equal(a.read(1), b.read(1))
        else:
            merged = json.loads((tmp_path / name / "predictions.json").read_text())["predictions"]
            assert [m["input"] for m in merged] == [str(p) for p in inputs[name]]
            np.testing.assert_allclose([m["probs"] for m in merged], [r["probs"] for r in single], atol=1e-6)
            assert (tmp_path / name / "predictions.csv").read_text().count("\n") == 3


def test_stac_item_collection_and_collection_files(world, tmp_path):
    catalog = _catalog(world, tmp_path)
    items = list(pystac.Catalog.from_file(str(catalog)).get_items(recursive=True))
    ic = tmp_path / "items.json"
    pystac.ItemCollection(items[:2]).save_object(dest_href=str(ic))
    from rsvision.cli._batch import wants_batch

    assert wants_batch(None, [str(ic)]) and wants_batch(None, [str(catalog)])  # STAC inputs go through Dask
    assert not wants_batch(None, [str(world["scenes"] / "s0.tif")]) and wants_batch("local:2", ["x.tif"])
    scenes = resolve_scenes("detect", [ic], tmp_path / "vrt", ["blue", "green", "red"])
    assert [s.id for s in scenes] == ["item0", "item1"] and scenes[0].stac["assets"] == ["B02", "B03", "B04"]
    with rasterio.open(scenes[0].inputs[0]) as v, rasterio.open(world["scenes"] / "s0.tif") as ref:
        np.testing.assert_array_equal(v.read(), ref.read()[::-1])  # bands in the order asked for
        assert v.crs == ref.crs and v.transform == ref.transform
    coll = pystac.Collection("c", "scenes", pystac.Extent(pystac.SpatialExtent([[0, 0, 1, 1]]),
                                                         pystac.TemporalExtent([[datetime(2024, 1, 1), None]])))
    for it in items[2:]:
        coll.add_item(it.clone())
    coll.normalize_hrefs(str(tmp_path / "coll"))
    coll.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    got = resolve_scenes("detect", [tmp_path / "coll" / "collection.json"], tmp_path / "vrt", ["visual"])
    assert [s.id for s in got] == ["item2", "item3", "item4"]


def test_inputs_lists_options_and_cluster_spec(world, tmp_path):
    lst = tmp_path / "scenes.txt"
    lst.write_text(f"# two scenes\n{world['scenes'] / 's1.tif'}\n\n{world['scenes'] / 's0.tif'}\n")
    scenes = resolve_scenes("detect", [lst], tmp_path)
    assert [s.id for s in scenes] == ["s1", "s0"]
    with pytest.raises(ConfigError, match="--assets"):
        resolve_scenes("detect", [lst], tmp_path, assets=["red"])
    with pytest.raises(ConfigError, match="score_tr"):  # a typo fails before any work, not once per scene
        predict_many(world["ckpt"]["det"], [lst], tmp_path / "typo", cluster="local:1", score_tr=0.5)
    assert not (tmp_path / "typo").exists()
    for bad in ("local:0", "locale", "local:x", 3):
        with pytest.raises(ConfigError):
            parse_cluster(bad)
    assert parse_cluster("local:3") == ("local", 3) and parse_cluster("tcp://h:8786") == ("address", "tcp://h:8786")
    # a manifest counts as done only for the same checkpoint, options and inputs, with its outputs present
    (tmp_path / "o" / "s0").mkdir(parents=True)
    (tmp_path / "o" / "s0" / "x.geojson").write_text("{}")
    rec = {"status": "done", "checkpoint_sha256": "abc", "options": {"png": False}, "inputs": ["a.tif"],
           "outputs": {"geojson": "s0/x.geojson"}}
    (tmp_path / "o" / "s0" / MANIFEST).write_text(json.dumps(rec))
    sc = Scene("s0", ["a.tif"])
    assert is_done(tmp_path / "o", sc, "abc", {"png": False})
    assert not is_done(tmp_path / "o", sc, "abd", {"png": False})
    assert not is_done(tmp_path / "o", sc, "abc", {"png": True})
    assert not is_done(tmp_path / "o", Scene("s0", ["b.tif"]), "abc", {"png": False})
    (tmp_path / "o" / "s0" / "x.geojson").unlink()
    assert not is_done(tmp_path / "o", sc, "abc", {"png": False})


def _cli(world, out: Path) -> list[str]:
    # two workers like the module's cluster: the same torch threads per worker (cores // 2), so the same floats
    return [sys.executable, "-m", "rsvision.cli", "detect", "predict", "--checkpoint", str(world["ckpt"]["det"]),
            str(world["scenes"]), "--out", str(out), "--cluster", "local:2", "--no-png", "--score-thr", "0"]


def _outputs(out: Path) -> dict[str, bytes]:
    keep = (".geojson", ".txt")
    files = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.suffix in keep}
    merged = gpd.read_parquet(out / "detections.parquet").sort_values(["scene", "class", "score"])
    files["parquet"] = merged.to_json().encode()
    return files


def test_cli_killed_mid_run_then_resumed_equals_an_uninterrupted_run(world, client, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RSVISION_PROGRESS_SECONDS": "1"}
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(world, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # its own process group: the workers die with it
    t0 = time.time()
    while not list(out.glob(f"*/{MANIFEST}")) and proc.poll() is None and time.time() - t0 < 120:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for _ in range(600):  # until the killed workers are reaped too (a zombie still counts as a lock holder)
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    done_before = sorted(k for k, m in _manifests(out).items() if m["status"] == "done")
    assert 1 <= len(done_before) < len(GRID)
    assert not (out / "summary.json").exists()

    # the rerun (here through Python, with the options the CLI recorded) takes over the dead run's locks,
    # skips what it finished and does the rest; an uninterrupted run gives the same files
    opts = json.loads((out / "batch.json").read_text())["options"]
    again = predict_many(world["ckpt"]["det"], [world["scenes"]], out, cluster=client, **opts)
    assert not again.failed, [(m["scene"], m["reason"]) for m in again.failed]
    assert sorted(m["scene"] for m in again.skipped) == done_before
    assert len(again.done) == len(GRID) - len(done_before)
    full = predict_many(world["ckpt"]["det"], [world["scenes"]], tmp_path / "full", cluster=client, **opts)
    assert len(full.done) == len(GRID)
    assert _outputs(out) == _outputs(tmp_path / "full")


def test_cli_connects_to_a_scheduler_reports_failed_scenes_and_exits_1(world, client, tmp_path):
    """``segment predict --cluster tcp://...`` (the running scheduler of the module's cluster): a table of the
    failed scenes with their reasons, exit 1, the summary names them."""
    from typer.testing import CliRunner

    from rsvision.cli import app

    (tmp_path / "in").mkdir()
    os.symlink(world["scenes"] / "s0.tif", tmp_path / "in" / "s0.tif")
    (tmp_path / "in" / "bad.tif").write_bytes(b"garbage")
    address = client.scheduler.address
    assert address.startswith("tcp://")
    r = CliRunner().invoke(app, ["segment", "predict", "--checkpoint", str(world["ckpt"]["seg"]), str(tmp_path / "in"),
                                 "--out", str(tmp_path / "out"), "--cluster", address])
    assert r.exit_code == 1, r.output
    assert "1 scene(s) done" in r.output and "1 failed" in r.output and "bad" in r.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["done"] == 1 and "bad.tif" in summary["failures"]["bad"]
    assert [Path(p).name for p in summary["outputs"]["mosaic"]] == ["masks.vrt"]
    r = CliRunner().invoke(app, ["detect", "predict", "--checkpoint", str(world["ckpt"]["seg"]), str(tmp_path / "in"),
                                 "--out", str(tmp_path / "out2"), "--cluster", address])
    assert r.exit_code != 0 and "segment checkpoint, not detect" in str(r.exception or r.output)
    assert not (tmp_path / "out2").exists()  # refused before any work


@pytest.mark.slow  # ~20-40 s: a scheduler and two worker processes started from the command line
def test_dask_scheduler_and_workers_from_the_command_line(world, tmp_path):
    """The README's connect-to-a-cluster recipe: ``dask scheduler`` + ``dask worker --nthreads 1``, then
    ``predict_many(cluster="tcp://...")``: both workers used, one model load each, torch threads cores // 2."""
    sched = tmp_path / "scheduler.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--scheduler-file", str(sched),
                               "--no-dashboard", "--host", "127.0.0.1", "--port", "0"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        t0 = time.time()
        while not sched.exists() and time.time() - t0 < 60:
            time.sleep(0.1)
        procs.append(subprocess.Popen([sys.executable, "-m", "dask", "worker", "--scheduler-file", str(sched),
                                       "--nworkers", "2", "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))
        address = json.loads(sched.read_text())["address"]
        from distributed import Client

        with Client(address) as c:
            c.wait_for_workers(2, timeout=120)
        res = predict_many(world["ckpt"]["det"], [world["scenes"]], tmp_path / "out", cluster=address, png=False)
        assert len(res.done) == len(GRID) and res.workers == 2
        man = _manifests(tmp_path / "out")
        _one_load_per_worker(man.values())
        assert {m["worker"]["threads"] for m in man.values()} == {max(1, (os.cpu_count() or 1) // 2)}
    finally:
        for p in procs[::-1]:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=60)


def test_stack_vrt_resamples_a_coarser_band_and_refuses_another_footprint(tmp_path):
    """Sentinel-2 style: a 2 m band beside 1 m bands of the same footprint is resampled onto the 1 m grid;
    a band of another footprint is refused naming it."""
    from rsvision.data.vrt import stack_vrt
    from rsvision.errors import DataError

    fine = (np.arange(H * W, dtype=np.uint16).reshape(1, H, W) % 1000)
    _write(tmp_path / "b1.tif", fine, "EPSG:32632", 500000.0)
    coarse = np.full((1, H // 2, W // 2), 7, np.uint16)
    with rasterio.open(tmp_path / "b2.tif", "w", driver="GTiff", width=W // 2, height=H // 2, count=1, dtype="uint16",
                       crs="EPSG:32632", transform=from_origin(500000.0, 5000000, 2, 2)) as ds:
        ds.write(coarse)
    v = stack_vrt([(str(tmp_path / "b1.tif"), None), (str(tmp_path / "b2.tif"), 1)], tmp_path / "s.vrt", ["b1", "b2"])
    with rasterio.open(v) as ds:
        assert (ds.count, ds.width, ds.height) == (2, W, H) and ds.descriptions == ("b1", "b2")
        np.testing.assert_array_equal(ds.read(1), fine[0])
        np.testing.assert_array_equal(ds.read(2), 7)
    _write(tmp_path / "elsewhere.tif", fine, "EPSG:32632", 600000.0)
    with pytest.raises(DataError, match="elsewhere.tif"):
        stack_vrt([(str(tmp_path / "b1.tif"), None), (str(tmp_path / "elsewhere.tif"), None)], tmp_path / "x.vrt")
