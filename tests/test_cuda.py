"""CUDA: the device-agnostic code gives the golden / CPU results on a GPU (skipped without CUDA).

Run on a GPU machine with ``python -m pytest tests/test_cuda.py``. TF32 is switched off here so
that fp32 on the GPU is compared with the fp32 tolerances of the CPU tests (cuDNN convolutions
use TF32 by default, ~1e-3 relative).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
import yaml
from typer.testing import CliRunner

import rsvision  # noqa: F401  (registers the models)
from rsvision.cli import app
from rsvision.models import build_model, load_checkpoint
from rsvision.models.fast import optimize_for_inference, optimize_for_training
from rsvision.ops import (
    DeltaXYWHAOBBoxCoder,
    box_iou_rotated,
    multiclass_nms_rotated,
    nms_rotated,
    obb2poly,
    poly2obb,
    roi_align_rotated,
)
from tests.conftest import shared_path

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
runner = CliRunner()
TOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _no_tf32():
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _golden(name):
    return torch.load(shared_path("golden", f"{name}_golden.pt"), weights_only=True)


def _close(a, b, atol, what=""):
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    assert a.shape == b.shape, (what, a.shape, b.shape)
    d = (a - b).abs().max().item() if a.numel() else 0.0
    assert d <= atol, f"{what}: max abs {d:.3g} > {atol}"


# --- rotated ops: golden entries and random inputs, GPU vs CPU -----------------------------------
def test_rotated_ops_golden_on_cuda():
    g = _golden("rotated_ops")
    iou = g["box_iou_rotated"]
    b1, b2 = iou["boxes1"].cuda(), iou["boxes2"].cuda()
    for mode in ("iou", "iof"):
        _close(box_iou_rotated(b1, b2, mode), iou[mode], 1e-4, mode)
        _close(box_iou_rotated(b1, b2, mode, aligned=True), iou[f"{mode}_aligned"], 1e-4, mode)
    for thr in ("0.1", "0.5"):
        n = g["nms_rotated"]
        keep = nms_rotated(n["boxes"].cuda(), n["scores"].cuda(), float(thr))
        assert keep.device.type == "cuda" and torch.equal(keep.cpu(), n[f"keep_thr_{thr}"])
    r = g["roi_align_rotated"]
    st = r["settings"]
    for name, cw, sr in (("cw_sr2", True, 2), ("ccw_sr2", False, 2), ("cw_sr0", True, 0)):
        feats = r["features"].cuda().clone().requires_grad_(True)
        out = roi_align_rotated(feats, r["rois"].cuda(), tuple(st["output_size"]), st["spatial_scale"], sr,
                                st["aligned"], cw)
        _close(out, r[f"out_{name}"], 1e-4, name)
        out.backward(r["grad_output"].cuda())
        _close(feats.grad, r[f"grad_input_{name}"], 1e-4, name + " grad")
    c = g["delta_xywha_obb_coder"]
    coder = DeltaXYWHAOBBoxCoder(**c["kwargs"])
    _close(coder.encode(c["proposals"].cuda(), c["gt"].cuda()), c["encoded"], 1e-4, "encode")
    dk = c["decode_kwargs"]
    dec = coder.decode(c["proposals"].cuda(), c["deltas"].cuda(), tuple(dk["max_shape"]), dk["wh_ratio_clip"])
    _close(dec, c["decoded"], 1e-5, "decode")
    for v in ("le90", "le135", "oc"):
        p = g[f"poly2obb_{v}"]
        _close(poly2obb(p["poly"].cuda(), v), p["obb"], 1e-5, v)
        o = g[f"obb2poly_{v}"]
        _close(obb2poly(o["obb"].cuda(), v), o["poly"], 1e-5, v)


def _random_boxes(n, seed, size=512.0):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * size
    wh = torch.rand(n, 2, generator=gen) * 60 + 2
    a = (torch.rand(n, 1, generator=gen) - 0.5) * torch.pi
    return torch.cat([xy, wh, a], 1)


def test_rotated_ops_random_cuda_equals_cpu():
    b1, b2 = _random_boxes(700, 0), _random_boxes(500, 1)
    _close(box_iou_rotated(b1.cuda(), b2.cuda()), box_iou_rotated(b1, b2), 1e-5, "iou")
    boxes = _random_boxes(3000, 2, size=300.0)
    scores = torch.rand(3000, generator=torch.Generator().manual_seed(3))
    for thr in (0.1, 0.5):
        assert torch.equal(nms_rotated(boxes.cuda(), scores.cuda(), thr).cpu(), nms_rotated(boxes, scores, thr))
    cls_scores = torch.rand(3000, 6, generator=torch.Generator().manual_seed(4))
    d_cpu, l_cpu = multiclass_nms_rotated(boxes, cls_scores, 0.05, 0.1, max_num=500)
    d_gpu, l_gpu = multiclass_nms_rotated(boxes.cuda(), cls_scores.cuda(), 0.05, 0.1, max_num=500)
    assert torch.equal(l_gpu.cpu(), l_cpu)
    _close(d_gpu, d_cpu, 1e-6, "multiclass nms")


# --- backbones: golden weights, plain and fast, inference and training ---------------------------
def _backbone(name, sd, **kw):
    m = timm.create_model(name, **kw).eval()
    assert not load_checkpoint(m, sd).unexpected
    return m


def _check_stages(outs, refs, what):
    for i, (o, r) in enumerate(zip(outs, refs)):
        d = (o.cpu() - r).abs().max().item()
        assert d <= TOL and d / r.abs().max().item() <= TOL, f"{what} stage {i}: abs {d:.2e}"


@pytest.mark.parametrize("name", ["lsknet_t", "haksnet_t"])
def test_backbone_golden_plain_fast_features_only_on_cuda(name):
    g = _golden(name)
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in g["state_dict"].items()}
    plain = _backbone(name, sd, num_classes=0).cuda()
    fast = optimize_for_inference(plain)
    feat = optimize_for_inference(_backbone(name, sd, features_only=True, out_indices=(0, 1, 2, 3)).cuda())
    with torch.inference_mode():
        for x, refs in zip(g["inputs"], g["outputs"]):  # the second input: batch 2, 100 x 130
            xc = x.cuda()
            _check_stages(plain.forward_intermediates(xc, intermediates_only=True), refs, f"{name} plain")
            _check_stages(fast.forward_intermediates(xc, intermediates_only=True), refs, f"{name} fast")
            _check_stages(fast.forward_intermediates(xc.contiguous(memory_format=torch.channels_last),
                                                     intermediates_only=True), refs, f"{name} fast NHWC")
            _check_stages(feat(xc), refs, f"{name} features_only fast")


@pytest.mark.parametrize("name", ["lsknet_t", "haksnet_t"])
def test_training_path_gradients_on_cuda(name):
    g = _golden(name)
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in g["state_dict"].items()}
    plain = _backbone(name, sd, num_classes=0).cuda().train()
    fast = optimize_for_training(plain)
    x = g["inputs"][1].cuda()

    def grads(m, x):
        m.zero_grad(set_to_none=True)
        feats = m.forward_intermediates(x, intermediates_only=True)
        sum(w * (f.tanh() * torch.linspace(-1, 1, f.shape[-1], device=f.device)).mean()
            for w, f in zip((0.5, 0.8, 1.1, 1.5), feats)).backward()
        return {k: p.grad.detach().cpu() for k, p in m.named_parameters()}

    gp, gf = grads(plain, x), grads(fast, x.contiguous(memory_format=torch.channels_last))
    gmax = max(v.abs().max().item() for v in gp.values())
    for k in gp:
        d, scale = (gf[k] - gp[k]).abs().max().item(), gp[k].abs().max().item()
        if k.startswith("patch_embed") and k.endswith("proj.bias"):  # exactly 0 before a train-mode BN
            assert max(d, scale) <= 1e-6 * gmax, k
        else:
            assert d <= TOL * scale + 1e-12, f"{k}: {d:.2e} vs max {scale:.2e}"


# --- the whole Oriented R-CNN on the golden image ------------------------------------------------
def test_oriented_rcnn_golden_end_to_end_on_cuda():
    from tests.models.test_oriented_rcnn_golden import _compare_detections

    g = _golden("oriented_rcnn")
    m = build_model(g["config"])
    assert load_checkpoint(m, shared_path("golden", "oriented_rcnn_golden.pt")).ok
    m = m.eval().cuda()
    size = [tuple(g["input"]["img_meta"]["img_shape"][:2])]
    with torch.no_grad():
        fpn = m.extract_feat(g["input"]["img"].cuda())
        for o, r in zip(fpn, g["fpn_outs"]):
            _close(o, r, 1e-4, "fpn")
        dets = m(g["input"]["img"].cuda(), image_sizes=size)
    assert dets[0]["boxes"].device.type == "cuda"
    _compare_detections(g["detections"], {k: v.cpu() for k, v in dets[0].items()}, 2e-2, 2e-4, 1e-3)


# --- the Lightning tasks and CLIs with --device cuda ---------------------------------------------
def test_classify_train_and_eval_on_cuda(tmp_path):
    from rsvision.data.synthetic.scenes import make_scene_dataset

    make_scene_dataset(tmp_path / "data", num_classes=3, per_class=8, size=24)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"img_size": 16, "batch_size": 4}, "model": {"name": "lsknet_t", "fast": True},
                                   "trainer": {"progress": "none"}}))
    r = runner.invoke(app, ["classify", "train", "--config", str(cfg), "--data", str(tmp_path / "data"),
                            "--epochs", "2", "--out", str(tmp_path / "run"), "--device", "cuda"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    res = {}
    for dev in ("cuda", "cpu"):
        j = tmp_path / f"{dev}.json"
        r = runner.invoke(app, ["classify", "eval", "--checkpoint", str(tmp_path / "run" / "best.ckpt"), "--data",
                                str(tmp_path / "data"), "--split", "test", "--device", dev, "--json", str(j)])
        assert r.exit_code == 0, r.output + repr(r.exception)
        res[dev] = json.loads(j.read_text())
    assert res["cuda"]["confusion_matrix"] == res["cpu"]["confusion_matrix"]


def test_detect_train_eval_predict_on_cuda(tmp_path):
    from rsvision.data.synthetic.objects import make_dota_dataset
    from tests.cli.test_detect_cli import TINY_CFG

    make_dota_dataset(tmp_path / "d" / "train", 4, 128, seed=0, num_objects=4)
    make_dota_dataset(tmp_path / "d" / "val", 2, 128, seed=1, num_objects=4)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**TINY_CFG, "trainer": {**TINY_CFG["trainer"], "device": "cuda"}}))
    r = runner.invoke(app, ["detect", "train", "--config", str(cfg), "--data", str(tmp_path / "d"), "--epochs", "2",
                            "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output + repr(r.exception)
    maps = {}
    for dev in ("cuda", "cpu"):
        j = tmp_path / f"{dev}.json"
        r = runner.invoke(app, ["detect", "eval", "--checkpoint", str(tmp_path / "run" / "best.ckpt"), "--img-dir",
                                str(tmp_path / "d" / "val" / "images"), "--ann-dir",
                                str(tmp_path / "d" / "val" / "labelTxt"), "--json", str(j), "--device", dev])
        assert r.exit_code == 0, r.output + repr(r.exception)
        maps[dev] = json.loads(j.read_text())["mAP"]
    assert abs(maps["cuda"] - maps["cpu"]) <= 0.02, maps
    img = next((tmp_path / "d" / "val" / "images").glob("*.png"))
    r = runner.invoke(app, ["detect", "predict", "--checkpoint", str(tmp_path / "run" / "best.ckpt"), str(img),
                            "--out", str(tmp_path / "pred"), "--score-thr", "0.0", "--device", "cuda"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert (tmp_path / "pred" / f"{img.stem}.png").is_file()


def test_segment_predict_cuda_equals_cpu(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from rsvision.data.synthetic.segmentation import make_segmentation_sample, write_segmentation_folder
    from rsvision.tasks import load_task, predict

    data = write_segmentation_folder(tmp_path / "data", n=8, size=64, zero_is_ignore=True)
    cfg = tmp_path / "seg.yaml"
    cfg.write_text(
        "data: {mask: {classes: [background, building, road, water], reduce_zero_label: true}, "
        "img_size: 64, batch_size: 4}\n"
        "model: {name: lsknet_t, decoder: upernet, channels: 32}\n"
        "trainer: {progress: none, device: cuda}\n"
    )
    r = runner.invoke(app, ["segment", "train", "--config", str(cfg), "--data", str(data), "--epochs", "2",
                            "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output + repr(r.exception)
    img, _ = make_segmentation_sample((300, 260), 3, seed=7)
    src = tmp_path / "scene.tif"
    from rasterio.transform import from_origin

    with rasterio.open(src, "w", driver="GTiff", width=260, height=300, count=3, dtype="uint8", crs="EPSG:32632",
                       transform=from_origin(500000, 5000000, 0.5, 0.5)) as ds:
        ds.write(img)
    masks = {}
    for dev in ("cuda", "cpu"):
        list(predict(load_task(tmp_path / "run" / "best.ckpt", dev), [src], tmp_path / dev))
        with rasterio.open(tmp_path / dev / "scene_mask.tif") as m:
            masks[dev] = m.read(1)
    # argmax of fp32 logits: equal except where two classes tie to float noise
    assert np.mean(masks["cuda"] != masks["cpu"]) <= 1e-3
