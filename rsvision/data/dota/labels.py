"""DOTA labelTxt and Task1 files: readers and writers, class lists.

labelTxt (one file per image)::

    imagesource:GoogleEarth          <- optional header lines
    gsd:0.146343590398               <- (a number, or "null")
    x1 y1 x2 y2 x3 y3 x4 y4 class difficult

CRLF or LF, integer or float coordinates, ``difficult`` optional (0 when missing, as the DOTA
devkit). A bad line (wrong field count, non-numeric value, unknown class when ``classes`` is
given, degenerate polygon) is reported as ``file:line: reason`` and either skipped with a warning
(``on_error="skip"``, the default; the messages are also kept in :attr:`Annotation.errors`) or
raised as :class:`~rsvision.errors.DataError` (``on_error="raise"`` / ``strict=True``).
A quadrilateral that shapely's ``is_valid`` rejects (self-intersecting "bow tie", repeated
corner) is kept -- the DOTA devkit and MMRotate use such objects as they are -- but reported with a
``file:line`` warning (kept in :attr:`Annotation.warnings`); in strict mode it is an error.

Task1 (one file per class, ``Task1_<class>.txt``, the DOTA server's detection format)::

    <image name> <score> x1 y1 x2 y2 x3 y3 x4 y4
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from rsvision.errors import DataError

__all__ = [
    "DOTA1_0_CLASSES", "DOTA1_5_CLASSES", "DOTA2_0_CLASSES", "DIOR_CLASSES", "HRSC_CLASSES", "class_names",
    "Annotation", "read_label_txt", "write_label_txt", "polygon_area",
    "Detection", "read_task1", "read_task1_dir", "write_task1", "append_task1", "task1_line",
]

log = logging.getLogger(__name__)

#: DOTA-v1.0 classes in MMRotate's order (label index = position).
DOTA1_0_CLASSES = (
    "plane", "baseball-diamond", "bridge", "ground-track-field", "small-vehicle", "large-vehicle", "ship",
    "tennis-court", "basketball-court", "storage-tank", "soccer-ball-field", "roundabout", "harbor",
    "swimming-pool", "helicopter",
)
DOTA1_5_CLASSES = DOTA1_0_CLASSES + ("container-crane",)
DOTA2_0_CLASSES = DOTA1_5_CLASSES + ("airport", "helipad")
#: DIOR-R classes in MMRotate's order (names lower-cased, as its reader does).
DIOR_CLASSES = (
    "airplane", "airport", "baseballfield", "basketballcourt", "bridge", "chimney", "expressway-service-area",
    "expressway-toll-station", "dam", "golffield", "groundtrackfield", "harbor", "overpass", "ship", "stadium",
    "storagetank", "tenniscourt", "trainstation", "vehicle", "windmill",
)
HRSC_CLASSES = ("ship",)

_VERSIONS = {
    "dota1.0": DOTA1_0_CLASSES, "dota1.5": DOTA1_5_CLASSES, "dota2.0": DOTA2_0_CLASSES,
    "dior": DIOR_CLASSES, "dior-r": DIOR_CLASSES, "hrsc": HRSC_CLASSES, "hrsc2016": HRSC_CLASSES,
}


def class_names(version: str = "dota1.0") -> tuple[str, ...]:
    """Class list of ``dota1.0`` / ``dota1.5`` / ``dota2.0`` / ``dior`` / ``hrsc`` (also ``v1.0``, ``DOTA-v1.5`` ...)."""
    key = version.lower().replace("-", "").replace("_", "").replace("v", "")
    key = {"1.0": "dota1.0", "1.5": "dota1.5", "2.0": "dota2.0", "diorr": "dior"}.get(key, key)
    key = {"dota1": "dota1.0", "dota2": "dota2.0", "dota": "dota1.0"}.get(key, key)
    if key not in _VERSIONS:
        raise ValueError(f"unknown class list {version!r}; known: dota1.0, dota1.5, dota2.0, dior, hrsc")
    return _VERSIONS[key]


def polygon_area(polys: np.ndarray) -> np.ndarray:
    """Absolute shoelace areas of ``(N, 8)`` polygons."""
    p = np.asarray(polys, dtype=np.float64).reshape(-1, 4, 2)
    x, y = p[..., 0], p[..., 1]
    return 0.5 * np.abs((x * np.roll(y, -1, 1) - np.roll(x, -1, 1) * y).sum(1))


@dataclass
class Annotation:
    """The objects of one image. ``polys`` (N, 8) float64, ``classes`` N names, ``difficult`` (N,) int64."""

    polys: np.ndarray = field(default_factory=lambda: np.zeros((0, 8), np.float64))
    classes: list[str] = field(default_factory=list)
    difficult: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    path: Path | None = None
    imagesource: str | None = None
    gsd: float | None = None
    errors: list[str] = field(default_factory=list)  # bad lines that were skipped (file:line: reason)
    warnings: list[str] = field(default_factory=list)  # suspicious objects that were kept (file:line: reason)
    lines: list[int] = field(default_factory=list)  # line number of each object in the file

    def __len__(self) -> int:
        return len(self.classes)

    def labels(self, classes: Sequence[str]) -> np.ndarray:
        """Indices of the object classes in ``classes`` (-1 for names not in it)."""
        idx = {c: i for i, c in enumerate(classes)}
        return np.array([idx.get(c, -1) for c in self.classes], dtype=np.int64)


def _resolve_on_error(on_error: str, strict: bool | None) -> bool:
    """True when bad lines must raise."""
    if strict is not None:
        return bool(strict)
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    return on_error == "raise"


class _Reporter:
    def __init__(self, path: Path, strict: bool, ann: Annotation):
        self.path, self.strict, self.ann = path, strict, ann

    def __call__(self, line: int | None, msg: str) -> None:
        if self.strict:
            raise DataError(msg, path=self.path, line=line)
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        self.ann.errors.append(f"{where}: {msg}")
        log.warning("%s: %s (skipped)", where, msg)

    def warn(self, line: int | None, msg: str) -> None:
        """A suspicious but usable object: kept with a warning (an error in strict mode)."""
        if self.strict:
            raise DataError(msg, path=self.path, line=line)
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        self.ann.warnings.append(f"{where}: {msg}")
        log.warning("%s: %s (kept)", where, msg)


def _invalid_reason(coords: Sequence[float]) -> str | None:
    """Why shapely's ``is_valid`` rejects the quadrilateral (``None`` when it is valid)."""
    import shapely

    p = np.asarray(coords, dtype=np.float64).reshape(4, 2)
    geom = shapely.polygons(np.concatenate([p, p[:1]]))
    if shapely.is_valid(geom):
        return None
    reason = shapely.is_valid_reason(geom)
    kind = "self-intersecting polygon" if reason.lower().startswith(("self-intersection", "ring self")) \
        else "invalid polygon"
    return f"{kind} ({reason}); check the corner order"


def _hull_area(coords: Sequence[float]) -> float:
    import shapely

    return float(shapely.area(shapely.convex_hull(shapely.multipoints(np.asarray(coords, np.float64).reshape(4, 2)))))


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError("no such annotation file", path=path)
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"not a UTF-8 text file ({exc})", path=path) from exc


def read_label_txt(
    path: str | Path,
    classes: Sequence[str] | None = None,
    on_error: str = "skip",
    strict: bool | None = None,
    allow_degenerate: bool = False,
    min_area: float = 1e-6,
) -> Annotation:
    """Read a DOTA labelTxt file.

    Args:
        path: the ``.txt`` file.
        classes: if given, objects of other classes are bad lines (skipped or raised).
        on_error: ``"skip"`` (warn with file:line, keep going) or ``"raise"``.
        strict: shorthand overriding ``on_error`` (True = raise, False = skip).
        allow_degenerate: keep polygons with area below ``min_area`` (the DOTA devkit's evaluator
            keeps them as unmatched ground truth; training data should not).
    """
    path = Path(path)
    raise_ = _resolve_on_error(on_error, strict)
    ann = Annotation(path=path)
    report = _Reporter(path, raise_, ann)
    known = set(classes) if classes is not None else None
    polys, names, diffs, linenos = [], [], [], []
    for lineno, raw in enumerate(_read_text(path).splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        low = line.lower()
        if low.startswith("imagesource:"):
            ann.imagesource = line.split(":", 1)[1].strip()
            continue
        if low.startswith("gsd:"):
            try:
                ann.gsd = float(line.split(":", 1)[1])
            except ValueError:
                ann.gsd = None  # "gsd:null" in official files
            continue
        fields = line.split()
        if len(fields) not in (9, 10):
            report(lineno, f"expected 'x1 y1 ... x4 y4 class [difficult]' (9 or 10 fields), got {len(fields)}")
            continue
        try:
            coords = [float(v) for v in fields[:8]]
        except ValueError:
            report(lineno, f"non-numeric coordinate in {' '.join(fields[:8])!r}")
            continue
        if not all(math.isfinite(v) for v in coords):
            report(lineno, "non-finite coordinate")
            continue
        name = fields[8]
        try:
            diff = int(fields[9]) if len(fields) == 10 else 0
        except ValueError:
            report(lineno, f"difficult must be an integer, got {fields[9]!r}")
            continue
        if known is not None and name not in known:
            report(lineno, f"unknown class {name!r}")
            continue
        if polygon_area(np.array(coords))[0] < min_area:
            if not allow_degenerate:  # (a symmetric "bow tie" has zero shoelace area too: say so)
                hint = "; self-intersecting: the corners are not in order" if _hull_area(coords) >= min_area else ""
                report(lineno, f"degenerate polygon (zero area{hint})")
                continue
        elif (why := _invalid_reason(coords)) is not None:
            report.warn(lineno, why)
        polys.append(coords)
        names.append(name)
        diffs.append(diff)
        linenos.append(lineno)
    ann.polys = np.array(polys, dtype=np.float64).reshape(-1, 8)
    ann.classes = names
    ann.difficult = np.array(diffs, dtype=np.int64)
    ann.lines = linenos
    return ann


def _num(v) -> str:
    """Shortest text that reads back to the same value (``937.0``, ``12.5``; float32 kept as float32)."""
    if isinstance(v, np.floating) and v.dtype == np.float32:
        return str(v)
    return repr(float(v))


def write_label_txt(
    path: str | Path,
    polys,
    classes: Sequence[str],
    difficult: Sequence[int] | None = None,
    imagesource: str | None = None,
    gsd: float | None = None,
    decimals: int | None = None,
) -> Path:
    """Write a DOTA labelTxt file (LF endings, atomically). ``decimals=None`` writes the shortest exact form."""
    path = Path(path)
    p = np.asarray(polys).reshape(-1, 8)
    if len(p) != len(classes):
        raise ValueError(f"{len(p)} polygons but {len(classes)} class names")
    diffs = [0] * len(p) if difficult is None else [int(d) for d in difficult]
    lines = []
    if imagesource is not None:
        lines.append(f"imagesource:{imagesource}")
    if gsd is not None:
        lines.append(f"gsd:{gsd}")
    for row, name, d in zip(p, classes, diffs):
        if " " in name or not name:
            raise ValueError(f"class names cannot be empty or contain spaces: {name!r}")
        coords = " ".join(f"{float(v):.{decimals}f}" if decimals is not None else _num(v) for v in row)
        lines.append(f"{coords} {name} {d}")
    from rsvision.outputs import atomic_write

    with atomic_write(path, encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    return path


# --- Task1 ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Detection:
    """One Task1 row."""

    image: str
    score: float
    poly: tuple[float, ...]


_TASK1 = re.compile(r"^Task1_(.+)\.txt$")


def task1_line(image: str, score, poly) -> str:
    """``image score x1 ... y4`` with MMRotate's formatting (coordinates to 2 decimals)."""
    return " ".join([image, _num(score)] + [f"{float(v):.2f}" for v in np.asarray(poly).reshape(8)])


def read_task1(path: str | Path, on_error: str = "raise", strict: bool | None = None) -> list[Detection]:
    """Rows of one ``Task1_<class>.txt`` file; bad lines raise (default) or are skipped."""
    path = Path(path)
    raise_ = _resolve_on_error(on_error, strict)
    report = _Reporter(path, raise_, Annotation())
    out = []
    for lineno, raw in enumerate(_read_text(path).splitlines(), start=1):
        f = raw.split()
        if not f:
            continue
        if len(f) != 10:
            report(lineno, f"expected 'image score x1 y1 ... x4 y4' (10 fields), got {len(f)}")
            continue
        try:
            vals = [float(v) for v in f[1:]]
        except ValueError:
            report(lineno, "non-numeric score or coordinate")
            continue
        if not all(math.isfinite(v) for v in vals):
            report(lineno, "non-finite score or coordinate")
            continue
        out.append(Detection(f[0], vals[0], tuple(vals[1:])))
    return out


def read_task1_dir(
    dets_dir: str | Path, classes: Iterable[str] | None = None, on_error: str = "raise"
) -> dict[str, list[Detection]]:
    """``{class: [Detection]}`` from every ``Task1_<class>.txt`` in ``dets_dir``.

    With ``classes``, only those files are read (a missing one means no detections).
    """
    dets_dir = Path(dets_dir)
    if not dets_dir.is_dir():
        raise DataError("detections folder does not exist", path=dets_dir)
    found = {m.group(1): p for p in sorted(dets_dir.iterdir()) if (m := _TASK1.match(p.name))}
    names = list(classes) if classes is not None else list(found)
    return {c: read_task1(found[c], on_error) if c in found else [] for c in names}


def write_task1(
    out_dir: str | Path, dets: Mapping[str, Iterable[Detection | tuple]], classes: Iterable[str] | None = None
) -> list[Path]:
    """Write ``Task1_<class>.txt`` for every class of ``dets`` (and an empty file for each of ``classes``),
    each atomically (a killed run leaves the previous file or the new one)."""
    from rsvision.outputs import atomic_write

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys([*(classes or []), *dets]))
    written = []
    for c in names:
        rows = [d if isinstance(d, Detection) else Detection(d[0], float(d[1]), tuple(np.asarray(d[2]).reshape(8)))
                for d in dets.get(c, [])]
        p = out_dir / f"Task1_{c}.txt"
        with atomic_write(p) as f:
            f.write("".join(task1_line(d.image, d.score, d.poly) + "\n" for d in rows))
        written.append(p)
    return written


def append_task1(out_dir: str | Path, image: str, polys, scores, classes: Sequence[str]) -> Path:
    """Append one image's detections to the ``Task1_<class>.txt`` files of ``out_dir``; returns ``out_dir``.

    Each file is rewritten atomically (old rows + new rows under a temporary name, then renamed), so a
    killed run leaves a file with or without this image's rows, never a half-written row.
    """
    from rsvision.outputs import atomic_write

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    p = np.asarray(polys).reshape(-1, 8)
    s = np.asarray(scores).reshape(-1)
    by_class: dict[str, list[str]] = {}
    for poly, score, c in zip(p, s, classes):
        by_class.setdefault(c, []).append(task1_line(image, score, poly) + "\n")
    for c, lines in by_class.items():
        p = out_dir / f"Task1_{c}.txt"
        old = p.read_bytes() if p.is_file() else b""
        if old and not old.endswith(b"\n"):
            old += b"\n"
        with atomic_write(p, "wb") as f:
            f.write(old + "".join(lines).encode())
    return out_dir
