"""ONNX export of every task's network, checked against PyTorch with onnxruntime.

The graphs take **raw pixel values** (float32, the checkpoint's native units and band order) and
apply the checkpoint's per-band normalisation inside, so a deployment needs nothing but the file:

* ``classify``: ``image (B, C, H, W)`` -> ``logits (B, K)`` (softmax or, multi-label, sigmoid outside);
* ``segment``: ``image (B, C, S, S)`` -> ``logits (B, K, S, S)`` for the sliding window ``S`` (fixed:
  pyramid pooling is adaptive, which ONNX expresses only for a known size);
* ``change``: ``pair (B, 2, C, S, S)`` (date A, date B) -> ``logits (B, K, S, S)``;
* ``detect`` (Oriented R-CNN): two graphs, because the step between them is data-dependent geometry.
  ``NAME.onnx``: ``image (B, C, H, W)`` -> the five FPN maps ``feat_0..4`` and the RPN maps
  ``rpn_cls_0..4`` / ``rpn_reg_0..4``; ``NAME_roi_head.onnx``: rotated-RoI features ``roi_feats
  (N, C, 7, 7)`` -> ``cls_score (N, K + 1)``, ``bbox_pred (N, 5)``. Proposal selection, rotated RoI
  Align and the final rotated NMS run outside the graphs (:func:`detect_with_onnx` does it with
  ``rsvision.ops``): rotated RoI Align groups RoIs by their adaptive sampling grid, which a traced
  graph would freeze to the example's RoIs.

The batch axis is dynamic everywhere, height and width too for classify / detect; every graph is run in onnxruntime on the example and on a
second input of another size, and the export fails when the outputs differ from PyTorch's.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from rsvision.errors import ConfigError, RSVisionError

__all__ = ["export_onnx", "detect_with_onnx", "OPSET"]

OPSET = 17
#: onnxruntime vs PyTorch: |a - b| <= ATOL + RTOL * |b| (float32 kernels differ in summation order)
ATOL, RTOL = 1e-4, 1e-3


class _Normalised(nn.Module):
    """Raw pixels -> ``(x - mean) / std`` per band (axis -3) -> ``net``."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1))

    def forward(self, x: torch.Tensor):
        return self.net((x - self.mean) / self.std)


class _DetectorDense(nn.Module):
    """Backbone + FPN + RPN head: image -> (feat_0..4, rpn_cls_0..4, rpn_reg_0..4)."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor):
        feats = self.detector.extract_feat(x)
        cls, reg = self.detector.rpn_head(feats)
        return (*feats, *cls, *reg)


def _graphs(task: Any, size: int) -> list[tuple[str, nn.Module, torch.Tensor, list[str], list[str], dict]]:
    """(suffix, module, example input, input names, output names, dynamic axes) per graph."""
    hp = task.hparams
    g = torch.Generator().manual_seed(0)
    if task.name == "detect":
        c = len(hp.mean)
        dense = _Normalised(_DetectorDense(task.model), hp.mean, hp.std).eval()
        x = torch.rand(1, c, size, size, generator=g) * 255
        n = 5
        outs = [f"feat_{i}" for i in range(n)] + [f"rpn_cls_{i}" for i in range(n)] + [f"rpn_reg_{i}" for i in range(n)]
        dyn = {"image": {0: "batch", 2: "height", 3: "width"}, **{o: {0: "batch", 2: f"h_{o}", 3: f"w_{o}"} for o in outs}}
        head = task.model.roi_head
        r = int(head.bbox_roi_extractor.output_size)
        feats = torch.randn(16, head.bbox_head.shared_fcs[0].in_features // (r * r), r, r, generator=g)
        return [("", dense, x, ["image"], outs, dyn),
                ("_roi_head", head.bbox_head.eval(), feats, ["roi_feats"], ["cls_score", "bbox_pred"],
                 {"roi_feats": {0: "rois"}, "cls_score": {0: "rois"}, "bbox_pred": {0: "rois"}})]
    if task.name == "classify":
        net = _Normalised(task.net(), hp.mean, hp.std).eval()
        x = torch.rand(1, len(hp.mean), size, size, generator=g) * 255
        return [("", net, x, ["image"], ["logits"], {"image": {0: "batch", 2: "height", 3: "width"},
                                                       "logits": {0: "batch"}})]
    if task.name in ("segment", "change"):
        net = _Normalised(task.model, hp.mean, hp.std).eval()
        c = task.in_chans
        x = torch.rand(1, *((2,) if task.name == "change" else ()), c, size, size, generator=g) * 255
        name = "pair" if task.name == "change" else "image"
        # fixed height / width (the sliding window's): UperNet's pyramid pooling is adaptive, which
        # ONNX can only express for a known input size; windows have one size anyway
        return [("", net, x, [name], ["logits"], {name: {0: "batch"}, "logits": {0: "batch"}})]
    raise ConfigError(f"no ONNX export for {task.name} checkpoints")


def _other_input(x: torch.Tensor, spatial: bool) -> torch.Tensor:
    """A second check input: another batch size and, where the axes are dynamic, another size."""
    if x.dim() == 4 and x.shape[-1] <= 8:  # roi features: only the RoI count is dynamic
        return torch.randn(5, *x.shape[1:], generator=torch.Generator().manual_seed(1))
    shape = list(x.shape)
    shape[0] = x.shape[0] + 1
    if spatial:
        shape[-2], shape[-1] = shape[-2] + 32, shape[-1] - 32
    return torch.rand(*shape, generator=torch.Generator().manual_seed(1)) * 255


def _flat(out: Any) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _compare(sess, module: nn.Module, x: torch.Tensor, name: str) -> float:
    with torch.no_grad():
        ref = [t.float().numpy() for t in _flat(module(x))]
    got = sess.run(None, {name: x.numpy()})
    worst = 0.0
    for r, o in zip(ref, got):
        if r.shape != o.shape:
            raise RSVisionError(f"onnxruntime output shape {o.shape} != PyTorch {r.shape}")
        err = np.abs(o - r)
        if not (err <= ATOL + RTOL * np.abs(r)).all():
            raise RSVisionError(f"onnxruntime differs from PyTorch by up to {err.max():.3g} (tolerance {ATOL} + "
                                f"{RTOL} x |value|): the graph does not reproduce the model")
        worst = max(worst, float(err.max()))
    return worst


def export_onnx(task: Any, path: str | Path, img_size: int | None = None, opset: int = OPSET,
                check: bool = True) -> dict[str, Any]:
    """Write ``task``'s network(s) to ONNX at ``path`` (detection: also ``<stem>_roi_head.onnx``).

    ``img_size``: the example's side (default: segment / change the sliding window, else the
    checkpoint's ``img_size``; classify / detect graphs then run at any size).
    With ``check`` (needs onnxruntime) every graph is compared with PyTorch on two inputs.
    Returns ``{"files", "inputs", "outputs", "max_abs_diff", "opset"}``. Files are written atomically.
    """
    from rsvision.outputs import atomic_path

    path = Path(path)
    if path.suffix != ".onnx":
        raise ConfigError(f"--out must end in .onnx, got {path}")
    default = task.window[0] if task.name in ("segment", "change") else task.hparams.get("img_size")
    size = int(img_size or default or 256)
    if size < 64:
        raise ConfigError(f"--img-size must be >= 64 for an export example, got {size}")
    ort = None
    if check:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RSVisionError("checking the export needs onnxruntime: pip install 'rsvision[export]' "
                                "(or pass --no-check)") from exc
    task = task.cpu().eval()
    result: dict[str, Any] = {"files": [], "inputs": {}, "outputs": {}, "max_abs_diff": {}, "opset": opset}
    for suffix, module, x, ins, outs, dyn in _graphs(task, size):
        target = path.with_name(f"{path.stem}{suffix}.onnx")
        with atomic_path(target) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings for shape checks that are constant per graph
            if "height" in str(dyn) or x.shape[-1] <= 8:  # TorchScript tracing: dynamic height / width
                torch.onnx.export(module, (x,), str(tmp), dynamo=False, opset_version=opset, input_names=ins,
                                  output_names=outs, dynamic_axes=dyn, do_constant_folding=True)
            else:  # torch.export: adaptive pooling at a fixed size, dynamic batch (example batch 2: not specialised)
                x = torch.cat([x, x.flip(-1)])
                torch.onnx.export(module, (x,), str(tmp), dynamo=True, opset_version=max(opset, 18), input_names=ins,
                                  output_names=outs, dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                                  verbose=False)
            if ort is not None:
                sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
                diff = max(_compare(sess, module, x, ins[0]), _compare(sess, module, _other_input(x, "height" in str(dyn)), ins[0]))
                result["max_abs_diff"][target.name] = diff
        result["files"].append(str(target))
        result["inputs"][target.name], result["outputs"][target.name] = ins, outs
    return result


def detect_with_onnx(task: Any, dense_session, head_session, image: np.ndarray) -> dict[str, torch.Tensor]:
    """Detections of one raw image ``(C, H, W)`` from the two exported graphs plus rsvision's geometry
    (proposals, rotated RoI Align, decoding and rotated NMS: the checkpoint's test settings).

    Returns ``{"boxes" (K, 5), "scores" (K,), "labels" (K,)}`` as the PyTorch detector's ``predict``.
    """
    from rsvision.models.heads.roi_head import rois_from_boxes

    det = task.model
    x = np.ascontiguousarray(image[None].astype(np.float32))
    outs = [torch.from_numpy(np.asarray(o)) for o in dense_session.run(None, {"image": x})]
    n = len(outs) // 3
    feats, cls, reg = outs[:n], outs[n:2 * n], outs[2 * n:]
    size = [(image.shape[-2], image.shape[-1])]
    with torch.no_grad():
        proposals = det.rpn_head.get_proposals(cls, reg, size, det.rpn_head.test_proposals)
        rois = rois_from_boxes([p.float() for p in proposals])
        pooled = det.roi_head.bbox_roi_extractor(feats, rois)
        cls_score, bbox_pred = (torch.from_numpy(np.asarray(o))
                                for o in head_session.run(None, {"roi_feats": pooled.numpy()}))
        return det.roi_head.get_detections(rois, cls_score, bbox_pred, size)[0]
