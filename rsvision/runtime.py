"""Process-level settings: devices (the one parser every command uses) and freed memory kept in the heap.

Devices: ``auto | cpu | cuda | cuda:<i> | mps`` is parsed once, by :func:`parse_device` into
Lightning's ``(accelerator, devices)`` for training and by :func:`resolve_device` into a
``torch.device`` for evaluation and prediction (``cuda:1`` stays ``cuda:1``).

Memory (glibc ``mallopt``):

Why: PyTorch's CPU tensors come from ``malloc``. glibc serves blocks above its mmap threshold
(128 KiB growing to at most 32 MiB) with fresh ``mmap`` calls and hands them back to the OS on
free; it also trims the heap's free top. A CNN step allocates and frees the same multi-MB
activations over and over, so every step page-faults all of them in again (the kernel zeroes
each 4 KiB page). Measured on the 2-core reference machine (torch 2.14.1, 2 threads, one run
each way): LSKNet-T forward 1x3x1024^2 plain 1.17 s -> 0.51 s, fast path 0.36 s -> 0.31 s; train
step 8x3x256^2 plain 1.49 -> 1.09 s, fast 0.91 -> 0.82 s. Small inputs gain little: RSSCN7
training (16x3x128^2 batches, 30-minute runs) did 143-148 LSKNet-T epochs without it, 159 with it
(resnet18: 181 vs 199-202), with machine noise of that order; its first 26 epochs took 12.5 s each
either way. ``python benchmarks/bench_backbones.py --malloc keep`` measures the backbones.

The setting is process-wide: the ``rsvision`` command applies it at start, and every library
entry point applies it for the duration of the call (:func:`kept_memory`: set on entry, glibc's
defaults restored and the memory returned on exit), so Python callers get the CLI's speed;
``RSVISION_MALLOC=system`` keeps glibc's defaults everywhere. :func:`keep_freed_memory` applies it
for the rest of the process. The cost: the process keeps up to ``trim_bytes`` of freed
memory instead of returning it (its RSS stays near its peak). It is the in-process version of
the jemalloc / tcmalloc ``LD_PRELOAD`` advice of PyTorch's CPU tuning guides.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys

__all__ = ["keep_freed_memory", "kept_memory", "apply_env_malloc", "allocator_mode", "glibc", "parse_device",
           "resolve_device", "check_device"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_ENV = "RSVISION_MALLOC"
_kept = False  # keep_freed_memory() applied in this process
_DEVICE_HELP = "expected auto, cpu, cuda, cuda:<index> or mps"


def _device_error(device):
    from rsvision.errors import ConfigError

    return ConfigError(f"bad device {device!r}: {_DEVICE_HELP}")


def parse_device(device) -> tuple:
    """``auto|cpu|cuda|cuda:i[,j]|mps`` -> Lightning ``(accelerator, devices)``.

    >>> parse_device("cuda:1")
    ('gpu', [1])
    >>> parse_device("cpu")
    ('cpu', 'auto')
    """
    d = str(device or "auto").strip().lower()
    if d in ("auto", "cpu", "mps"):
        return d, "auto"
    if d in ("cuda", "gpu"):
        return "gpu", "auto"
    if d.startswith(("cuda:", "gpu:")):
        try:
            return "gpu", [int(i) for i in d.split(":", 1)[1].split(",")]
        except ValueError as exc:
            raise _device_error(device) from exc
    raise _device_error(device)


def check_device(device) -> None:
    """Fail early (ConfigError naming the option) when ``device`` names hardware this machine lacks."""
    import torch

    accelerator, devices = parse_device(device)
    if accelerator == "gpu":
        from rsvision.errors import ConfigError

        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available on this machine (use --device cpu or auto)")
        if devices != "auto" and max(devices) >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif accelerator == "mps" and not torch.backends.mps.is_available():
        from rsvision.errors import ConfigError

        raise ConfigError(f"--device {device}: MPS is not available on this machine")


def resolve_device(device=None):
    """``auto`` (CUDA when available) / ``cpu`` / ``cuda[:i]`` / ``mps`` / a torch.device -> ``torch.device``.

    Raises ConfigError for a malformed name or a CUDA device this machine does not have.
    """
    import torch

    if isinstance(device, torch.device):
        return device
    check_device(device)
    accelerator, devices = parse_device(device)
    if accelerator == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if accelerator == "gpu":
        if devices == "auto":
            return torch.device("cuda")
        if len(devices) != 1:
            from rsvision.errors import ConfigError

            raise ConfigError(f"--device {device}: inference runs on one device; give one CUDA index")
        return torch.device("cuda", devices[0])
    return torch.device(accelerator)


def windows_per_forward(batch_size: int | None, device=None) -> int:
    """Windows per forward pass of whole-scene prediction: ``batch_size`` when given, else 1 on a CPU and
    2 on an accelerator. Why 1 on a CPU: a batch of windows runs no faster there (the convolutions already
    fill the cores) but holds every window's activations at once: LSKNet-T Oriented R-CNN at 1024^2, 2
    threads, 2.0 s per window either way, peak RSS 1.87 GB at 1 vs 2.56 GB at 2 (8 windows);
    UperNet segmentation 3.47 vs 3.45 s, 2.14 vs 3.02 GB (``benchmarks/bench_predict.py``,
    ``bench_dense_scene.py``)."""
    if batch_size is not None:
        if int(batch_size) < 1:
            from rsvision.errors import ConfigError

            raise ConfigError(f"--batch-size (windows per forward pass) must be >= 1, got {batch_size}")
        return int(batch_size)
    kind = getattr(device, "type", None) or str(device or "cpu").split(":")[0]  # torch.device or "cuda:1"
    return 1 if kind == "cpu" else 2


def glibc() -> ctypes.CDLL | None:
    """The process's glibc, or None (other OS or C library, e.g. musl / macOS)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (raises AttributeError on non-glibc)
        libc.mallopt
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory(trim_bytes: int = (1 << 31) - 1, one_arena: bool = True) -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the OS.

    Serves every block from the heap (``M_MMAP_MAX = 0``) and trims the heap only when more
    than ``trim_bytes`` (default and maximum ~2 GiB) sit free at its top. Process-wide and
    not undone. Returns True when applied, False where there is no glibc (nothing changes).

    ``one_arena`` (``M_ARENA_MAX = 1``): every thread allocates from the main heap. Why: a kept heap
    per thread (the window read-ahead thread, torch's worker threads) keeps each one's own peak, and
    their sum grew the whole-scene CLI by ~9 MB a window (published detector, 8000^2, 100 windows:
    2,504 MiB peak with glibc's arenas, 1,962-2,045 MiB in three runs with one, same detections, detection
    194-202 s instead of 235 s). glibc fixes the limit once a second thread allocates, so it cannot be
    undone: it is set where the process is ours (the ``rsvision`` command), never by the scoped
    :func:`kept_memory`.
    """
    libc = glibc()
    if libc is None:
        log.debug("keep_freed_memory: no glibc, allocator left as it is")
        return False
    global _kept
    trim = max(0, min(int(trim_bytes), (1 << 31) - 1))  # mallopt takes a C int
    _kept = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim))
    if _kept and one_arena:
        libc.mallopt(_M_ARENA_MAX, 1)
    return _kept


_M_MMAP_MAX_DEFAULT = 65536  # glibc's defaults, restored when a scoped keep ends
_M_TRIM_THRESHOLD_DEFAULT = 128 * 1024
_depth = 0  # nesting of kept_memory() scopes


@contextlib.contextmanager
def kept_memory():
    """Keep freed memory for the duration of a library call, as the ``rsvision`` command does.

    Every library entry point (``train`` / ``evaluate`` / ``predict`` of every task, ``predict_scene``)
    runs inside this scope, so a Python caller gets the CLI's speed without changing its process for
    good: on entry of the outermost scope :func:`keep_freed_memory` is applied (unless
    ``RSVISION_MALLOC=system`` or the process already keeps memory, e.g. the CLI); on its exit glibc's
    default thresholds are restored (the heap then shrinks as the caller frees memory; an explicit
    ``malloc_trim`` was measured to make the next call start cold, 5-10% slower over three windows).
    Nested scopes are free. (glibc cannot report its settings, so "restored" means its defaults.)
    """
    global _depth, _kept
    owner = _depth == 0 and not _kept
    applied = False
    if owner:
        applied = apply_env_malloc(one_arena=False)  # an arena limit could not be undone on exit
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if owner and applied:
            libc = glibc()
            if libc is not None:
                libc.mallopt(_M_MMAP_MAX, _M_MMAP_MAX_DEFAULT)
                libc.mallopt(_M_TRIM_THRESHOLD, _M_TRIM_THRESHOLD_DEFAULT)
            _kept = False


def allocator_mode() -> str:
    """"keep" once :func:`keep_freed_memory` was applied in this process, else "system"."""
    return "keep" if _kept else "system"


def apply_env_malloc(one_arena: bool = True) -> bool:
    """``keep_freed_memory()`` unless ``RSVISION_MALLOC`` is ``system`` (the CLI's start-up hook)."""
    mode = os.environ.get(_ENV, "keep").strip().lower()
    if mode in ("system", "default", "0", "off"):
        return False
    if mode not in ("keep", "1", "on", ""):
        log.warning("%s=%r not understood (keep | system); using keep", _ENV, mode)
    return keep_freed_memory(one_arena=one_arena)
