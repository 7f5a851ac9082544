"""Published weights by name: a registry (data, not code), a resumable hash-checked download into a cache.

Ultralytics and timm users type a model name and get weights; the official LSKNet / HAKSNet / MTP
checkpoints are scattered over Hugging Face, OpenMMLab's server, Baidu pan and OneDrive. This module
lists them once (:data:`REGISTRY`), fetches the ones that have a direct URL and, for the others, says
exactly what to download and where to put it. Rules:

- the network is used only when a download is asked for (``rsvision weights get``, or ``--pretrained
  NAME`` with the file not cached); a cached file whose hash matches (or, with no hash known, that
  exists) is used without any network call;
- downloads go to ``<file>.part`` beside the final file, resume with an HTTP ``Range`` request after an
  interruption, are checked (full sha256 where known, else OpenMMLab's / torch.hub's file-name hash
  prefix, else the announced size) and only then renamed into place; a file that fails the check is
  deleted and refused;
- cache: ``$RSVISION_HOME/weights`` (default ``${XDG_CACHE_HOME:-~/.cache}/rsvision/weights``);
  ``RSVISION_WEIGHTS_MIRROR=BASE_URL`` fetches every entry (manual ones too) from ``BASE_URL/<file name>``.

Only the standard library (``urllib``) is used; no torch import (``rsvision --help`` stays light).
"""
from __future__ import annotations

import difflib
import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rsvision.errors import CheckpointError, RSVisionError

__all__ = ["WeightsEntry", "WeightsError", "REGISTRY", "entries", "get_entry", "close_matches", "cache_dir",
           "cached_path", "is_cached", "fetch", "resolve_pretrained", "manual_steps", "sha256_file"]

_CHUNK = 1 << 20


class WeightsError(RSVisionError):
    """A published checkpoint cannot be found, fetched or verified."""


@dataclass(frozen=True)
class WeightsEntry:
    """One published checkpoint. Facts we could not confirm are ``None``, never guessed."""

    name: str  # rsvision's name: ``<architecture>.<training>`` like timm's pretrained tags
    architecture: str  # rsvision / timm model name (or the publisher's name when rsvision lacks the model)
    task: str  # backbone-imagenet | backbone-mtp | detect-dota | detect-hrsc
    source: str  # the page that publishes it
    file_name: str  # name in the cache (the publisher's own name where known)
    licence: str
    url: str | None = None  # direct download URL, None when only a share page exists
    sha256: str | None = None  # full hash, only when known from the publisher or a verified download
    sha256_prefix: str | None = None  # leading hex digits published in the file name (OpenMMLab / torch.hub)
    size: int | None = None  # bytes, when known
    notes: str = ""
    manual: str = ""  # what to do on the source page when there is no direct URL
    confirmed: str = ""  # which facts were checked, and how


_LSK = "https://github.com/zcablii/LSKNet"
_LSK_LIC = "CC BY-NC 4.0 (non-commercial)"
_LSK_OK = "URL and licence from the zcablii/LSKNet README (stored copy, commit 03d8e47); size / hash not known"
_MMR = "https://download.openmmlab.com/mmrotate/v1.0/lsknet"
_MMR_OK = (_LSK_OK.replace("size / hash not known", "hash prefix = the -xxxxxxxx suffix of the file name "
                                                    "(OpenMMLab publish_model / torch.hub convention); size not known"))
_HAKS = "https://github.com/peace1111/HAKSNet"
_HAKS_LIC = "not stated (README); treat as non-commercial"
_HAKS_OK = ("Baidu pan link and extraction code from the peace1111/HAKSNet README (stored copy, commit "
            "032c35b); the file name in the share is not known: rsvision's name is used; no hash / size")
_MTP = "https://github.com/ViTAE-Transformer/MTP"
_MTP_PAGE = ("Baidu https://pan.baidu.com/s/1Zh6yv2AouboGEP4phyR7xA?pwd=yqv9 (extraction code yqv9) or "
             "OneDrive https://1drv.ms/f/s!AimBgYV7JjTlgcpa7t2sywuWOm3HQA?e=LAh8WN")
_MTP_LIC = "MIT (code); the README says research purpose only"
_MTP_OK = ("share pages from the ViTAE-Transformer/MTP Readme (commit 13cc2b7, 'Pretrained Models'); file name "
           "from its fine-tune configs; LICENSE MIT; no hash / size")


def _haks(name: str, arch: str, task: str, page: str, code: str, notes: str) -> WeightsEntry:
    return WeightsEntry(name, arch, task, _HAKS, f"{name.replace('.', '_')}.pth", _HAKS_LIC, notes=notes,
                        manual=f"open {page} (Baidu pan, extraction code {code}) and download the checkpoint",
                        confirmed=_HAKS_OK)


def _mtp(name: str, arch: str, file_name: str, init: str = "MAE") -> WeightsEntry:
    return WeightsEntry(name, arch, "backbone-mtp", _MTP, file_name, _MTP_LIC,
                        notes=f"{init} + multi-task pretraining on SAMRS (semantic / instance segmentation, rotated "
                              "detection); encoder weights only; rsvision has no model of this architecture yet",
                        manual=f"open {_MTP_PAGE}, folder of the MTP pretrained models, and download {file_name}",
                        confirmed=_MTP_OK)


#: Every published checkpoint rsvision knows. Tests may extend it (``monkeypatch.setattr``).
REGISTRY: list[WeightsEntry] = [
    WeightsEntry("lsknet_t.in1k", "lsknet_t", "backbone-imagenet", _LSK, "lsk_t_backbone.pth.tar", _LSK_LIC,
                 url="https://huggingface.co/GreatBird/LSKNet/resolve/main/lsk_t_backbone.pth.tar",
                 notes="ImageNet-1k, 300 epochs", confirmed=_LSK_OK),
    WeightsEntry("lsknet_s.in1k", "lsknet_s", "backbone-imagenet", _LSK, "lsk_s_backbone.pth.tar", _LSK_LIC,
                 url="https://huggingface.co/GreatBird/LSKNet/resolve/main/lsk_s_backbone.pth.tar",
                 notes="ImageNet-1k, 300 epochs", confirmed=_LSK_OK),
    WeightsEntry("lsknet_t.orcnn_dota", "lsknet_t", "detect-dota", _LSK,
                 "lsk_t_fpn_1x_dota_le90_20230206-3ccee254.pth", _LSK_LIC,
                 url=f"{_MMR}/lsk_t_fpn_1x_dota_le90/lsk_t_fpn_1x_dota_le90_20230206-3ccee254.pth",
                 sha256_prefix="3ccee254", notes="Oriented R-CNN, DOTA-v1.0 mAP 81.37 (le90, 1024 / gap 200, 1x); "
                 "MMRotate layout", confirmed=_MMR_OK),
    WeightsEntry("lsknet_s.orcnn_dota", "lsknet_s", "detect-dota", _LSK,
                 "lsk_s_fpn_1x_dota_le90_20230116-99749191.pth", _LSK_LIC,
                 url=f"{_MMR}/lsk_s_fpn_1x_dota_le90/lsk_s_fpn_1x_dota_le90_20230116-99749191.pth",
                 sha256_prefix="99749191", notes="Oriented R-CNN, DOTA-v1.0 mAP 81.64 (le90, 1024 / gap 200, 1x); "
                 "MMRotate layout", confirmed=_MMR_OK),
    WeightsEntry("lsknet_s.orcnn_dota_ema", "lsknet_s", "detect-dota", _LSK,
                 "lsk_s_ema_fpn_1x_dota_le90_20230212-30ed4041.pth", _LSK_LIC,
                 url=f"{_MMR}/lsk_s_ema_fpn_1x_dota_le90/lsk_s_ema_fpn_1x_dota_le90_20230212-30ed4041.pth",
                 sha256_prefix="30ed4041", notes="Oriented R-CNN with EMA fine-tune, DOTA-v1.0 mAP 81.85; "
                 "MMRotate layout", confirmed=_MMR_OK),
    WeightsEntry("lsknet_s.orcnn_hrsc", "lsknet_s", "detect-hrsc", _LSK,
                 "lsk_s_fpn_3x_hrsc_le90_20230205-4a4a39ce.pth", _LSK_LIC,
                 url=f"{_MMR}/lsk_s_fpn_3x_hrsc_le90/lsk_s_fpn_3x_hrsc_le90_20230205-4a4a39ce.pth",
                 sha256_prefix="4a4a39ce", notes="Oriented R-CNN, HRSC2016 mAP(07) 90.65 / mAP(12) 98.46, 3x; "
                 "MMRotate layout", confirmed=_MMR_OK),
    _haks("haksnet_t.in1k", "haksnet_t", "backbone-imagenet", "https://pan.baidu.com/s/1el7v8DrMlwtrHBQAqDt-oA?pwd=qc4r",
          "qc4r", "ImageNet pretrained backbone"),
    _haks("haksnet_s.in1k", "haksnet_s", "backbone-imagenet", "https://pan.baidu.com/s/1jRcvoAj3AfKXJkeduzuQnw?pwd=gq7n",
          "gq7n", "ImageNet pretrained backbone"),
    _haks("haksnet_t.orcnn_dota", "haksnet_t", "detect-dota", "https://pan.baidu.com/s/1KCITs2hSGPnC1rKaC0njPw?pwd=rvch",
          "rvch", "Oriented R-CNN, DOTA-v1.0 single-scale mAP 79.28 (le90); the README links no HAKSNet-S or "
          "multi-scale DOTA model"),
    _mtp("vit_b_rvsa.mtp", "vit_b_rvsa", "last_vit_b_rvsa_ss_is_rd_pretrn_model_encoder.pth"),
    _mtp("vit_l_rvsa.mtp", "vit_l_rvsa", "last_vit_l_rvsa_ss_is_rd_pretrn_model_encoder.pth"),
    _mtp("internimage_xl.mtp", "internimage_xl", "last_internimage_xl_ss_is_rd_pretrn_model_encoder.pth",
         init="ImageNet pretraining (IMP)"),
]


def entries() -> list[WeightsEntry]:
    return list(REGISTRY)


def close_matches(name: str, n: int = 3) -> list[str]:
    names = [e.name for e in REGISTRY]
    lower = {k.lower(): k for k in names}
    hits = difflib.get_close_matches(name.lower(), list(lower), n=n, cutoff=0.5)
    return [lower[h] for h in hits] or [k for k in names if name.lower() in k.lower()][:n]


def get_entry(name: str) -> WeightsEntry:
    """The registry entry called ``name`` (case-insensitive); an error naming close matches otherwise."""
    for e in REGISTRY:
        if e.name.lower() == str(name).lower():
            return e
    near = close_matches(str(name))
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    raise WeightsError(f"unknown published weights {name!r}{hint} (`rsvision weights list` shows them all)")


def cache_dir() -> Path:
    home = os.environ.get("RSVISION_HOME")
    if home:
        return Path(home).expanduser() / "weights"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "rsvision" / "weights"


def cached_path(entry: WeightsEntry, to: str | Path | None = None) -> Path:
    """Where ``entry``'s file lives (or is to be put): ``to`` or the cache folder, then its file name."""
    return (Path(to).expanduser() if to is not None else cache_dir()) / entry.file_name


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _check(entry: WeightsEntry, path: Path, expected_size: int | None = None) -> tuple[str | None, str | None]:
    """``(reason it fails or None, sha256 when computed)`` for ``path`` against what ``entry`` knows."""
    size = path.stat().st_size
    for want, what in ((entry.size, "registry"), (expected_size, "server")):
        if want is not None and size != want:
            return f"size {size} bytes, the {what} says {want}", None
    digest = None
    if entry.sha256 or entry.sha256_prefix:
        digest = sha256_file(path)
        if entry.sha256 and digest != entry.sha256.lower():
            return f"sha256 {digest}, expected {entry.sha256}", digest
        if entry.sha256_prefix and not digest.startswith(entry.sha256_prefix.lower()):
            return f"sha256 {digest} does not start with {entry.sha256_prefix} (the published prefix)", digest
    return None, digest


def is_cached(entry: WeightsEntry, to: str | Path | None = None, verify: bool = True) -> bool:
    """True when the file is there and (``verify``) passes its hash / size checks. No network."""
    p = cached_path(entry, to)
    return p.is_file() and (not verify or _check(entry, p)[0] is None)


def _url(entry: WeightsEntry) -> str | None:
    mirror = os.environ.get("RSVISION_WEIGHTS_MIRROR", "").strip()
    return f"{mirror.rstrip('/')}/{entry.file_name}" if mirror else entry.url


def manual_steps(entry: WeightsEntry, to: str | Path | None = None) -> str:
    dest = cached_path(entry, to)
    return (f"{entry.name} has no direct download URL ({entry.source}).\n"
            f"  1. {entry.manual or 'download it from ' + entry.source}\n"
            f"  2. save it as {dest}\n"
            f"     (mkdir -p {dest.parent} && mv <downloaded file> {dest})\n"
            f"  3. use it by name: --pretrained {entry.name}   (or set RSVISION_WEIGHTS_MIRROR to a server "
            f"that holds {entry.file_name})")


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": "rsvision-weights/1", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _total(resp: Any, offset: int) -> tuple[int, int | None]:
    """(offset the body starts at, full file size or None) from a 200 / 206 response."""
    if resp.status == 206:
        rng = resp.headers.get("Content-Range", "")  # bytes START-END/TOTAL
        try:
            start = int(rng.split()[1].split("-")[0])
            total = rng.rsplit("/", 1)[1]
            return start, (int(total) if total != "*" else None)
        except (IndexError, ValueError):
            raise WeightsError(f"bad Content-Range {rng!r} from the server") from None
    length = resp.headers.get("Content-Length")
    return 0, (int(length) if length and length.isdigit() else None)


def _download(entry: WeightsEntry, url: str, final: Path, on_progress: Callable[[int, int | None], None],
              timeout: float) -> int | None:
    """One attempt: continue ``final.part`` from its size. Returns the announced size. Raises
    ``OSError`` / ``urllib.error.URLError`` on an interruption (the ``.part`` file is kept)."""
    part = final.with_name(final.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    try:
        resp = _open(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the .part is complete or longer than the file: start over
            part.unlink(missing_ok=True)
            return _download(entry, url, final, on_progress, timeout)
        raise WeightsError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    with resp:
        start, total = _total(resp, offset)
        if start not in (0, offset):
            raise WeightsError(f"{url}: the server resumed at byte {start}, expected {offset}")
        done = start
        with open(part, "ab" if start else "wb") as f:
            on_progress(done, total)
            while block := resp.read(_CHUNK):
                f.write(block)
                done += len(block)
                on_progress(done, total)
            f.flush()
            os.fsync(f.fileno())
    if total is not None and done < total:
        raise ConnectionError(f"connection closed after {done} of {total} bytes")
    return total


def fetch(entry: WeightsEntry | str, to: str | Path | None = None, retries: int = 3, timeout: float = 60.0,
          console: Any = None, force: bool = False) -> Path:
    """The file of ``entry`` in the cache (or ``to``), downloaded when missing. See the module docstring.

    A cached file that fails its hash is deleted and fetched again. Without a URL (and no mirror) the
    error carries the manual steps. ``retries``: further attempts after an interruption, each resuming.
    """
    entry = get_entry(entry) if isinstance(entry, str) else entry
    final = cached_path(entry, to)
    if final.is_file() and not force:
        bad = _check(entry, final)[0]
        if bad is None:
            return final
        _say(console, f"{final}: {bad}; deleting it and fetching again")
        final.unlink()
    url = _url(entry)
    if url is None:
        raise WeightsError(manual_steps(entry, to))
    from rsvision.outputs import claim_dir

    with claim_dir(final.parent, exist_ok=True, what="weights folder"), _Bar(console, entry.name) as bar:
        for attempt in range(retries + 1):
            try:
                total = _download(entry, url, final, bar.update, timeout)
                break
            except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError; HTTPError -> WeightsError
                part = final.with_name(final.name + ".part")
                have = part.stat().st_size if part.exists() else 0
                if attempt == retries:
                    raise WeightsError(f"download of {entry.name} from {url} interrupted ({exc}); {have} bytes "
                                       f"kept in {part}: run the command again to resume") from None
                _say(console, f"{entry.name}: interrupted at {have} bytes ({exc}); resuming")
                time.sleep(min(2.0 ** attempt, 10.0) if attempt else 0.1)
        part = final.with_name(final.name + ".part")
        bad, digest = _check(entry, part, total)
        if bad is not None:
            part.unlink()
            raise WeightsError(f"download of {entry.name} from {url} refused and deleted: {bad}")
        os.replace(part, final)
    if not entry.sha256:
        _say(console, f"{entry.name}: sha256 {digest or sha256_file(final)} (no full published hash to compare with)")
    return final


def resolve_pretrained(value: str | os.PathLike) -> Path:
    """``--pretrained`` / ``model.pretrained``: an existing path as is, else a registry name -> its cached
    file (downloaded when missing and a URL exists; the manual steps otherwise)."""
    path = Path(os.fspath(value)).expanduser()
    if path.exists():
        return path
    text = os.fspath(value)
    if any(e.name.lower() == text.lower() for e in REGISTRY):
        from rich.console import Console

        return fetch(text, console=Console())
    near = close_matches(text)
    hint = f" (close: {', '.join(near)})" if near else ""
    raise CheckpointError(f"checkpoint file not found, and not a published weights name{hint}: "
                          "`rsvision weights list` shows the names", path=text)


def _say(console: Any, text: str) -> None:
    if console is not None:
        console.print(text, markup=False, highlight=False)
    else:
        import logging

        logging.getLogger("rsvision.weights").info(text)


class _Bar:
    """Download progress: rich bytes / speed columns on a terminal, plain periodic lines (MiB) otherwise."""

    def __init__(self, console: Any, name: str):
        self.console, self.name, self.job, self.bar = console, name, None, None

    def __enter__(self) -> "_Bar":
        if self.console is None:
            return self
        if self.console.is_terminal:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

            self.bar, self.scale = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                            TransferSpeedColumn(), console=self.console, transient=True), 1
        else:
            from rsvision.progress import PlainProgress

            self.bar, self.scale = PlainProgress(self.console), 1 / 2**20
        self.bar.start()
        return self

    def update(self, done: int, total: int | None) -> None:
        if self.bar is None:
            return
        s = self.scale
        if self.job is None:
            unit = "" if s == 1 else " (MiB)"
            self.job = self.bar.add_task(f"{self.name}{unit}", total=None if total is None else round(total * s, 1))
        self.bar.update(self.job, completed=round(done * s, 1))

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()
