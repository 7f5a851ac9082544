"""Self-supervised pretraining of a SkySense V2 (or any ``forward_intermediates``) encoder on S1 / S2 data.

What SkySense V2 (arXiv 2507.13812) describes and this task does: an EMA teacher; global and local
multi-crop views; multi-granularity contrast between every student view (global or local) and the
teacher's *other* global views, each an InfoNCE with the batch as negatives:

* image level: pooled last-stage embeddings (the batch's other scenes as negatives);
* pixel level: ``pixel_points`` points drawn uniformly in the overlap of the two views' scene boxes
  (:mod:`rsvision.data.views` keeps each view's crop / flip / rotation), dense features of both views
  sampled there (bilinear) and projected by a dense projector; a student point's positive is the
  teacher point at the same scene location, negatives all other points of the batch (pairs that do not
  overlap add nothing);
* object level: the teacher's projected dense map of a global view is clustered into ``num_regions``
  regions (spherical k-means, ``kmeans_iters`` steps, no gradient); each region's mask is carried into
  the student view through the geometry (student cells outside the teacher's box are ignored), student
  and teacher features are mask-averaged per region and matched region to region (negatives: every
  other region of the batch; regions empty in either view are skipped). k-means rather than learnable
  prototypes: no extra parameters that could collapse, regions adapt to each scene, and it is
  deterministic (init at evenly spaced cells), which exact resume needs;
* Query-based Semantic Aggregation Contrastive Learning (QSACL: ``num_queries`` learnable queries
  cross-attend to a view's last-stage tokens; each query's embedding is contrasted with the same query
  of the teacher's other global view), on the global student views only;

plus the MoE balance loss (``model.aux_loss``). Loss weights: ``optim.image_loss_weight``,
``query_loss_weight``, ``pixel_loss_weight``, ``object_loss_weight``, ``aux_loss_weight``. The dense map
is stage ``model.dense_stage`` (default -1, the last; SkySense keeps S1 / S2 tokens at their patch grid
through every stage, so it is not necessarily tiny). Pixel draws are seeded by (global step, batch
indices), so exact resume holds.

Left out, and why: the image-text alignment with OpenStreetMap (no such data here). Under DDP the image
and QSACL keys of every process are gathered (:func:`gather_rows`: the global batch's scenes are the
negatives); pixel and object rows, whose counts differ per process, are contrasted within each process's
batch. Choices of this implementation:
projector MLP ``C -> hidden -> proj_dim`` shared by the image and query losses, a separate dense one
for pixels and regions, teacher momentum constant (``teacher_momentum``). Nearby points of one scene
are negatives of each other in the pixel loss (no distance threshold, unlike PixPro).

The run directory's ``best.ckpt`` (with validation) / ``last.ckpt`` hold student (``model.encoder``),
heads and teacher; ``encoder.pth`` (written after training) holds the student encoder alone: both load with
``--pretrained`` into any task built on the same backbone (``rsvision.models.load_checkpoint``).
Checkpoints written before the dense heads existed load with those heads freshly initialised.
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
from rsvision.config import OptimConfig, check_range
from rsvision.data.multimodal import DEFAULT_MODALITIES, PAIR_READERS, MultimodalDataConfig, SSLDataModule
from rsvision.data.views import (MultiCropViews, box_intersection, cell_centres, points_in_boxes, sample_at_scene,
                                 sample_at_view, scene_to_view, view_to_scene)
from rsvision.errors import CheckpointError, ConfigError
from rsvision.tasks.base import BaseTask, RunResult, register_task
from rsvision.tasks.common import TrainerOptions

__all__ = ["SSLDataSection", "SSLModelConfig", "SSLOptimConfig", "SSLConfig", "SSLTask", "info_nce", "pixel_nce",
           "kmeans_regions", "object_nce"]


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

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Sizes and scales where the user set them (also called before training, after attribute edits)."""
        formats = ("auto", *PAIR_READERS, "images")
        if self.format not in formats:
            raise ConfigError(f"data.format must be one of {', '.join(formats)}, got {self.format!r}")
        for key in ("img_size", "local_size"):
            check_range(f"data.{key}", getattr(self, key), 1)
        check_range("data.n_local", self.n_local, 0)
        check_range("data.batch_size", self.batch_size, 2)  # the batch's other scenes are the negatives
        check_range("data.num_workers", self.num_workers, 0)
        for key in ("eval_batch_size", "source_size"):
            if getattr(self, key) is not None:
                check_range(f"data.{key}", getattr(self, key), 1)
        for key in ("global_scale", "local_scale"):
            v = getattr(self, key)
            if not (isinstance(v, (list, tuple)) and len(v) == 2
                    and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v) and 0 < v[0] <= v[1] <= 1):
                raise ConfigError(f"data.{key} must be two numbers (low, high), 0 < low <= high <= 1 (fractions "
                                  f"of the scene's area), got {v!r}")


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
    dense_stage: int = -1  # encoder stage whose map the pixel / object losses use
    pixel_points: int = 16  # points per (student view, teacher view) pair and scene
    num_regions: int = 4  # k-means regions per teacher global view
    kmeans_iters: int = 5

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for key in ("proj_dim", "hidden_dim", "num_queries", "pixel_points", "num_regions"):
            check_range(f"model.{key}", getattr(self, key), 1)
        check_range("model.kmeans_iters", self.kmeans_iters, 0)
        check_range("model.temperature", self.temperature, 0, low_open=True)
        check_range("model.teacher_momentum", self.teacher_momentum, 0, 1)


@dataclass
class SSLOptimConfig(OptimConfig):
    no_decay_norm_bias: bool = True
    image_loss_weight: float = 1.0
    query_loss_weight: float = 1.0
    pixel_loss_weight: float = 1.0
    object_loss_weight: float = 1.0
    aux_loss_weight: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate()

    def validate(self) -> None:
        names = ("image", "query", "pixel", "object", "aux")
        for n in names:
            check_range(f"optim.{n}_loss_weight", getattr(self, f"{n}_loss_weight"), 0)
        if not any(getattr(self, f"{n}_loss_weight") > 0 for n in names[:4]):
            raise ConfigError("optim: every contrastive loss weight (image, query, pixel, object) is 0: "
                              "nothing to learn from")


def _ssl_trainer() -> TrainerOptions:
    return TrainerOptions(out="runs/ssl", monitor="val/loss", mode="min")


@dataclass
class SSLConfig:
    """A whole ``rsvision pretrain ssl`` config (see ``configs/ssl_skysense_v2_tiny.yaml``)."""

    data: SSLDataSection = field(default_factory=SSLDataSection)
    model: SSLModelConfig = field(default_factory=SSLModelConfig)
    optim: SSLOptimConfig = field(default_factory=SSLOptimConfig)
    trainer: TrainerOptions = field(default_factory=_ssl_trainer)


def info_nce(student: torch.Tensor, teacher: torch.Tensor, temperature: float, offset: int = 0) -> torch.Tensor:
    """InfoNCE of L2-normalised rows: row i of ``student`` (N, D) should match row ``offset + i`` of
    ``teacher`` (M, D) among all M rows. ``teacher`` may hold every DDP process's rows (``offset``: this
    process's first one), so the other processes' samples are negatives too."""
    logits = student @ teacher.T / temperature
    return F.cross_entropy(logits, offset + torch.arange(len(student), device=student.device))


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every DDP process's ``x`` (N_r, ...) concatenated in rank order (no gradient: used for teacher keys)
    and this process's first row in it; ``(x, 0)`` outside a process group. Row counts may differ between
    processes (a last, smaller batch): they are exchanged first and the rows padded for the collective."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    world = dist.get_world_size()
    n = torch.tensor([len(x)], device=x.device)
    counts = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(counts, n)
    counts = [int(c) for c in counts]
    padded = x.detach().new_zeros((max(counts), *x.shape[1:]))
    padded[: len(x)] = x.detach()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    rank = dist.get_rank()
    return torch.cat([p[:c] for p, c in zip(parts, counts)]), sum(counts[:rank])


def pixel_nce(s_map: torch.Tensor, s_geom: torch.Tensor, t_map: torch.Tensor, t_geom: torch.Tensor,
              u: torch.Tensor, s_proj: nn.Module, t_proj: nn.Module, temperature: float) -> torch.Tensor | None:
    """Pixel-level InfoNCE of a student and a teacher view of the same scenes.

    ``s_map`` (B, C, h, w) / ``t_map`` (B, C, h', w') dense maps, geometries (B, 7), ``u`` (B, P, 2) uniform
    draws placed in each scene's box overlap; the student point's positive is the teacher point at the same
    scene location, every other point of the batch a negative. None when no scene's boxes overlap.
    """
    box, valid = box_intersection(s_geom, t_geom)
    if not bool(valid.any()):
        return None
    pts = points_in_boxes(box[valid], u[valid])
    zs = F.normalize(s_proj(sample_at_scene(s_map[valid], s_geom[valid], pts)), dim=-1)
    with torch.no_grad():
        zt = F.normalize(t_proj(sample_at_scene(t_map[valid], t_geom[valid], pts)), dim=-1)
    return info_nce(zs.flatten(0, 1), zt.flatten(0, 1), temperature)


@torch.no_grad()
def kmeans_regions(z: torch.Tensor, k: int, iters: int) -> torch.Tensor:
    """Spherical k-means of each scene's L2-normalised cells ``z`` (B, N, D) -> region per cell (B, N) long.
    Deterministic: centres start at ``k`` evenly spaced cells (row-major, so spread over the map); an
    emptied region keeps its centre."""
    n = z.shape[1]
    c = z[:, torch.linspace(0, n - 1, min(k, n), device=z.device).round().long()]
    for _ in range(iters):
        oh = F.one_hot((z @ c.transpose(1, 2)).argmax(-1), c.shape[1]).to(z.dtype)  # (B, N, k)
        c = torch.where(oh.sum(1)[..., None] > 0, F.normalize(oh.transpose(1, 2) @ z, dim=-1), c)
    return (z @ c.transpose(1, 2)).argmax(-1)


def object_nce(s_cells: torch.Tensor, s_geom: torch.Tensor, s_hw: tuple[int, int], t_cells: torch.Tensor,
               t_region: torch.Tensor, t_geom: torch.Tensor, t_hw: tuple[int, int], k: int,
               temperature: float) -> torch.Tensor | None:
    """Object-level InfoNCE: the teacher's regions carried into the student view, mask-average pooled in both.

    ``s_cells`` (B, h*w, D) student projected cells (row-major), ``t_cells`` (B, h'*w', D) teacher ones,
    ``t_region`` (B, h'*w') region per teacher cell. A student cell takes the region of the teacher cell
    under its centre's scene location (nearest); cells outside the teacher's view are ignored. Row (b, r)
    of the student matches row (b, r) of the teacher; regions empty in either view are dropped. None if
    no region is left.
    """
    b = len(s_cells)
    t_oh = F.one_hot(t_region, k).to(t_cells.dtype)  # (B, N', k)
    t_emb, t_cnt = F.normalize(t_oh.transpose(1, 2) @ t_cells, dim=-1), t_oh.sum(1)
    centres = cell_centres(*s_hw, device=s_cells.device, dtype=s_cells.dtype)[None].expand(b, -1, -1)
    tv = scene_to_view(view_to_scene(centres, s_geom), t_geom)  # student cell centres in teacher view coords
    inside = ((tv >= 0) & (tv <= 1)).all(-1, keepdim=True)
    amap = t_oh.transpose(1, 2).reshape(b, k, *t_hw)
    s_oh = sample_at_view(amap, tv, mode="nearest") * inside  # (B, N, k)
    s_emb, s_cnt = F.normalize(s_oh.transpose(1, 2) @ s_cells, dim=-1), s_oh.sum(1)
    keep = (s_cnt > 0) & (t_cnt > 0)
    if not bool(keep.any()):
        return None
    return info_nce(s_emb[keep], t_emb[keep].detach(), temperature)


class SSLHeads(nn.Module):
    """Projector MLP, QSACL's queries + cross-attention over a (B, C, h, w) feature map, dense projector."""

    def __init__(self, dim: int, hidden: int, out: int, num_queries: int, dense_dim: int | None = None):
        super().__init__()
        self.projector = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out))
        # pixels / regions: their own MLP on channels (dense features differ from pooled ones)
        self.dense = nn.Sequential(nn.Linear(dense_dim or dim, hidden), nn.GELU(), nn.Linear(hidden, out))
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
    def __init__(self, encoder: nn.Module, heads: SSLHeads, dense_stage: int = -1):
        super().__init__()
        self.encoder, self.heads = encoder, heads
        n = len(encoder.feature_info)
        self.take = sorted({n - 1, dense_stage % n})
        self.dense_at = self.take.index(dense_stage % n)

    def features(self, x: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Last-stage fused map, the dense stage's map and this forward's MoE balance loss (0 without one)."""
        maps = self.encoder.forward_intermediates(x, indices=self.take, intermediates_only=True)
        fmap, dmap = maps[-1], maps[self.dense_at]
        aux = getattr(self.encoder, "aux_loss", None)
        return fmap, dmap, aux if isinstance(aux, torch.Tensor) else fmap.new_zeros(())


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
        m = self.model_cfg = SSLModelConfig(**self.hparams.model)  # parsed and checked once, read every step
        kwargs = {"modalities": dict(self.hparams.modalities), **m.kwargs}
        try:
            enc = timm.create_model(m.name, pretrained=False, num_classes=0, **kwargs)
        except (RuntimeError, TypeError) as exc:
            raise CheckpointError(f"cannot build SSL encoder {m.name!r} with modalities: {exc}") from exc
        if not hasattr(enc, "forward_intermediates"):
            raise ConfigError(f"model {m.name!r} has no forward_intermediates (use a skysense_v2_* encoder)")
        n = len(enc.feature_info)
        if not -n <= m.dense_stage < n:
            raise ConfigError(f"model.dense_stage {m.dense_stage} is not a stage of {m.name!r} ({n} stages)")
        dense_dim = enc.feature_info[m.dense_stage]["num_chs"]
        return SSLNet(enc, SSLHeads(enc.num_features, m.hidden_dim, m.proj_dim, m.num_queries, dense_dim),
                      m.dense_stage)

    @classmethod
    def upgrade_hparams(cls, hp: dict[str, Any]) -> dict[str, Any]:
        """Runs from before the pixel / object losses: their config keys get the defaults."""
        hp["model"] = {**asdict(SSLModelConfig()), **dict(hp["model"])}
        hp["optim"] = {**asdict(SSLOptimConfig()), **dict(hp.get("optim") or {})}
        return hp

    def upgrade_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Checkpoints from before the dense projector: it (student and teacher) keeps its fresh weights."""
        own = self.state_dict()
        return {**{k: v for k, v in own.items() if ".heads.dense." in k and k not in sd}, **sd}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = self.upgrade_state_dict(dict(checkpoint["state_dict"]))

    # --- losses -----------------------------------------------------------------------------------
    def _draws(self, batch: dict, n: int, p: int) -> torch.Tensor:
        """(n, B, p, 2) uniform draws for the pixel loss, a function of (global step, batch indices) only."""
        idx = batch["index"].long().cpu()
        key = int(self.global_step) * 1_000_003 + int((idx * torch.arange(1, len(idx) + 1)).sum())
        g = torch.Generator().manual_seed(key % 2**63)
        return torch.rand(n, len(idx), p, 2, generator=g)

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        m = self.model_cfg
        o = self.optim_cfg
        tau, k = m.temperature, m.num_regions
        use_pix, use_obj = o.pixel_loss_weight > 0, o.object_loss_weight > 0
        if (use_pix or use_obj) and "global_geom" not in batch:
            raise ConfigError("pixel / object losses need the views' geometry (batch['global_geom']); "
                              "set optim.pixel_loss_weight and optim.object_loss_weight to 0 without it")
        heads, t_heads = self.model.heads, self.teacher.heads
        n_global = len(batch["global"])
        self.teacher.eval()
        with torch.no_grad():
            t_out = [self.teacher.features(v) for v in batch["global"]]
            t_img = [t_heads.image(f) for f, _, _ in t_out]
            t_q = [t_heads.query(f) for f, _, _ in t_out]
            if use_obj:  # regions of each teacher global view: k-means of its projected cells
                t_cells = [F.normalize(t_heads.dense(d.flatten(2).transpose(1, 2)), dim=-1) for _, d, _ in t_out]
                t_reg = [kmeans_regions(c, k, m.kmeans_iters) for c in t_cells]
        s_views = [*batch["global"], *batch["local"]]
        s_geoms = [*batch.get("global_geom", []), *batch.get("local_geom", [])]
        u = self._draws(batch, len(s_views) * n_global, m.pixel_points).to(self.device) if use_pix else None
        # image and QSACL keys of every DDP process: the global batch's other scenes are negatives
        t_img_all = [gather_rows(t) for t in t_img]
        t_q_all = [gather_rows(t.flatten(0, 1)) for t in t_q]
        img, qry, pix, obj, aux = [], [], [], [], []
        for v_idx, view in enumerate(s_views):
            fmap, dmap, a = self.model.features(view)
            aux.append(a)
            z = heads.image(fmap)
            others = [g for g in range(n_global) if g != v_idx]  # a global view is not contrasted with itself
            img += [info_nce(z, t_img_all[g][0], tau, t_img_all[g][1]) for g in others]
            if v_idx < n_global:
                q = heads.query(fmap)
                qry += [info_nce(q.flatten(0, 1), t_q_all[g][0], tau, t_q_all[g][1]) for g in others]
            if use_obj:
                s_cells = heads.dense(dmap.flatten(2).transpose(1, 2))
            for g in others:
                tg, sg = batch["global_geom"][g], s_geoms[v_idx]
                if use_pix:
                    pix.append(pixel_nce(dmap, sg, t_out[g][1], tg, u[v_idx * n_global + g], heads.dense,
                                         t_heads.dense, tau))
                if use_obj:
                    obj.append(object_nce(s_cells, sg, tuple(dmap.shape[-2:]), t_cells[g], t_reg[g], tg,
                                          tuple(t_out[g][1].shape[-2:]), k, tau))
        # no overlap anywhere: 0, still tied to the dense projector (DDP wants every parameter in the graph)
        def mean(parts: list) -> torch.Tensor:
            parts = [p for p in parts if p is not None]
            return torch.stack(parts).mean() if parts else sum(p.sum() for p in heads.dense.parameters()) * 0.0

        out = {"image": torch.stack(img).mean(), "query": torch.stack(qry).mean(), "pixel": mean(pix),
               "object": mean(obj), "aux": torch.stack(aux).mean()}
        out["loss"] = (o.image_loss_weight * out["image"] + o.query_loss_weight * out["query"]
                       + o.pixel_loss_weight * out["pixel"] + o.object_loss_weight * out["object"]
                       + o.aux_loss_weight * out["aux"])
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
        for section in (d, cfg.model, cfg.optim):  # fields edited after the config was built
            section.validate()
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
