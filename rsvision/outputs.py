"""Outputs that never clobber: atomic files, claimed output folders, unique names per input.

One rule for every command that writes results (CONVENTIONS "Outputs"):

- every file is written under a temporary name in its destination folder, then renamed
  (:func:`atomic_path` / :func:`atomic_write`), so a killed run leaves either the old file or the
  new one, never half of one;
- an output folder or run directory that already holds files is **refused** with a message naming
  it and the option, unless the user opts in (``--exist-ok`` for results, ``--resume`` for training);
  with the opt-in, files of the same name are replaced (atomically) and nothing else is touched;
- a command never deletes a file it did not write in the same run;
- while a command writes into a folder it holds ``.rsvision.lock`` there, so a second command writing
  into the same folder at the same time stops with a clear message instead of mixing results (a lock
  left by a killed process is taken over once that process is gone, and that process's unfinished
  temporary files, ``.<name>.<pid>.*.tmp*``, are removed);
- outputs of different inputs never share a name (:func:`unique_stems`).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Iterator, Optional, Sequence

from rsvision.errors import ConfigError, RSVisionError

__all__ = ["OutputExistsError", "OutputLockedError", "atomic_path", "atomic_write", "claim_dir", "unique_stems",
           "LOCK_NAME", "spill_per_image", "read_per_image", "PER_IMAGE_INLINE_MAX", "PER_IMAGE_SUFFIX"]

LOCK_NAME = ".rsvision.lock"


class OutputExistsError(RSVisionError):
    """An output folder / run directory already holds results and the user did not opt in."""


class OutputLockedError(RSVisionError):
    """Another running rsvision command writes into the same folder."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path`` (else removed).

    For writers that take a file name (PIL, rasterio, matplotlib, torch.save).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.{os.getpid()}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """``open(path, mode)`` that appears only once complete (temporary file in the same folder, renamed)."""
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def _proc_stat(pid: int) -> Optional[tuple[str, str]]:
    """``(state, start time in clock ticks since boot)`` from Linux's ``/proc/<pid>/stat``; None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # the name may hold spaces
        return fields[0], fields[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int, started: Optional[str] = None) -> bool:
    """Whether the lock holder ``pid`` still runs: not a zombie (a killed run's processes stay zombies
    until reaped), and, when the lock recorded its start time, the same process (pids are reused:
    Linux's default pid_max is 32768)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _proc_stat(pid)
    if stat is None:
        return True
    return stat[0] not in ("Z", "X") and (started is None or stat[1] == started)


def _lock_owner(lock: Path, wait: float = 5.0) -> Optional[dict]:
    """The holder recorded in ``lock``; None when it is gone (released meanwhile) or stays empty or unreadable
    for ``wait`` seconds (its creator writes it right after creating it, so only a run killed in between
    leaves it so)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            owner = json.loads(lock.read_text())
            if isinstance(owner, dict) and owner:
                return owner
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def _take_lock(folder: Path, what: str) -> Path:
    lock = folder / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    stat = _proc_stat(os.getpid())
    if stat is not None:
        me["started"] = stat[1]
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner is None:  # released meanwhile, or left empty by a run killed between creating and writing it
                lock.unlink(missing_ok=True)
                continue
            same_host = owner.get("host") == me["host"]
            if same_host and isinstance(owner.get("pid"), int) and not _pid_alive(owner["pid"], owner.get("started")):
                for tmp in folder.glob(f".*.{owner['pid']}.*.tmp*"):  # that run's unfinished files
                    tmp.unlink(missing_ok=True)
                lock.unlink(missing_ok=True)  # left by a killed run: take it over
                continue
            raise OutputLockedError(f"another rsvision command (pid {owner.get('pid')} on {owner.get('host')}) is "
                                    f"writing into {folder}; wait for it or choose another {what} "
                                    f"(remove {lock} if no such process runs)", path=folder)
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return lock
    raise OutputLockedError(f"cannot lock {folder}", path=folder)


@contextlib.contextmanager
def claim_dir(folder: str | Path, exist_ok: bool = False, what: str = "--out", opt_in: str = "--exist-ok",
              ignore: Sequence[str] = ()) -> Iterator[Path]:
    """Claim ``folder`` for the results of this run: refuse a non-empty one unless ``exist_ok``, then
    hold its lock until the block ends.

    ``what`` / ``opt_in`` name the option in messages; ``ignore``: names whose presence does not count
    as earlier results (e.g. a lock file). Raises before any work is done.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{what} {folder} is a file, not a folder", path=folder)
    skip = {LOCK_NAME, *ignore}
    if folder.is_dir() and not exist_ok and any(p.name not in skip for p in folder.iterdir()):
        raise OutputExistsError(f"{what} {folder} already holds results; choose another {what}, or pass "
                                f"{opt_in} to add to it (files of the same name are replaced, nothing else "
                                f"is touched)", path=folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {what} {folder}: {exc.strerror}", path=folder) from exc
    lock = _take_lock(folder, what)
    failed = True
    try:
        yield folder
        failed = False
    finally:
        lock.unlink(missing_ok=True)
        if failed and created and not any(folder.iterdir()):  # failed before writing anything: no folder left
            with contextlib.suppress(OSError):  # something appeared meanwhile: keep it
                folder.rmdir()


def check_writable_file(path: str | Path | None, what: str = "--json") -> None:
    """Fail before the work when an output file cannot be written (a folder, a missing parent that
    cannot be made), so a long evaluation is not lost at the end."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{what} {p} is a folder; give a file name", path=p)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the folder of {what} {p}: {exc.strerror}", path=p) from exc
    if not os.access(p.parent, os.W_OK):
        raise ConfigError(f"{what} {p}: its folder is not writable", path=p)


def unique_stems(paths: Sequence[str | Path], names: Sequence[str] | None = None) -> list[str]:
    """Output names for inputs: ``names`` (default: the file stems), or where two inputs share one,
    their paths relative to the common folder joined with ``__`` (``a/x.png``, ``b/x.png`` -> ``a__x``,
    ``b__x``); still equal names (``x.png`` and ``x.tif``) get ``-2``, ``-3`` ... suffixes."""
    ps = [Path(p) for p in paths]
    stems = list(names) if names is not None else [p.stem for p in ps]
    dup = {s for s in stems if stems.count(s) > 1}
    if dup:
        resolved = [p.resolve() for p in ps]
        common = Path(os.path.commonpath([str(r.parent) for r in resolved])) if resolved else Path(".")
        stems = ["__".join(r.relative_to(common).with_suffix("").parts) if s in dup else s
                 for s, r in zip(stems, resolved)]
    seen: dict[str, int] = {}
    out = []
    for s in stems:
        n = seen.get(s, 0) + 1
        seen[s] = n
        out.append(s if n == 1 else f"{s}-{n}")
    return out


#: eval JSONs keep at most this many ``per_image`` records inline (:mod:`rsvision.tasks.per_image`)
PER_IMAGE_INLINE_MAX = 1000
PER_IMAGE_SUFFIX = ".per_image.jsonl"


def spill_per_image(obj: Any, path: str | Path) -> Any:
    """``obj`` (plain JSON values) with a ``per_image`` list of more than :data:`PER_IMAGE_INLINE_MAX`
    records moved to ``<stem>.per_image.jsonl`` beside ``path`` (one record a line, written atomically);
    ``per_image`` then holds that file's name and ``per_image_count`` the number of records."""
    per = obj.get("per_image") if isinstance(obj, dict) else None
    if not isinstance(per, list) or len(per) <= PER_IMAGE_INLINE_MAX:
        return obj
    side = Path(path).with_name(Path(path).stem + PER_IMAGE_SUFFIX)
    with atomic_write(side) as f:
        for r in per:
            f.write(json.dumps(r) + "\n")
    return {**obj, "per_image": side.name, "per_image_count": len(per)}


def read_per_image(value: Any, json_path: str | Path, limit: int = 1_000_000) -> list[dict]:
    """The records of an eval JSON's ``per_image`` value: the list itself, or the JSON-lines file it names
    (only a bare ``*.per_image.jsonl`` name, read beside ``json_path``; anything else: no records)."""
    if isinstance(value, list):
        return [r for r in value if isinstance(r, dict)]
    if not isinstance(value, str) or Path(value).name != value or not value.endswith(PER_IMAGE_SUFFIX):
        return []
    out: list[dict] = []
    try:
        with open(Path(json_path).parent / value) as f:
            for line in f:
                if len(out) >= limit:
                    break
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                if isinstance(r, dict):
                    out.append(r)
    except (OSError, UnicodeDecodeError):
        return []
    return out
