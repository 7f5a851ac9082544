"""Every predict / eval path runs the fast LSKNet / HAKSNet copy by default and agrees with the plain one."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from rsvision.models.fast.inference import FastLSKBlock
from rsvision.tasks import evaluate, predict


def _uses_fast(net) -> bool:
    return any(isinstance(m, FastLSKBlock) for m in net.modules())


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    p = tmp_path_factory.mktemp("scene") / "scene.tif"
    arr = (np.random.default_rng(0).random((3, 96, 80)) * 255).astype(np.uint8)
    with rasterio.open(p, "w", driver="GTiff", width=80, height=96, count=3, dtype="uint8", crs="EPSG:32632",
                       transform=from_origin(500000, 5000000, 1, 1)) as ds:
        ds.write(arr)
    return p


def test_segmentation_masks_fast_and_plain(scene, tmp_path):
    from rsvision.tasks.segmentation import SegmentationTask

    torch.manual_seed(0)
    task = SegmentationTask(model={"backbone": "lsknet_t", "decoder": "upernet", "channels": 16, "in_chans": 3},
                            data={"classes": ["a", "b", "c"], "mean": [120.0] * 3, "std": [50.0] * 3,
                                  "img_size": 64}).eval()
    assert _uses_fast(task.inference_model(True)) and not _uses_fast(task.inference_model(False))
    masks = {}
    for fast in (True, False):
        (r,) = predict(task, [scene], tmp_path / str(fast), fast=fast)
        with rasterio.open(r["files"]["geotiff"]) as m:
            masks[fast] = m.read(1)
    assert np.mean(masks[True] != masks[False]) <= 1e-3  # argmax ties at float noise only


def test_detections_fast_and_plain(scene, tmp_path):
    from rsvision.tasks.detection import DetectionTask

    torch.manual_seed(0)
    model = {"type": "OrientedRCNN", "backbone": "lsknet_t", "fpn_channels": 16, "fc_channels": 32,
             "rcnn": {"score_thr": 0.0}}
    task = DetectionTask(model=model, data={"class_names": ["x", "y"], "img_size": 64}).eval()
    assert _uses_fast(task.inference_model(True))
    dets = {}
    for fast in (True, False):
        (r,) = predict(task, [scene], tmp_path / str(fast), fast=fast, png=False)
        dets[fast] = r["detections"]
    a, b = dets[True], dets[False]
    assert len(a.scores) == len(b.scores) > 0
    torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(a.boxes, b.boxes, atol=2e-2, rtol=0)


def test_classification_eval_fast_and_plain(tmp_path):
    from rsvision.data.synthetic.scenes import make_scene_dataset
    from rsvision.tasks.classification import ClassificationTask

    make_scene_dataset(tmp_path / "d", num_classes=3, per_class=4, size=32, seed=0)
    torch.manual_seed(0)
    task = ClassificationTask(model={"name": "lsknet_t"},
                              data={"classes": ["field", "forest", "water"], "in_chans": 3, "mean": [120.0] * 3,
                                    "std": [50.0] * 3, "img_size": 32}).eval()
    assert _uses_fast(task.inference_model(True))
    m = {fast: evaluate(task, tmp_path / "d", fast=fast) for fast in (True, False)}
    assert m[True]["confusion_matrix"] == m[False]["confusion_matrix"]
    probs = {fast: [r["probs"] for r in predict(task, [tmp_path / "d" / "water"], fast=fast)] for fast in (True, False)}
    np.testing.assert_allclose(probs[True], probs[False], atol=1e-4)


def test_windows_outside_the_footprint_are_skipped(tmp_path):
    """A scene whose left half is nodata: those windows are never run (counted in the stats), their
    pixels come out as nodata, and detection skips them too."""
    from rsvision.tasks.detection import DetectionTask
    from rsvision.tasks.segmentation import SegmentationTask

    arr = (np.random.default_rng(1).random((3, 128, 256)) * 254 + 1).astype(np.uint8)
    arr[:, :, :128] = 0
    p = tmp_path / "half.tif"
    with rasterio.open(p, "w", driver="GTiff", width=256, height=128, count=3, dtype="uint8", nodata=0,
                       crs="EPSG:32632", transform=from_origin(500000, 5000000, 1, 1)) as ds:
        ds.write(arr)
    torch.manual_seed(0)
    seg = SegmentationTask(model={"backbone": "test_convnext", "decoder": "upernet", "channels": 16, "in_chans": 3},
                           data={"classes": ["a", "b"], "mean": [120.0] * 3, "std": [50.0] * 3, "img_size": 64}).eval()
    (r,) = predict(seg, [p], tmp_path / "seg", window=64, overlap=0)
    assert r["stats"]["windows"] == 8 and r["stats"]["windows_skipped"] == 4 and r["stats"]["mp_per_s"] > 0
    with rasterio.open(r["files"]["geotiff"]) as m:
        mask = m.read(1)
    assert (mask[:, :128] == 255).all() and (mask[:, 128:] != 255).all()
    det = DetectionTask(model={"type": "OrientedRCNN", "backbone": "test_resnet", "fpn_channels": 8, "fc_channels": 16},
                        data={"class_names": ["x"], "img_size": 64}).eval()
    (r,) = predict(det, [p], tmp_path / "det", window=64, overlap=0, png=False)
    st = r["detections"].stats
    assert st["windows"] == 8 and st["windows_skipped"] == 4 and st["s_per_window"] >= 0
