"""``rsvision export``: every task's graph in onnxruntime gives what the PyTorch model gives on raw pixels."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rsvision.cli import app

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")  # torch.export-based exporter (segment / change)

RGB = dict(mean=[120.0, 110.0, 100.0], std=[50.0, 40.0, 30.0], dtype="uint8")
DENSE = {"backbone": "test_convnext", "decoder": "upernet", "channels": 16, "in_chans": 3}
DET = {"type": "OrientedRCNN", "backbone": "lsknet_t", "fpn_channels": 32, "fc_channels": 64,
       "backbone_kwargs": {"embed_dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]}}


def _ckpt(task, path):
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, path)
    return path


def _export(ckpt, out, *extra):
    r = CliRunner().invoke(app, ["export", "--checkpoint", str(ckpt), "--out", str(out), *extra])
    assert r.exit_code == 0, r.output + repr(r.exception)
    return r.output


def _raw(*shape, seed=0):
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.float32)


def _norm(x):
    m = torch.tensor(RGB["mean"]).view(-1, 1, 1)
    s = torch.tensor(RGB["std"]).view(-1, 1, 1)
    return (torch.from_numpy(x) - m) / s


def test_classifier_any_size(tmp_path):
    from rsvision.tasks.classification import ClassificationTask

    torch.manual_seed(0)
    task = ClassificationTask(model={"name": "test_resnet"}, data=dict(classes=["a", "b", "c"], in_chans=3,
                                                                       img_size=64, **RGB)).eval()
    text = _export(_ckpt(task, tmp_path / "c.ckpt"), tmp_path / "c.onnx")
    assert "onnxruntime = PyTorch" in text
    sess = ort.InferenceSession(str(tmp_path / "c.onnx"), providers=["CPUExecutionProvider"])
    x = _raw(3, 3, 80, 96)  # another batch and size than the export example
    got = sess.run(None, {"image": x})[0]
    with torch.no_grad():
        ref = task.net()(_norm(x)).numpy()  # normalisation applied here by hand, inside the graph there
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("kind", ["segment", "change"])
def test_dense_tasks(tmp_path, kind):
    from rsvision.tasks.change import ChangeTask
    from rsvision.tasks.segmentation import SegmentationTask

    torch.manual_seed(0)
    if kind == "segment":
        task = SegmentationTask(model=DENSE, data=dict(classes=["x", "y", "z"], img_size=64, **RGB))
        x, name = _raw(2, 3, 64, 64), "image"
    else:
        task = ChangeTask(model={**DENSE, "fusion": "diff"}, data=dict(classes=["unchanged", "changed"],
                                                                       img_size=64, **RGB))
        x, name = _raw(2, 2, 3, 64, 64), "pair"
    task.eval()
    _export(_ckpt(task, tmp_path / "m.ckpt"), tmp_path / "m.onnx")
    got = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {name: x})[0]
    with torch.no_grad():
        ref = task.model(_norm(x)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4)
    assert (got.argmax(1) == ref.argmax(1)).mean() > 0.999


def test_detector_graphs_give_the_detections(tmp_path):
    from rsvision.tasks.detection import DetectionTask
    from rsvision.tasks.export import detect_with_onnx

    torch.manual_seed(0)
    task = DetectionTask(model=DET, data=dict(class_names=["ship", "car"], img_size=128, **RGB)).eval()
    _export(_ckpt(task, tmp_path / "d.ckpt"), tmp_path / "d.onnx")
    dense = ort.InferenceSession(str(tmp_path / "d.onnx"), providers=["CPUExecutionProvider"])
    head = ort.InferenceSession(str(tmp_path / "d_roi_head.onnx"), providers=["CPUExecutionProvider"])
    img = _raw(3, 160, 192, seed=3)  # not the export size
    got = detect_with_onnx(task, dense, head, img)
    ref = task.model.predict(_norm(img)[None])[0]
    assert len(ref["boxes"]) > 10 and len(got["boxes"]) == len(ref["boxes"])
    torch.testing.assert_close(got["labels"], ref["labels"])
    torch.testing.assert_close(got["scores"], ref["scores"], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(got["boxes"], ref["boxes"], atol=1e-2, rtol=1e-3)


def test_export_refuses_to_overwrite_and_bad_names(tmp_path):
    from rsvision.tasks.classification import ClassificationTask

    task = ClassificationTask(model={"name": "test_resnet"}, data=dict(classes=["a", "b"], in_chans=3,
                                                                       img_size=64, **RGB))
    ckpt = _ckpt(task, tmp_path / "c.ckpt")
    (tmp_path / "c.onnx").write_bytes(b"earlier")
    r = CliRunner().invoke(app, ["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "c.onnx")])
    assert r.exit_code != 0 and (tmp_path / "c.onnx").read_bytes() == b"earlier"
    r = CliRunner().invoke(app, ["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "c.txt")])
    assert r.exit_code != 0 and not (tmp_path / "c.txt").exists()
    _export(ckpt, tmp_path / "c.onnx", "--exist-ok")
    assert (tmp_path / "c.onnx").stat().st_size > 1000
