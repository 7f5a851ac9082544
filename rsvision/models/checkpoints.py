"""Loading official, MMRotate, timm, EMA and rsvision checkpoints into any rsvision model.

Checkpoints in the wild wrap the same tensors in different containers and prefixes
(``{"state_dict": ...}``, ``{"model": ...}``, ``backbone.``, ``module.``, Lightning's ``model.``,
timm's features wrapper ``model.``). Rather than special-casing each, ``load_checkpoint`` finds
the prefix rewrite that matches the most keys, applies the known renames, adapts the stem to
the model's input bands, and returns a report. It raises only on real shape mismatches.
"""
from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from rsvision.errors import CheckpointError

__all__ = ["LoadReport", "read_checkpoint", "extract_state_dict", "load_checkpoint", "checkpoint_filter_fn",
           "resize_pos_embed", "resize_rel_pos"]

_log = logging.getLogger(__name__)

# Other published HAKSNet checkpoints name the same tensors differently.
_HAKS_RENAMES = {
    "spatial_mix.conv1.": "spatial_mix.dw_conv3.",
    "spatial_mix.conv2.": "spatial_mix.dw_conv5.",
    "spatial_mix.conv3.": "spatial_mix.dw_conv7.",
    "spatial_mix.conv4.": "spatial_mix.dw_conv9.",
    "spatial_mix.conv_squeeze.": "spatial_mix.spatial_fusion.",
}
_CLASSIFIER_NAMES = ("head", "fc", "classifier", "head.fc")


@dataclass
class LoadReport:
    """What ``load_checkpoint`` did: keys loaded, missing, unexpected, renamed, adapted."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    remapped: dict[str, str] = field(default_factory=dict)
    adapted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.remapped:
            lines.append(f"remapped {len(self.remapped)} keys")
        for name, items in (("adapted", self.adapted), ("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... (+{len(items) - 8})" if len(items) > 8 else "")
                lines.append(f"{name} ({len(items)}): {shown}")
        for k, why in list(self.skipped.items())[:8]:
            lines.append(f"skipped {k}: {why}")
        return "\n".join(lines)

    __str__ = summary


def read_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` with a clear error naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError("checkpoint file not found", path=path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncation, non-weights objects
        raise CheckpointError(f"cannot read checkpoint ({type(exc).__name__}: {exc})", path=path) from exc


def extract_state_dict(obj: Any, path: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Unwrap a checkpoint container into ``(state_dict, meta)``; drops EMA shadow entries."""
    meta: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        if isinstance(obj.get("meta"), Mapping):
            meta = dict(obj["meta"])
        if isinstance(obj.get("hyper_parameters"), Mapping):
            meta["hyper_parameters"] = dict(obj["hyper_parameters"])
        for key in ("state_dict", "model", "module"):
            if isinstance(obj.get(key), Mapping) and any(torch.is_tensor(v) for v in obj[key].values()):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"no state dict found (got {type(obj).__name__})", path=path)
    sd = {k: v for k, v in obj.items() if torch.is_tensor(v) and not k.startswith("ema_")}
    if not sd:
        raise CheckpointError("checkpoint holds no tensors", path=path)
    return sd, meta


def _splits(key: str, depth: int = 3):
    """(prefix, rest) splits of a dotted key, keeping at least two components in ``rest``."""
    parts = key.split(".")
    for d in range(0, min(depth, len(parts) - 2) + 1):
        yield ".".join(parts[:d]) + ("." if d else ""), ".".join(parts[d:])


def _best_prefix_rewrite(src: list[str], tgt: set[str]) -> tuple[str, str]:
    """The (strip, add) prefix pair under which most source keys exist in the target.

    Votes over all (source split, target split) pairs sharing the same remainder: linear in the
    number of keys, so it stays instant on detector-sized state dicts.
    """
    index: dict[str, set[str]] = {}
    for t in tgt:
        for tp, rest in _splits(t):
            index.setdefault(rest, set()).add(tp)
    votes: Counter = Counter()
    for k in src:
        for sp, rest in _splits(k):
            for tp in index.get(rest, ()):
                votes[(sp, tp)] += 1
    if not votes:
        return "", ""
    # most votes; on ties, the smallest rewrite
    return max(votes, key=lambda p: (votes[p], -len(p[0]) - len(p[1])))


def _rename_known(key: str) -> str:
    for old, new in _HAKS_RENAMES.items():
        if old in key:
            return key.replace(old, new)
    return key


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    names = []
    for mod_name, _ in model.named_modules():
        if mod_name.split(".")[-1] in ("head", "fc", "classifier"):
            names.append(mod_name + ".")
    return tuple(names)


def _adapt_stem(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    from timm.models import adapt_input_conv

    return adapt_input_conv(in_chans, weight.float()).to(weight.dtype)


def match_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module, report: LoadReport | None = None
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Map ``state_dict`` keys and shapes onto ``model``'s; see ``load_checkpoint``."""
    report = report or LoadReport()
    sd = dict(state_dict)
    if hasattr(model, "remap_state_dict"):
        sd, remapped = model.remap_state_dict(sd)
        report.remapped.update(remapped)
    target = model.state_dict()
    tgt_keys = set(target)
    renamed = {}
    for k, v in sd.items():
        nk = _rename_known(k)
        if nk != k:
            report.remapped[k] = nk
        renamed[nk] = v
    strip, add = _best_prefix_rewrite(list(renamed), tgt_keys)
    out: dict[str, torch.Tensor] = {}
    classifier = _classifier_prefixes(model)
    # timm's FeatureListNet flattens module paths ("stages.0" -> "stages_0"): match those
    # keys with "_" and "." treated alike when that is unambiguous.
    flat: dict[str, str | None] = {}
    for t in tgt_keys:
        n = t.replace("_", ".")
        flat[n] = None if n in flat else t
    for k, v in renamed.items():
        nk = add + k[len(strip):] if k.startswith(strip) else k
        if nk not in tgt_keys:
            nk = flat.get(nk.replace("_", ".")) or flat.get(k.replace("_", ".")) or nk
        if nk not in tgt_keys:
            report.unexpected.append(k)
            continue
        if nk != k and k not in report.remapped:
            report.remapped[k] = nk
        t = target[nk]
        if v.shape != t.shape:
            if v.ndim == 4 and t.ndim == 4 and v.shape[0] == t.shape[0] and v.shape[2:] == t.shape[2:] and _is_stem(nk, model):
                v = _adapt_stem(v, t.shape[1])
                report.adapted.append(f"{nk} ({v.shape[1]} input bands)")
            elif (resized := _resize_positional(nk, v, t)) is not None:
                report.adapted.append(f"{nk} (resized {tuple(v.shape)} -> {tuple(t.shape)})")
                v = resized
            elif nk.startswith(classifier):
                report.skipped[nk] = f"classifier shape {tuple(v.shape)} != {tuple(t.shape)}, kept the model's"
                continue
            else:
                raise CheckpointError(
                    f"shape mismatch for '{nk}': checkpoint {tuple(v.shape)} vs model {tuple(t.shape)}"
                )
        out[nk] = v.to(dtype=t.dtype) if t.is_floating_point() else v.to(dtype=t.dtype)
    report.loaded = sorted(out)
    report.missing = sorted(k for k in tgt_keys if k not in out and not k.endswith("num_batches_tracked"))
    report.missing += [k for k in report.skipped if k not in report.missing]
    return out, report


def resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, s*s, C) -> (1, gh*gw, C): bicubic (align_corners=False) on the row-major token grid."""
    n, c = pos.shape[1], pos.shape[2]
    s = int(math.isqrt(n))
    if (s, s) == tuple(grid):
        return pos
    p = pos.reshape(1, s, s, c).permute(0, 3, 1, 2)
    p = F.interpolate(p.float(), size=tuple(grid), mode="bicubic", align_corners=False).to(pos.dtype)
    return p.permute(0, 2, 3, 1).flatten(1, 2)


def resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """(2s-1, d) -> (length, d): the table as a one-channel image, bicubic along its first axis only."""
    if table.shape[0] == length:
        return table
    t = F.interpolate(table[None, None].float(), size=(length, table.shape[1]), mode="bicubic", align_corners=False)
    return t[0, 0].to(table.dtype)


_REL_POS = ("rel_pos_h", "rel_pos_w", "full_attn_rel_pos_h", "full_attn_rel_pos_w")


def _resize_positional(key: str, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor | None:
    """A ViT's position tables saved at another image size, resized to the model's (else None).

    As MTP's finetune loaders do (its encoders are released at 224 / 448 and finetuned at 256 to
    1024): ``pos_embed`` (1, [1 +] s*s, C) bicubic on its token grid, a class token dropped when
    the model has none; decomposed rel-pos tables (2s-1, d) bicubic along their first axis.
    """
    leaf = key.rsplit(".", 1)[-1]
    v = v.to(t.dtype) if t.is_floating_point() else v  # resize float16 files in the model's precision
    if leaf == "pos_embed" and v.ndim == t.ndim == 3 and v.shape[0] == t.shape[0] == 1 and v.shape[2] == t.shape[2]:
        extra_v = v.shape[1] - math.isqrt(v.shape[1]) ** 2
        extra_t = t.shape[1] - math.isqrt(t.shape[1]) ** 2
        if extra_v not in (0, 1) or extra_t > extra_v:
            return None
        side = math.isqrt(t.shape[1] - extra_t)
        grid = resize_pos_embed(v[:, extra_v:], (side, side))
        return torch.cat([v[:, :extra_t], grid], 1)
    if leaf in _REL_POS and v.ndim == t.ndim == 2 and v.shape[1] == t.shape[1]:
        return resize_rel_pos(v, t.shape[0])
    return None


def _is_stem(key: str, model: nn.Module) -> bool:
    """Whether ``key`` is the weight of the first conv that sees the input bands."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            return key == f"{name}.weight"
    return False


def load_checkpoint(
    model: nn.Module, checkpoint: str | os.PathLike | Mapping[str, Any], strict: bool = False
) -> LoadReport:
    """Load any supported checkpoint into ``model`` (in place) and report what happened.

    Accepts a path or an in-memory checkpoint: a plain state dict, ``{"state_dict": ...}``
    (Lightning / MMRotate, with ``meta``), ``{"model": ...}``, EMA (``ema_*`` dropped), float16.
    Prefixes are aligned automatically (``backbone.``, ``module.``, timm ``features_only``
    wrappers). Detectors may define ``remap_state_dict(sd) -> (sd, remapped)``. A stem whose
    band count differs is adapted timm-style; ViT position tables saved at another image size are
    resized (``pos_embed``, rel-pos tables; MTP's finetune loaders). Raises ``CheckpointError`` on shape mismatches
    (and, with ``strict``, on missing/unexpected keys); otherwise returns the report.
    """
    path = None
    if isinstance(checkpoint, (str, os.PathLike)):
        from rsvision.weights import resolve_pretrained  # a published name -> its cached (fetched) file

        path = os.fspath(resolve_pretrained(checkpoint))
        checkpoint = read_checkpoint(path)
    sd, meta = extract_state_dict(checkpoint, path)
    try:
        mapped, report = match_state_dict(sd, model)
    except CheckpointError as exc:
        if path and exc.path is None:
            raise CheckpointError(str(exc), path=path) from exc
        raise
    report.meta = meta
    if strict and not report.ok:
        raise CheckpointError("checkpoint does not fit the model:\n" + report.summary(), path=path)
    model.load_state_dict(mapped, strict=False)
    if report.missing or report.unexpected:
        _log.warning("load_checkpoint(%s): %s", path or "<dict>", report.summary())
    return report


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn``: any supported layout -> ``model``'s keys.

    Keys the checkpoint lacks (typically the classifier of a backbone-only checkpoint) are
    filled with the model's own initial values and logged, so timm's strict load succeeds and
    the head is reported, not fatal.
    """
    sd, _ = extract_state_dict(state_dict)
    mapped, report = match_state_dict(sd, model)
    target = model.state_dict()
    for k in report.missing:
        mapped[k] = target[k]
    for k in target:
        if k.endswith("num_batches_tracked") and k not in mapped:
            mapped[k] = target[k]
    if report.missing or report.unexpected:
        _log.warning("pretrained weights: %s", report.summary())
    return mapped

