"""Self-supervised pretraining of a SkySense V2 (or any ``forward_intermediates``) encoder on S1 / S2 data.

What SkySense V2 (arXiv 2507.13812) describes and this task does: an EMA teacher; global and local
multi-crop views; a contrastive loss between views of several granularities (here: every student
view, global or local, against the teacher's embedding of the *other* global views, InfoNCE with the
batch's other scenes as negatives); Query-based Semantic Aggregation Contrastive Learning (QSACL:
``num_queries`` learnable queries cross-attend to a view's last-stage tokens, and each query's
embedding is contrasted with the same query of the teacher's other global view, the batch's other
queries and scenes as negatives), so regions of a scene are matched with their counterparts rather
than whole views; plus the MoE balance loss (``model.aux_loss``).

Left out, and why: the image-text alignment with OpenStreetMap (no such data here); SkySense's pixel-
and object-level granularities of the contrastive loss (only view-level crops of two sizes are
contrasted); negatives are not gathered across DDP processes (each process contrasts its own batch).
Choices of this implementation: projector MLP ``C -> hidden -> proj_dim`` shared by both losses,
QSACL on the two global student views only (local crops may not contain a query's region), teacher
momentum constant (``teacher_momentum``).

The run directory's ``best.ckpt`` / ``last.ckpt`` hold student (``model.encoder``), heads and teacher;
``encoder.pth`` (written after training) holds the student encoder alone: both load with
``--pretrained`` into any task built on the same backbone (``rsvision.models.load_checkpoint``).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

import rsvision  # noqa: F401  (registers rsvision backbones with timm)
from rsvision.config import OptimConfig
from rsvision.data.multimodal import DEFAULT_MODALITIES, MultiCropViews, MultimodalDataConfig, SSLDataModule
from rsvision.errors import CheckpointError, ConfigError
from rsvision.tasks.base import BaseTask, RunResult, register_task
from rsvision.tasks.common import TrainerOptions

__all__ = ["SSLDataSection", "SSLModelConfig", "SSLOptimConfig", "SSLConfig", "SSLTask", "info_nce"]


@dataclass
class SSLDataSection:
    """``data:`` section: the S1 / S2 folder (SSL4EO-S12, BigEarthNet v1.0, reBEN), modalities, views."""

    root: str | None = None
    format: str = "auto"  # auto | index | bigearthnet_v1 | reben | ssl4eo | images (class folders, one modality)
    split_file: str | None = None  # pairs: split,path (pair id) rows; images: a classify split file
    source_size: int | None = None  # images: each resized to this before cropping views (default 2 x img_size)
    modalities: dict[str, list[str]] | None = None  # None: S2's ten bands + S1 (a set dict replaces it whole)
    img_size: int = 96  # global view size
    local_size: int = 48
    n_local: int = 2
    global_scale: list[float] = field(default_factory=lambda: [0.4, 1.0])
    local_scale: list[float] = field(default_factory=lambda: [0.05, 0.4])
    mean: dict[str, list[float]] | None = None  # per modality (None: from the train split)
    std: dict[str, list[float]] | None = None
    batch_size: int = 8
    eval_batch_size: int | None = None
    num_workers: int = 0


@dataclass
class SSLModelConfig:
    name: str = "skysense_v2_tiny"
    pretrained: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    proj_dim: int = 128
    hidden_dim: int = 512
    num_queries: int = 8
    temperature: float = 0.1
    teacher_momentum: float = 0.996


@dataclass
class SSLOptimConfig(OptimConfig):
    no_decay_norm_bias: bool = True
    image_loss_weight: float = 1.0
    query_loss_weight: float = 1.0
    aux_loss_weight: float = 0.01


def _ssl_trainer() -> TrainerOptions:
    return TrainerOptions(out="runs/ssl", monitor="val/loss", mode="min")


@dataclass
class SSLConfig:
    """A whole ``rsvision pretrain ssl`` config (see ``configs/ssl_skysense_v2_tiny.yaml``)."""

    data: SSLDataSection = field(default_factory=SSLDataSection)
    model: SSLModelConfig = field(default_factory=SSLModelConfig)
    optim: SSLOptimConfig = field(default_factory=SSLOptimConfig)
    trainer: TrainerOptions = field(default_factory=_ssl_trainer)


def info_nce(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of L2-normalised rows: row i of ``student`` should match row i of ``teacher`` among all rows."""
    logits = student @ teacher.T / temperature
    return F.cross_entropy(logits, torch.arange(len(student), device=student.device))


class SSLHeads(nn.Module):
    """Projector MLP and QSACL's queries + cross-attention over a (B, C, h, w) feature map."""

    def __init__(self, dim: int, hidden: int, out: int, num_queries: int):
        super().__init__()
        self.projector = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out))
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.cross = nn.MultiheadAttention(dim, max(1, dim // 32), batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def image(self, fmap: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(fmap.mean((2, 3))), dim=-1)

    def query(self, fmap: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, m, proj_dim) normalised query embeddings."""
        tokens = fmap.flatten(2).transpose(1, 2)
        q = self.queries.unsqueeze(0).expand(len(fmap), -1, -1)
        agg, _ = self.cross(q, tokens, tokens, need_weights=False)
        return F.normalize(self.projector(self.norm(agg + q)), dim=-1)


class SSLNet(nn.Module):
    def __init__(self, encoder: nn.Module, heads: SSLHeads):
        super().__init__()
        self.encoder, self.heads = encoder, heads

    def features(self, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Last-stage fused map and this forward's MoE balance loss (0 without one)."""
        fmap = self.encoder.forward_intermediates(x, indices=[-1], intermediates_only=True)[-1]
        aux = getattr(self.encoder, "aux_loss", None)
        return fmap, aux if isinstance(aux, torch.Tensor) else fmap.new_zeros(())


@register_task
class SSLTask(BaseTask):
    """Student encoder + heads (``model``) trained against an EMA teacher (``teacher``, not optimised)."""

    name = "ssl"
    config_class = SSLConfig
    optim_class = SSLOptimConfig
    monitor, mode = "val/loss", "min"

    def __init__(self, model: dict[str, Any], data: dict[str, Any], optim: dict[str, Any] | None = None):
        super().__init__(model, data, optim)
        self.teacher = copy.deepcopy(self.model).requires_grad_(False)

    def configure_model(self) -> nn.Module:
        m = SSLModelConfig(**self.hparams.model)
        kwargs = {"modalities": dict(self.hparams.modalities), **m.kwargs}
        try:
            enc = timm.create_model(m.name, pretrained=False, num_classes=0, **kwargs)
        except (RuntimeError, TypeError) as exc:
            raise CheckpointError(f"cannot build SSL encoder {m.name!r} with modalities: {exc}") from exc
        if not hasattr(enc, "forward_intermediates"):
            raise ConfigError(f"model {m.name!r} has no forward_intermediates (use a skysense_v2_* encoder)")
        return SSLNet(enc, SSLHeads(enc.num_features, m.hidden_dim, m.proj_dim, m.num_queries))

    # --- losses -----------------------------------------------------------------------------------
    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        m = SSLModelConfig(**self.hparams.model)
        tau = m.temperature
        self.teacher.eval()
        with torch.no_grad():
            t_maps = [self.teacher.features(v)[0] for v in batch["global"]]
            t_img = [self.teacher.heads.image(f) for f in t_maps]
            t_q = [self.teacher.heads.query(f) for f in t_maps]
        s_views = [*batch["global"], *batch["local"]]
        img, qry, aux = [], [], []
        n_global = len(batch["global"])
        for v_idx, view in enumerate(s_views):
            fmap, a = self.model.features(view)
            aux.append(a)
            z = self.model.heads.image(fmap)
            others = [g for g in range(n_global) if g != v_idx]  # a global view is not contrasted with itself
            img += [info_nce(z, t_img[g], tau) for g in others]
            if v_idx < n_global:
                q = self.model.heads.query(fmap)
                qry += [info_nce(q.flatten(0, 1), t_q[g].flatten(0, 1), tau) for g in others]
        out = {"image": torch.stack(img).mean(), "query": torch.stack(qry).mean(), "aux": torch.stack(aux).mean()}
        o = self.optim_cfg
        out["loss"] = o.image_loss_weight * out["image"] + o.query_loss_weight * out["query"] + o.aux_loss_weight * out["aux"]
        return out

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        parts = self.losses(batch)
        bs = len(batch["index"])
        for k, v in parts.items():
            self.log(f"train/{k}", v.detach(), on_step=True, on_epoch=True, batch_size=bs, sync_dist=True)
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=bs)
        return parts["loss"]

    @torch.no_grad()
    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        mom = float(self.hparams.model.get("teacher_momentum", 0.996))
        for pt, ps in zip(self.teacher.parameters(), self.model.parameters()):
            pt.mul_(mom).add_(ps.detach(), alpha=1 - mom)
        for bt, bs in zip(self.teacher.buffers(), self.model.buffers()):
            bt.copy_(bs)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        parts = self.losses(batch)
        for k, v in parts.items():
            self.log(f"val/{k}", v, on_epoch=True, batch_size=len(batch["index"]), sync_dist=True)

    # --- recipe -----------------------------------------------------------------------------------
    @classmethod
    def build_datamodule(cls, cfg: SSLConfig) -> SSLDataModule:
        d = cfg.data
        d.modalities = {k: list(v) for k, v in (d.modalities or DEFAULT_MODALITIES).items()}
        mcfg = MultimodalDataConfig(root=d.root, format=d.format, modalities=d.modalities,
                                    img_size=d.img_size, mean=d.mean, std=d.std, batch_size=d.batch_size,
                                    eval_batch_size=d.eval_batch_size, num_workers=d.num_workers,
                                    split_file=d.split_file)
        views = MultiCropViews(d.img_size, d.local_size, 2, d.n_local, d.global_scale, d.local_scale)
        if d.format == "images":  # scene class folders as one modality
            from rsvision.data.image_views import ImageSSLDataModule as Module
        else:
            Module = SSLDataModule
        dm = Module(mcfg, views, seed=cfg.trainer.seed, source_size=d.source_size or 0)
        dm.setup("fit")
        return dm

    @classmethod
    def from_config(cls, cfg: SSLConfig, dm: SSLDataModule) -> "SSLTask":
        data = {k: v for k, v in dm.hparams_data().items() if k != "classes"}
        cfg.data.mean = {m: list(s[0]) for m, s in dm.stats.items()}
        cfg.data.std = {m: list(s[1]) for m, s in dm.stats.items()}
        cfg.data.root = str(Path(cfg.data.root).resolve())
        cfg.data.split_file = str(Path(cfg.data.split_file).resolve()) if cfg.data.split_file else None
        task = cls(model=asdict(cfg.model), data=data, optim=asdict(cfg.optim))
        t = cfg.trainer
        if cfg.model.pretrained and not (t.resume and (Path(t.out) / "last.ckpt").exists()):
            from rsvision.models import load_checkpoint

            load_checkpoint(task.model.encoder, cfg.model.pretrained)
            task.teacher.load_state_dict(task.model.state_dict())
        return task

    def after_fit(self, cfg: SSLConfig, dm: SSLDataModule, result: RunResult) -> None:
        """``encoder.pth``: the student encoder of the selected checkpoint, with its modalities / statistics."""
        from rsvision.models.checkpoints import read_checkpoint
        from rsvision.outputs import atomic_path

        ckpt = read_checkpoint(result.checkpoint)
        prefix = "model.encoder."
        sd = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        meta = {k: self.hparams[k] for k in ("modalities", "bands", "mean", "std")}
        meta.update(model=self.hparams.model["name"], source=str(result.checkpoint))
        with atomic_path(result.run_dir / "encoder.pth") as tmp:
            torch.save({"state_dict": sd, "meta": meta}, tmp)

    def evaluate(self, data: Any, **options: Any) -> dict[str, Any]:
        raise ConfigError("an SSL checkpoint has no metrics of its own: fine-tune it with --pretrained")

    def predict(self, inputs, out=None, **options):
        raise ConfigError("an SSL checkpoint predicts nothing: fine-tune it with --pretrained")
