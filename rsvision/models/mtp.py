"""MTP's network (arXiv 2403.13430): one encoder, one decoder per task shared by every dataset, and
per-dataset last layers.

As the official ``Multi-Task_Pretrain`` code: the datasets' batches are concatenated and encoded once,
the feature maps split back per dataset, and each dataset runs every task's decoder (UperNet for
``semantic``, Oriented R-CNN's FPN + RPN + RoI head for ``rotated``, Mask R-CNN for ``instance``).
Only the layers whose size depends on the dataset's classes are its own: the semantic classifier,
``fc_cls`` / ``fc_reg`` of the rotated RoI head and the instance head's last layers. They live in
``heads[<dataset>][<slot>]`` and are swapped into the shared decoder while that dataset runs
(:meth:`MTPNet.use_heads`), so each receives gradients from its own dataset only, and the shared
decoders' own copies are absent (``None``) outside that block.

Losses: ``{"<dataset>/<task>/<loss name>": tensor}``; the pretraining objective is their (weighted)
sum. ``encoder`` is the module every downstream task loads with ``--pretrained``; its keys are the
backbone's own (official names for rsvision backbones), as the detector and segmentor hold them.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from rsvision.errors import ConfigError

__all__ = ["MTPNet", "TASKS"]

TASKS = ("semantic", "rotated", "instance")
IGNORE_INDEX = 255


class MTPNet(nn.Module):
    """Shared encoder + task decoders + per-dataset last layers.

    Args:
        backbone: rsvision backbone (``lsknet_t``, ``vit_b_rvsa``, ...) or a timm ``features_only`` name.
        datasets: dataset name -> its object class names (semantic classes: background + these).
        tasks: a subset of :data:`TASKS`.
        seg_channels: UperNet width. detector: Oriented R-CNN builder keys (``fpn_channels``,
            ``fc_channels``, ``rpn``, ``rcnn``, ...). instance: the Mask R-CNN decoder's keys.

    ``conditional_compute``: a dataset without a task's labels leaves that task's last layers without a
    gradient in a step, so DDP needs ``find_unused_parameters`` (``rsvision.tasks.train`` sets it).
    """

    conditional_compute = True

    def __init__(self, backbone: str, datasets: Mapping[str, Sequence[str]], tasks: Sequence[str] = TASKS[:2],
                 in_chans: int = 3, backbone_kwargs: Mapping[str, Any] | None = None, seg_channels: int = 256,
                 detector: Mapping[str, Any] | None = None, instance: Mapping[str, Any] | None = None):
        super().__init__()
        from rsvision.models.detectors.builder import DEFAULT_CONFIG, _make_backbone, oriented_rcnn
        from rsvision.models.detectors.oriented_rcnn import backbone_channels

        bad = sorted(set(tasks) - set(TASKS))
        if bad or not tasks:
            raise ConfigError(f"model.tasks must be a non-empty subset of {list(TASKS)}, got {list(tasks)}")
        if not datasets:
            raise ConfigError("MTP needs at least one dataset")
        self.tasks = [t for t in TASKS if t in tasks]
        self.datasets = {k: list(v) for k, v in datasets.items()}
        kwargs = dict(backbone_kwargs or {})
        if "rotated" in self.tasks:
            det = oriented_rcnn(backbone=backbone, in_chans=in_chans, backbone_kwargs=kwargs, num_classes=1,
                                **dict(detector or {}))
            self.encoder, self.indices = det.backbone, det.backbone_indices
            det.backbone = nn.Identity()  # the encoder is shared, not the detector's
            self.rotated = det
        else:
            drops = DEFAULT_CONFIG["backbone_drop_rate"], DEFAULT_CONFIG["backbone_drop_path_rate"]
            self.encoder, self.indices = _make_backbone(backbone, in_chans, kwargs, *drops)
        chans = backbone_channels(self.encoder)
        chans = [chans[i] for i in self.indices] if self.indices is not None else chans
        if "semantic" in self.tasks:
            from rsvision.models.segmentation.upernet import UperHead

            self.semantic = UperHead(chans, 1, seg_channels)
        if "instance" in self.tasks:
            self.instance = _instance_decoder(chans, dict(instance or {}))
        self.heads = nn.ModuleDict({name: self._make_heads(len(cls)) for name, cls in self.datasets.items()})
        for parent, attr in self._slots().values():  # the shared decoders keep no last layer of their own
            setattr(parent, attr, None)

    # --- per-dataset last layers ---------------------------------------------------------------------
    def _slots(self) -> dict[str, tuple[nn.Module, str]]:
        """slot name -> (module of the shared decoder, attribute) that the per-dataset layer fills."""
        s: dict[str, tuple[nn.Module, str]] = {}
        if "semantic" in self.tasks:
            s["semantic"] = (self.semantic, "classifier")
        if "rotated" in self.tasks:
            bh = self.rotated.roi_head.bbox_head
            s["fc_cls"], s["fc_reg"] = (bh, "fc_cls"), (bh, "fc_reg")
        if "instance" in self.tasks:
            s.update(self.instance.dataset_slots())
        return s

    def _make_heads(self, num_classes: int) -> nn.ModuleDict:
        """Fresh last layers for ``num_classes`` object classes, initialised as the shared decoder's."""
        heads: dict[str, nn.Module] = {}
        for name, (parent, attr) in self._slots().items():
            layer = getattr(parent, attr)
            if name == "semantic":
                heads[name] = nn.Conv2d(layer.in_channels, num_classes + 1, 1)
            elif name == "fc_cls":
                heads[name] = nn.Linear(layer.in_features, num_classes + 1)
                nn.init.normal_(heads[name].weight, std=0.01)
                nn.init.zeros_(heads[name].bias)
            elif name == "fc_reg":
                heads[name] = copy.deepcopy(layer)
                nn.init.normal_(heads[name].weight, std=0.001)
                nn.init.zeros_(heads[name].bias)
            else:
                heads[name] = self.instance.make_dataset_layer(name, layer, num_classes)
        return nn.ModuleDict(heads)

    @contextlib.contextmanager
    def use_heads(self, dataset: str) -> Iterator[None]:
        """Run the shared decoders with ``dataset``'s last layers (and its class count) in place."""
        if dataset not in self.heads:
            raise KeyError(f"unknown dataset {dataset!r}; known: {list(self.heads)}")
        slots, k = self._slots(), len(self.datasets[dataset])
        for name, (parent, attr) in slots.items():
            setattr(parent, attr, self.heads[dataset][name])
        if "rotated" in self.tasks:
            self.rotated.roi_head.num_classes = self.rotated.roi_head.bbox_head.num_classes = k
        if "instance" in self.tasks:
            self.instance.set_num_classes(k)
        try:
            yield
        finally:
            for parent, attr in slots.values():
                setattr(parent, attr, None)

    # --- forward -------------------------------------------------------------------------------------
    def features(self, images: Tensor) -> list[Tensor]:
        """The encoder's stride 4 / 8 / 16 / 32 maps."""
        from rsvision.models.detectors.oriented_rcnn import backbone_forward

        return backbone_forward(self.encoder, images, self.indices)

    def dataset_losses(self, dataset: str, feats: list[Tensor], batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Every task's losses of one dataset's part of the batch (its feature maps and labels)."""
        out: dict[str, Tensor] = {}
        size = batch["image"].shape[-2:]
        targets = batch["targets"]
        sizes = [t.get("image_size", tuple(size)) for t in targets]
        with self.use_heads(dataset):
            if "semantic" in self.tasks:
                logits = F.interpolate(self.semantic(feats), size=size, mode="bilinear", align_corners=False)
                sem = batch["semantic"].to(logits.device)
                loss = F.cross_entropy(logits.float(), sem, ignore_index=IGNORE_INDEX)
                out[f"{dataset}/semantic/loss_seg"] = loss if (sem != IGNORE_INDEX).any() else logits.sum() * 0.0
            if "rotated" in self.tasks:
                for k, v in self.rotated.decode(self.rotated.neck(feats), sizes, targets).items():
                    out[f"{dataset}/rotated/{k}"] = v
            if "instance" in self.tasks:
                for k, v in self.instance.losses(feats, targets, sizes).items():
                    out[f"{dataset}/instance/{k}"] = v
        return out

    def forward(self, batches: Mapping[str, Mapping[str, Any]]) -> dict[str, Tensor]:
        """``{dataset: {"image" (B_d, C, S, S), "semantic", "targets"}}`` -> all losses, encoded once."""
        names = list(batches)
        counts = [len(batches[n]["image"]) for n in names]
        feats = self.features(torch.cat([batches[n]["image"] for n in names]))
        out: dict[str, Tensor] = {}
        for name, part in zip(names, zip(*[f.split(counts) for f in feats])):
            out.update(self.dataset_losses(name, list(part), batches[name]))
        return out


def _instance_decoder(chans: Sequence[int], cfg: dict[str, Any]) -> nn.Module:
    """The Mask R-CNN decoder on precomputed features (``rsvision.models.detectors.mask_rcnn``)."""
    try:
        from rsvision.models.detectors import mask_rcnn
    except ImportError as exc:
        raise ConfigError("model.tasks: 'instance' needs rsvision.models.detectors.mask_rcnn, which this "
                          "rsvision does not have; use [semantic, rotated]") from exc
    factory = getattr(mask_rcnn, "mtp_instance_decoder", None)
    if factory is None:
        raise ConfigError("model.tasks: 'instance': rsvision.models.detectors.mask_rcnn has no decoder on "
                          "precomputed features (mtp_instance_decoder) yet; use [semantic, rotated]")
    return factory(list(chans), **cfg)
