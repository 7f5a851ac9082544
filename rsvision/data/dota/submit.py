"""The Task1 zip the DOTA evaluation server expects: ``Task1_<class>.txt`` for every class at the
zip root, rows ``<image> <score> x1 y1 ... x4 y4`` on full (merged) images.

Everything is validated before the zip is written; it is written under a temporary name beside the
destination and renamed only once complete, so a failed run leaves an existing zip as it was."""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Sequence

from rsvision.errors import ConfigError, DataError

from .labels import class_names, read_task1_dir, task1_line

__all__ = ["make_submission"]


def make_submission(
    dets_dir: str | Path, out_zip: str | Path, version: str = "dota1.0", classes: Sequence[str] | None = None,
    allow_patches: bool = False, exist_ok: bool = False,
) -> dict[str, int]:
    """Validate the Task1 files of ``dets_dir`` and zip them (an empty file for classes without rows).

    Raises :class:`DataError` for a Task1 file of a class outside the version's list, a malformed row
    (file:line), or patch names (``__`` in the image name: run ``dota merge`` first) unless
    ``allow_patches``. An existing ``out_zip`` is refused unless ``exist_ok`` (then replaced, atomically).
    Returns the row count per class.
    """
    from rsvision.outputs import OutputExistsError, atomic_path

    dets_dir, out_zip = Path(dets_dir), Path(out_zip)
    if out_zip.is_dir():
        raise ConfigError(f"--out {out_zip} is a folder; give the zip file to write", path=out_zip)
    if out_zip.exists() and not exist_ok:
        raise OutputExistsError(f"--out {out_zip} already exists; choose another name, or pass --exist-ok to "
                                "replace it", path=out_zip)
    if classes is not None:
        names = list(classes)
    else:
        try:
            names = list(class_names(version))
        except ValueError as exc:
            raise ConfigError(f"--version: {exc}") from exc
    found = read_task1_dir(dets_dir, on_error="raise")
    extra = sorted(set(found) - set(names))
    if extra:
        raise DataError(f"Task1 file(s) for class(es) not in {version}: {', '.join(extra)}", path=dets_dir)
    for c in names:
        patch = None if allow_patches else next((d.image for d in found.get(c, []) if "__" in d.image), None)
        if patch is not None:
            raise DataError(f"patch-level image name {patch!r}: merge the detections first "
                            "(rsvision dota merge)", path=dets_dir / f"Task1_{c}.txt")
    counts = {}
    with atomic_path(out_zip) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for c in names:
            rows = found.get(c, [])
            zf.writestr(f"Task1_{c}.txt", "".join(task1_line(d.image, d.score, d.poly) + "\n" for d in rows))
            counts[c] = len(rows)
    return counts
