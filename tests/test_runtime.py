"""rsvision.runtime: glibc keeps freed memory (checked with mallinfo2 in a fresh process)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from rsvision.runtime import glibc

_LIBC = glibc()
needs_glibc = pytest.mark.skipif(_LIBC is None or not hasattr(_LIBC, "mallinfo2"), reason="needs glibc >= 2.33")

# Both probes start here: glibc's mallinfo2, to read how it serves a big block.
_MALLINFO = textwrap.dedent(
    """
    import ctypes
    import torch
    from rsvision.runtime import allocator_mode, apply_env_malloc, glibc, kept_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

    libc = glibc()
    libc.mallinfo2.restype = MallInfo2
    """
)

# Prints the bytes glibc holds in mmapped blocks while a 64 MiB tensor is alive, and the
# heap's size after the tensor was freed.
_PROBE = _MALLINFO + textwrap.dedent(
    """
    applied = apply_env_malloc()
    assert allocator_mode() == ("keep" if applied else "system")
    x = torch.ones(16 << 20)  # 64 MiB
    mmapped = libc.mallinfo2().hblkhd
    del x
    print(int(applied), mmapped, libc.mallinfo2().arena)
    """
)


def _probe(mode: str) -> tuple[int, int, int]:
    env = {**os.environ, "RSVISION_MALLOC": mode}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    applied, mmapped, arena = map(int, out.stdout.split())
    return applied, mmapped, arena


@needs_glibc
def test_keep_serves_big_blocks_from_the_heap_and_keeps_them():
    applied, mmapped, arena = _probe("keep")
    assert applied == 1
    assert mmapped < (16 << 20)  # the 64 MiB block is not an mmap of its own
    assert arena >= (64 << 20)  # and stays in the heap after it was freed


@needs_glibc
def test_system_leaves_glibc_defaults():
    applied, mmapped, _ = _probe("system")
    assert applied == 0
    assert mmapped >= (64 << 20)  # glibc's default: a fresh mmap, returned on free


def test_cli_applies_it_at_start(monkeypatch):
    from typer.testing import CliRunner

    import rsvision.runtime as rt
    from rsvision.cli import app

    calls = []
    monkeypatch.setattr(rt, "keep_freed_memory", lambda one_arena=True: calls.append(one_arena) or True)
    monkeypatch.delenv("RSVISION_MALLOC", raising=False)
    assert CliRunner().invoke(app, ["models"]).exit_code == 0
    assert calls == [True]  # the command owns its process: one malloc arena too
    monkeypatch.setenv("RSVISION_MALLOC", "system")
    assert CliRunner().invoke(app, ["models"]).exit_code == 0
    assert calls == [True]
    monkeypatch.delenv("RSVISION_MALLOC")
    monkeypatch.setattr(rt, "_kept", False)
    with rt.kept_memory():  # a library call: never the arena limit, which could not be undone on exit
        pass
    assert calls == [True, False]


_SCOPE_PROBE = _MALLINFO + textwrap.dedent(
    """
    def mmapped(mib):
        x = torch.ones(mib << 18)  # mib MiB of float32
        n = libc.mallinfo2().hblkhd
        del x
        return int(n >= (mib << 20))

    modes = [allocator_mode()]
    with kept_memory():
        with kept_memory():  # nested: free
            modes.append(allocator_mode())
            inside = mmapped(64)
        modes.append(allocator_mode())
    modes.append(allocator_mode())
    # after: a block bigger than the heap kept inside (a smaller one may reuse that free space)
    print(" ".join(modes), inside, mmapped(128))
    """
)


@needs_glibc
@pytest.mark.parametrize("mode", ["keep", "system"])
def test_library_calls_keep_memory_for_their_duration_only(mode):
    env = {**os.environ, "RSVISION_MALLOC": mode}
    out = subprocess.run([sys.executable, "-c", _SCOPE_PROBE], env=env, capture_output=True, text=True, check=True)
    *modes, inside, after = out.stdout.split()
    if mode == "keep":
        assert modes == ["system", "keep", "keep", "system"]
        assert (inside, after) == ("0", "1")  # served from the heap inside, glibc's fresh mmap again after
    else:
        assert modes == ["system"] * 4 and (inside, after) == ("1", "1")  # the opt-out holds


def test_windows_per_forward_defaults_to_one_on_a_cpu_and_keeps_explicit_values():
    import torch

    from rsvision.errors import ConfigError
    from rsvision.runtime import windows_per_forward

    assert windows_per_forward(None, "cpu") == 1 and windows_per_forward(None, torch.device("cpu")) == 1
    assert windows_per_forward(None, "cuda:1") == 2 and windows_per_forward(None, torch.device("cuda", 0)) == 2
    assert windows_per_forward(3, "cpu") == 3 and windows_per_forward(None) == 1
    with pytest.raises(ConfigError, match="--batch-size"):
        windows_per_forward(0, "cpu")


def test_scene_prediction_gives_the_same_detections_one_window_or_several_per_forward():
    """The CPU default (1 window per forward) changes memory, not results."""
    import torch

    import rsvision.models.detectors  # noqa: F401
    from rsvision.models import build_model
    from rsvision.tasks.predict_scene import predict_scene

    torch.manual_seed(0)
    model = build_model({"type": "OrientedRCNN", "backbone": "lsknet_t", "num_classes": 2, "class_names": ["a", "b"],
                         "fpn_channels": 16, "fc_channels": 32, "backbone_kwargs": {"embed_dims": [8, 8, 16, 16]}})
    img = torch.rand(3, 150, 170) * 255
    out = [predict_scene(model.eval(), img, [128.0] * 3, [64.0] * 3, ["a", "b"], window=64, overlap=16, batch_size=b)
           for b in (None, 3)]
    assert out[0].stats["windows"] == out[1].stats["windows"] > 3
    torch.testing.assert_close(out[0].boxes, out[1].boxes, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(out[0].scores, out[1].scores, rtol=1e-4, atol=1e-5)
