"""Split files of per-pixel and detection runs: which inputs trained and which validated.

``train`` writes ``splits.json`` into the run directory (classification keeps its ``splits.csv``), and
``eval --split val`` reads it beside the checkpoint, so a held-out score is never silently a training
score. Files are matched by resolved path, then by name (a dataset moved to another folder still
matches). A spatial split (one scene, last fraction of rows / columns held out) is recorded as such.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from rsvision.errors import ConfigError, DataError

__all__ = ["SPLITS_FILE", "split_record", "write_splits", "read_splits", "find_split_file", "keep_split"]

SPLITS_FILE = "splits.json"
T = TypeVar("T")


def split_record(train: Sequence[Path | str], val: Sequence[Path | str], mode: str = "files",
                 **extra: Any) -> dict[str, Any]:
    """``{"format", "mode", "train": [paths], "val": [paths], ...}`` (``mode``: files | spatial)."""
    return {"format": "rsvision-splits/1", "mode": mode,
            "train": [str(Path(p).resolve()) for p in train], "val": [str(Path(p).resolve()) for p in val], **extra}


def write_splits(record: dict[str, Any], path: str | Path) -> Path:
    from rsvision.outputs import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    return path


def read_splits(path: str | Path) -> dict[str, Any]:
    try:
        rec = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError("no split file (train writes splits.json into the run directory)", path=path) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"unreadable split file: {exc}", path=path) from None
    if not isinstance(rec, dict) or rec.get("format") != "rsvision-splits/1":
        raise DataError("not an rsvision split file", path=path)
    return rec


def find_split_file(checkpoint: str | Path | None, split_file: str | Path | None) -> Path:
    """``split_file``, else ``splits.json`` beside the checkpoint; a clear error when neither exists."""
    if split_file is not None:
        return Path(split_file)
    if checkpoint is None:
        raise ConfigError("--split needs --split-file (the checkpoint's run directory is unknown)")
    return Path(checkpoint).parent / SPLITS_FILE


def keep_split(items: Sequence[T], key: Callable[[T], Path | str], record: dict[str, Any], split: str,
               source: str | Path) -> list[T]:
    """The ``items`` whose ``key`` path is in ``record[split]`` (by resolved path, else by file name)."""
    if split not in ("train", "val"):
        raise ConfigError(f"--split must be train or val for this task (the run has no test split), got {split!r}")
    wanted = record.get(split) or []
    full = set(wanted)
    names = {Path(p).name for p in wanted}
    kept = [it for it in items if str(Path(key(it)).resolve()) in full]
    if not kept:
        kept = [it for it in items if Path(key(it)).name in names]
    if not kept:
        raise DataError(f"no input of the {split!r} split of {source} is in this dataset", path=source)
    return kept
