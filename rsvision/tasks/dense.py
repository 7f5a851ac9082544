"""Per-pixel tasks (semantic segmentation, change detection): the shared task, training and outputs.

:class:`DenseTask` owns what both tasks do alike: normalisation with the checkpoint's band
statistics inside ``forward`` (callers feed raw pixel values), the masked cross-entropy, sliding-
window inference over inputs of any size, the confusion-matrix validation, the evaluation loop and
the outputs of a prediction (GeoTIFF mask for georeferenced input, index / colour / overlay PNGs).
Subclasses (:mod:`rsvision.tasks.segmentation`, :mod:`rsvision.tasks.change`) build their model,
read their inputs and turn a confusion matrix into their CONVENTIONS metric dict.

``hyper_parameters``: ``model`` (the ``build_segmentor`` / ``build_change_model`` dict), ``optim``,
``sliding`` (window size / overlap / flip TTA / batch) and the data keys ``classes``, ``palette``,
``bands``, ``mean``, ``std``, ``ignore_index``, ``img_size`` and ``extra`` (e.g. the mask encoding).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rsvision.config import OptimConfig
from rsvision.data.raster import normalize
from rsvision.errors import BandMismatchError, ConfigError, DataError
from rsvision.runtime import windows_per_forward
from rsvision.tasks.base import BaseTask
from rsvision.tasks.common import to_plain
from rsvision.tasks.sliding import iter_blended_strips, sliding_window_inference
from rsvision.viz.masks import default_palette, overlay

log = logging.getLogger(__name__)

__all__ = ["DenseModelConfig", "DenseOptimConfig", "SlidingConfig", "DenseTask", "write_prediction"]


@dataclass
class DenseModelConfig:
    """``model:`` section: ``name`` is the backbone (any timm ``features_only`` model, ``lsknet_t`` ...)."""

    name: str = "resnet18"
    decoder: str = "upernet"
    channels: int = 128
    pretrained: str | None = None
    backbone_kwargs: dict = field(default_factory=dict)
    decoder_kwargs: dict = field(default_factory=dict)


@dataclass
class DenseOptimConfig(OptimConfig):
    """``optim:`` section: the shared one with this task family's defaults (AdamW 1e-3, wd 1e-4)."""

    weight_decay: float = 1e-4


@dataclass
class SlidingConfig:
    """Sliding-window inference: window ``size`` (default: the training crop), ``overlap`` pixels."""

    size: int | None = None
    overlap: int | None = None
    tta: bool = False
    batch_size: int | None = None  # windows per forward; None: 1 on a CPU, 2 on a GPU (runtime.windows_per_forward)


class DenseTask(BaseTask):
    """Per-pixel classification shared by segmentation and change detection.

    Subclasses set ``name``, ``monitor_keys`` (metrics logged as ``val/<key>``), build the network in
    :meth:`configure_model`, turn a confusion matrix into metrics in :meth:`metrics_from_cm` and open
    an input as a windowed source in :meth:`open_input`.
    """

    optim_class = DenseOptimConfig
    sections = ("sliding",)
    monitor_keys: tuple[str, ...] = ()

    def __init__(self, model: dict, data: dict, optim: dict | None = None, sliding: dict | None = None):
        from torchmetrics.classification import MulticlassConfusionMatrix

        data = dict(data)
        data.setdefault("ignore_index", 255)
        data.setdefault("img_size", 256)
        data["palette"] = [list(c) for c in (data.get("palette") or default_palette(len(data["classes"])))]
        super().__init__(model, data, optim, sliding=to_plain(sliding or {}))
        self.classes = list(self.hparams.classes)
        self.ignore_index = int(self.hparams.ignore_index)
        self.palette = self.hparams.palette
        mean, std = self.hparams.mean, self.hparams.std
        if len(mean) != len(std) or len(mean) != self.in_chans:
            raise ConfigError(f"normalisation has {len(mean)} bands but the model takes {self.in_chans}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)
        self.val_cm = MulticlassConfusionMatrix(len(self.classes), ignore_index=self.ignore_index)

    # --- subclass hooks ----------------------------------------------------------------------------
    def metrics_from_cm(self, cm) -> dict:
        raise NotImplementedError

    def open_input(self, item: Any):
        """A windowed source (``rsvision.data.raster``) for one prediction input, and its label."""
        raise NotImplementedError

    @classmethod
    def upgrade_hparams(cls, hp: dict[str, Any]) -> dict[str, Any]:
        hp.pop("pretrained", None)  # first release: DenseTask(..., pretrained=None, task=...) kwargs
        return hp

    # --- model -------------------------------------------------------------------------------------
    def load_pretrained(self, path: str | Path):
        """Backbone or full checkpoint (official, MMRotate, timm, rsvision) into the encoder."""
        report = self.model.encoder.load_pretrained(path)
        loaded = report.meta.get("encoder_tensors_loaded")
        if report.ok:  # otherwise load_checkpoint already logged the report (a warning)
            log.info("pretrained backbone %s: %s, encoder tensors %s", path, report.summary(), loaded)
        else:
            log.info("pretrained backbone %s: encoder tensors %s", path, loaded)
        return report

    @property
    def in_chans(self) -> int:
        return int(self.model.in_chans)

    @property
    def window(self) -> tuple[int, int]:
        s = dict(self.hparams.get("sliding") or {})
        size = int(s.get("size") or self.hparams.img_size)
        overlap = s.get("overlap")
        return size, int(size // 4 if overlap is None else overlap)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw pixel values (native units) -> logits; normalisation uses the checkpoint's band stats."""
        if x.shape[-3] != self.in_chans:
            raise BandMismatchError(f"input has {x.shape[-3]} bands, the model expects {self.in_chans}")
        return self.model(normalize(x, self.mean, self.std))

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Mean over labelled pixels; a crop without any (sparse labels) contributes zero, not NaN.
        total = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="sum")
        return total / (target != self.ignore_index).sum().clamp(min=1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch["image"]), batch["mask"])
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["mask"]))
        return loss

    def _sliding(self, tta: bool | None) -> tuple[bool, int]:
        s = dict(self.hparams.get("sliding") or {})
        return (bool(s.get("tta", False)) if tta is None else bool(tta),
                windows_per_forward(s.get("batch_size"), self.device))

    def infer(self, image: torch.Tensor, tta: bool | None = None, fast: bool = False) -> torch.Tensor:
        """Class probabilities ``(B, K, H, W)`` of a batch, by sliding windows when larger than the window
        (``fast``: through :meth:`inference_model`, for evaluation; validation runs the plain model)."""
        size, overlap = self.window
        tta, bs = self._sliding(tta)
        fn = self.predict_fn(fast)
        outs = [torch.from_numpy(sliding_window_inference(fn, img, size, overlap, len(self.classes), tta=tta,
                                                          batch_size=bs, device=self.device)) for img in image]
        return torch.stack(outs).to(self.device)

    def predict_fn(self, fast: bool = True):
        """Raw pixels -> logits through :meth:`inference_model` (``fast=False``: this module's forward)."""
        if not fast:
            return self
        net = self.inference_model(True)
        if net is self.model:
            return self

        def fn(x: torch.Tensor) -> torch.Tensor:
            if x.shape[-3] != self.in_chans:
                raise BandMismatchError(f"input has {x.shape[-3]} bands, the model expects {self.in_chans}")
            return net(normalize(x, self.mean, self.std))

        return fn

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        probs = self.infer(batch["image"])
        target = batch["mask"]
        nll = F.nll_loss(probs.clamp_min(1e-8).log(), target, ignore_index=self.ignore_index, reduction="sum")
        n = (target != self.ignore_index).sum().clamp(min=1)
        self.log("val/loss", nll / n, on_epoch=True, batch_size=len(target))
        self.val_cm.update(probs.argmax(1), target)

    def on_validation_epoch_end(self) -> None:
        m = self.metrics_from_cm(self.val_cm.compute())
        self.val_cm.reset()
        for k in self.monitor_keys:
            self.log(f"val/{k}", float(m[k] or 0.0), prog_bar=True, sync_dist=False)

    # --- training recipe ----------------------------------------------------------------------------
    @classmethod
    def task_data(cls, cfg: Any, classes: Sequence[str], palette, mean, std, extra: dict | None = None,
                  dtype: str | None = None) -> dict:
        """The ``model`` and ``data`` sections of a new task from a train config and its statistics
        (``dtype``: of the training images, so other dtypes are rescaled at predict time)."""
        m = cfg.model
        model = dict(backbone=m.name, decoder=m.decoder, channels=m.channels, in_chans=len(mean),
                     backbone_kwargs=dict(m.backbone_kwargs), decoder_kwargs=dict(m.decoder_kwargs))
        for k in ("fusion",):
            if hasattr(m, k):
                model[k] = getattr(m, k)
        data = dict(classes=list(classes), mean=list(mean), std=list(std), ignore_index=cfg.data.ignore_index,
                    palette=palette, bands=cfg.data.bands, img_size=cfg.data.img_size, extra=extra, dtype=dtype)
        return dict(model=model, data=data, optim=to_plain(cfg.optim), sliding=to_plain(cfg.sliding))

    @classmethod
    def from_config(cls, cfg: Any, dm: Any) -> "DenseTask":
        task = cls(**cls.config_sections(cfg, dm))
        if cfg.model.pretrained and not (cfg.trainer.resume and (Path(cfg.trainer.out) / "last.ckpt").exists()):
            task.load_pretrained(cfg.model.pretrained)
        return task

    @classmethod
    def config_sections(cls, cfg: Any, dm: Any) -> dict:
        raise NotImplementedError

    # --- verbs -------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, data: Any, tta: bool | None = None, progress=None, fast: bool = True,
                 **dataset_options: Any) -> dict:
        """CONVENTIONS metrics over ``data`` (a dataset folder, a list of them, or a dataset): whole
        images through sliding windows, plus ``per_image`` IoU records (:mod:`rsvision.tasks.per_image`).
        ``progress``: a callback ``(done, total)``."""
        from rsvision.tasks.metrics import confusion_matrix
        from rsvision.tasks.per_image import iou_record

        dataset = self.eval_dataset(data, **dataset_options) if isinstance(data, (str, Path, list, tuple)) else data
        k = len(self.classes)
        cm = np.zeros((k, k), np.int64)
        per_image = []
        for i in range(len(dataset)):
            s = dataset[i]
            probs = self.infer(s["image"][None].to(self.device), tta=tta, fast=fast)[0]
            one = confusion_matrix(probs.argmax(0).cpu(), s["mask"], k, self.ignore_index)
            cm += one
            per_image.append(iou_record(s.get("path", i), one, self.classes))
            if progress is not None:
                progress(i + 1, len(dataset))
        return {**self.metrics_from_cm(cm), "per_image": per_image}

    def eval_dataset(self, root: Any, **options: Any):
        raise NotImplementedError

    def predict(self, inputs: Sequence[Any], out: str | Path | None = None, tta: bool | None = None,
                window: int | None = None, overlap: int | None = None, rgb: Sequence[int] | None = None,
                progress=None, exist_ok: bool = False, fast: bool = True, vector: str | None = None):
        """Yield ``{"input", "files", "fraction"}`` per input; masks / PNGs written into ``out``
        (:func:`write_prediction`; ``vector``: geojson | gpkg polygons of the mask).

        Inputs of any size are read lazily, window by window. ``rgb``: 0-based input bands shown as
        red, green, blue in the overlay. ``progress(name) -> callback(done, total)`` for progress bars.
        ``out`` must be new or empty unless ``exist_ok`` (:mod:`rsvision.outputs`); outputs of two
        inputs never share a name. ``fast``: the optimised inference copy of LSKNet / HAKSNet backbones.
        """
        from rsvision.outputs import claim_dir, unique_stems

        ws, wo = self.window
        size, gap = window or ws, wo if overlap is None else overlap
        if size < 1 or not 0 <= gap < size:
            raise ConfigError(f"--window must be >= 1 and 0 <= --overlap < --window, got {size} / {gap}")
        tta, bs = self._sliding(tta)
        from rsvision.geo.writers import VECTOR_FORMATS

        if vector is not None and vector not in VECTOR_FORMATS:
            raise ConfigError(f"--vector must be one of {', '.join(VECTOR_FORMATS)}, got {vector!r}")
        items = self.items_from_inputs(inputs)
        stems = unique_stems([self.item_path(it) for it in items], [self.item_name(it) for it in items])
        for item in items:  # every input checked (readable, within budget, bands) before any work
            self._open_checked(item)[0].close()
        with claim_dir(out or "predictions", exist_ok) as out:  # claimed before the slow set-up: a clash shows at once
            fn = self.predict_fn(fast)
            for item, stem in zip(items, stems):
                source, label = self._open_checked(item)
                try:
                    cb = progress(stem) if progress is not None else None
                    stats: dict = {}
                    strips = iter_blended_strips(fn, source, size, gap, len(self.classes), batch_size=bs, tta=tta,
                                                 device=self.device, progress=cb, stats=stats)
                    files = write_prediction(self, strips, source, out, stem, _overview(source), rgb, vector)
                finally:
                    source.close()
                fraction = files.pop("fraction")
                yield {"input": label, "files": files, "fraction": fraction, "invalid_pixels": source.invalid_pixels,
                       "stats": stats}

    def _open_checked(self, item: Any):
        source, label = self.open_input(item)
        if source.count != self.in_chans:
            source.close()
            raise BandMismatchError(f"raster has {source.count} bands, the checkpoint expects {self.in_chans} "
                                    f"(bands {self.hparams.get('bands') or 'all'})", path=source.path)
        return source, label

    def item_path(self, item: Any) -> Path:
        """The file an input's outputs are named after."""
        return Path(item)

    def item_name(self, item: Any) -> str:
        return Path(item).stem

    def items_from_inputs(self, inputs: Sequence[Any]) -> list:
        raise NotImplementedError


def _first_dtype(dm) -> str | None:
    """The dtype of the first training image (stored in the checkpoint), None for a file-less datamodule."""
    from rsvision.data.raster import read_info

    images = dm.stat_images()
    return read_info(images[0]).dtype if images else None


def _overview(source, max_side: int = 2048) -> np.ndarray:
    """A decimated read of a raster (date B of a pair) for the PNG overlay, never the full scene."""
    src = getattr(source, "b", source)
    scale = max(1, int(np.ceil(max(src.height, src.width) / max_side)))
    h, w = -(-src.height // scale), -(-src.width // scale)  # = labels[::scale, ::scale].shape
    img = src.overview((h, w)) if hasattr(src, "overview") else np.asarray(src.array[..., ::scale, ::scale], np.float32)
    return np.nan_to_num(img, nan=0.0, posinf=0.0, neginf=0.0)


def write_prediction(task: DenseTask, strips, source, out: Path, stem: str, image_for_overlay,
                     rgb: Sequence[int] | None = None, vector: str | None = None) -> dict:
    """Consume ``(y0, probs)`` strips and write the outputs of one input.

    GeoTIFF mask (georeferenced input; class names and colours in its tags and colour table) or a
    palette PNG mask (plain images: pixel values are class indices, viewers show colours); an overlay
    PNG with a legend; for a pair (change) an A | B | prediction PNG; ``vector`` (geojson | gpkg):
    polygons of the classes, named, in the raster's CRS. ``rgb``: 0-based input bands drawn as RGB."""
    from PIL import Image

    from rsvision.data.tiling import Window
    from rsvision.geo.writers import MaskWriter, class_tags, write_mask_vectors
    from rsvision.outputs import atomic_path
    from rsvision.viz.masks import save_palette_png, side_by_side, stretch, with_legend

    out.mkdir(parents=True, exist_ok=True)
    H, W = source.height, source.width
    georef = source.transform is not None or source.crs is not None
    scale = max(1, int(np.ceil(max(H, W) / 2048)))  # the PNG pictures: at most 2048 px a side
    k = len(task.classes)
    labels = np.empty((H, W), np.uint8) if not georef else None  # full labels only for the PNG mask
    small_rows, counts = [], np.zeros(k, np.int64)
    writer = MaskWriter(out / f"{stem}_mask.tif", H, W, source.transform, source.crs, nodata=255,
                        palette=task.palette, tags=class_tags(task.classes, task.palette)) if georef else None
    done = False
    try:
        for y0, probs in strips:
            lab = probs.argmax(0).astype(np.uint8)
            lab[~source.valid(Window(0, y0, W, lab.shape[0]))] = 255
            counts += np.bincount(lab[lab != 255].ravel(), minlength=k)[:k]
            small_rows.append(lab[(-y0) % scale :: scale, ::scale])
            if writer is not None:
                writer.write_rows(y0, lab)
            else:
                labels[y0 : y0 + lab.shape[0]] = lab
        if not counts.any():
            raise DataError("no usable pixels (all nodata, NaN or inf): nothing predicted", path=source.path)
        done = True
    finally:
        if writer is not None:
            writer.close(commit=done)
    small = np.concatenate(small_rows, 0)
    files: dict = {}
    if writer is not None:
        files["geotiff"] = str(writer.path)
    else:
        path = out / f"{stem}_mask.png"
        with atomic_path(path) as tmp:
            save_palette_png(tmp, labels, task.palette)
        files["mask"] = str(path)
    present = [i for i in range(k) if counts[i]]
    over = overlay(image_for_overlay, small, task.palette, rgb=rgb)
    pictures = {"overlay": with_legend(over, task.classes, task.palette, present)}
    if hasattr(source, "a"):  # a pair: date A | date B | prediction over B
        a_img = stretch(_overview(source.a), rgb)
        pictures["compare"] = with_legend(side_by_side([a_img, stretch(image_for_overlay, rgb), over],
                                                       ["A", "B", "prediction"]), task.classes, task.palette, present)
    for kind, arr in pictures.items():
        path = out / f"{stem}_{kind}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(arr).save(tmp)
        files[kind] = str(path)
    if vector is not None:
        skip = [0] if task.name == "change" else []  # change maps: the changed regions, not the unchanged rest
        src = writer.path if writer is not None else labels
        files["vector"] = str(write_mask_vectors(src, task.classes, out / f"{stem}_mask", vector,
                                                 source.transform if writer is None else None,
                                                 source.crs if writer is None else None, skip=skip))
    files["fraction"] = {c: float(n) / max(1, counts.sum()) for c, n in zip(task.classes, counts)}
    return files
