"""The Task1 zip the DOTA evaluation server expects: ``Task1_<class>.txt`` for every class at the
zip root, rows ``<image> <score> x1 y1 ... x4 y4`` on full (merged) images."""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Sequence

from rsvision.errors import DataError

from .labels import class_names, read_task1_dir, task1_line

__all__ = ["make_submission"]


def make_submission(
    dets_dir: str | Path, out_zip: str | Path, version: str = "dota1.0", classes: Sequence[str] | None = None,
    allow_patches: bool = False,
) -> dict[str, int]:
    """Validate the Task1 files of ``dets_dir`` and zip them (an empty file for classes without rows).

    Raises :class:`DataError` for a Task1 file of a class outside the version's list, a malformed row
    (file:line), or patch names (``__`` in the image name: run ``dota merge`` first) unless
    ``allow_patches``. Returns the row count per class.
    """
    dets_dir, out_zip = Path(dets_dir), Path(out_zip)
    names = list(classes) if classes is not None else list(class_names(version))
    found = read_task1_dir(dets_dir, on_error="raise")
    extra = sorted(set(found) - set(names))
    if extra:
        raise DataError(f"Task1 file(s) for class(es) not in {version}: {', '.join(extra)}", path=dets_dir)
    counts = {}
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out_zip, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for c in names:
            rows = found.get(c, [])
            if not allow_patches:
                patch = next((d.image for d in rows if "__" in d.image), None)
                if patch is not None:
                    raise DataError(f"patch-level image name {patch!r}: merge the detections first "
                                    "(rsvision dota merge)", path=dets_dir / f"Task1_{c}.txt")
            zf.writestr(f"Task1_{c}.txt", "".join(task1_line(d.image, d.score, d.poly) + "\n" for d in rows))
            counts[c] = len(rows)
    return counts
