"""Where ``classify predict`` finds S1 / S2 pairs, and pair split files.

Inputs are folders: a dataset root any reader of :mod:`rsvision.data.multimodal` knows (``index.csv``,
BigEarthNet v1.0 ``pairs.csv``, reBEN ``metadata.parquet``, SSL4EO-S12), a folder inside one (a patch or
product folder: the pairs with a band file under it), or a loose folder of single-band GeoTIFFs.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Mapping, Sequence

from rsvision.data.multimodal import PairSample, detect_format, read_dataset
from rsvision.errors import DataError

__all__ = ["write_pair_split_file", "read_pair_folder", "resolve_pairs"]


def write_pair_split_file(path: str | Path, splits: Mapping[str, str]) -> Path:
    """``split,path`` rows (``path``: pair id) for :func:`read_dataset`, written atomically."""
    from rsvision.outputs import atomic_write

    with atomic_write(path, newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "path"])
        for pid, sp in splits.items():
            w.writerow([sp, pid])
    return Path(path)


_BAND_FILE = re.compile(r"(?:^|_)(B0?[1-9]|B1[0-2]|B8A|VV|VH)\.tiff?$", re.IGNORECASE)


def read_pair_folder(folder: str | Path) -> PairSample:
    """One sample from a loose folder of single-band GeoTIFFs named ``[<prefix>_]<band>.tif`` (``B02`` or ``B2``,
    ``VV``, ``VH``), S1 and S2 side by side; unlabelled, split ``test``."""
    folder = Path(folder)
    files = {}
    for f in sorted(folder.iterdir()):
        m = _BAND_FILE.search(f.name)
        if m and f.is_file():
            b = m.group(1).upper()
            b = b if b in ("B8A", "VV", "VH") else f"B{int(b[1:]):02d}"
            files.setdefault(b, str(f))
    if not files:
        raise DataError("no band GeoTIFFs ([<prefix>_]B02.tif, ..., VV.tif, VH.tif) in this folder", path=folder)
    return PairSample(folder.name, "test", files, None)


def resolve_pairs(inputs: Sequence[str | Path]) -> list[PairSample]:
    """Samples named by ``predict`` inputs: a dataset root (every pair of it), a folder inside one (the pairs
    with a band file under it: a patch folder, a product folder), or a loose folder of band files."""
    out: list[PairSample] = []
    for inp in inputs:
        p = Path(inp).resolve()
        if not p.is_dir():
            raise DataError("pair inputs are folders (a dataset root, a patch folder or a folder of band files)", path=inp)
        root = next((r for r in (p, *p.parents) if _is_root(r)), None)
        if root is None:
            out.append(read_pair_folder(p))
            continue
        samples = read_dataset(root)
        if root != p:
            samples = [s for s in samples if any(Path(f).resolve().is_relative_to(p) for f in s.files.values())]
        if not samples:
            raise DataError(f"no pairs of {root} have band files under this folder", path=inp)
        out += samples
    unique = {tuple(sorted(s.files.values())): s for s in reversed(out)}  # an input named twice: once, first place
    return list(reversed(unique.values()))


def _is_root(folder: Path) -> bool:
    try:
        detect_format(folder)
        return True
    except DataError:
        return False
