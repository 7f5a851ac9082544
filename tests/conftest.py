"""Shared test fixtures: where ../shared lives and whether it must be there."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RSVISION_SHARED", ROOT.parent / "shared"))
REQUIRE_SHARED = os.environ.get("RSVISION_REQUIRE_SHARED", "0") == "1"

# One intra-op thread by default: small test tensors gain nothing from more, and on a shared or
# oversubscribed 2-core runner two OpenMP threads were measured 5-50x slower than one.
# RSVISION_TEST_THREADS overrides it.
torch.set_num_threads(int(os.environ.get("RSVISION_TEST_THREADS", "1")))


def shared_path(*parts: str) -> Path:
    """Path under ../shared; skips the test when absent (fails when RSVISION_REQUIRE_SHARED=1)."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        msg = f"shared data missing: {p}"
        if REQUIRE_SHARED:
            pytest.fail(msg + " (RSVISION_REQUIRE_SHARED=1)")
        pytest.skip(msg)
    return p


@pytest.fixture
def shared():
    return shared_path


def assert_same_last_checkpoint(full: Path, part: Path, global_step: int, prefix: str) -> None:
    """A resumed run (``part``) ended where the uninterrupted one (``full``) did, with its weights.

    ``prefix``: a state-dict key prefix that must be present (the part a test is about: MTP's heads,
    SSL's teacher), so an empty or foreign checkpoint cannot pass.
    """
    ca, cb = (torch.load(p / "last.ckpt", weights_only=True) for p in (full, part))
    assert ca["global_step"] == cb["global_step"] == global_step
    a, b = ca["state_dict"], cb["state_dict"]
    assert a.keys() == b.keys() and any(k.startswith(prefix) for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
