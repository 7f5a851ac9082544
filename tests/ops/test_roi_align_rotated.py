"""RoIAlignRotated against a sample-by-sample loop of mmcv's kernel semantics, and its gradient."""
from __future__ import annotations

import math

import pytest
import torch

from rsvision.ops import RoIAlignRotated, roi_align_rotated
from tests.ops._rotated_reference import roi_align_rotated_loop


def _rois(n, gen, H, W, scale):
    b = torch.randint(0, 2, (n, 1), generator=gen).double()
    c = torch.rand(n, 2, generator=gen, dtype=torch.float64) * torch.tensor([W, H]) / scale
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 40 + 0.5
    a = (torch.rand(n, 1, generator=gen, dtype=torch.float64) - 0.5) * 2 * math.pi
    return torch.cat([b, c, wh, a], 1)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("clockwise", [True, False])
@pytest.mark.parametrize("sr", [0, 2])
def test_matches_loop_reference(aligned, clockwise, sr):
    gen = torch.Generator().manual_seed(2)
    feats = torch.randn(2, 3, 12, 17, generator=gen, dtype=torch.float64)
    rois = _rois(8, gen, 12, 17, 0.5)
    rois[0, 1:3] = torch.tensor([-4.0, -3.0])  # partly outside
    rois[1, 4] = 0.0  # h = 0: no adaptive samples
    out = roi_align_rotated(feats, rois, (3, 4), 0.5, sr, aligned, clockwise)
    ref = roi_align_rotated_loop(feats, rois, (3, 4), 0.5, sr, aligned, clockwise)
    assert out.shape == (8, 3, 3, 4)
    assert torch.allclose(out, ref, atol=1e-10)


def test_gradcheck():
    gen = torch.Generator().manual_seed(4)
    feats = torch.randn(1, 2, 6, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 6.0, 5.0, 7.3, 4.1, 0.4], [0, 9.0, 7.0, 5.2, 9.9, -1.1]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: roi_align_rotated(f, rois, 2, 0.5, 2, True, True), (feats,))


def test_module_and_aliases():
    m = RoIAlignRotated(out_size=7, sample_num=2, clockwise=True, spatial_scale=0.25)
    assert m.output_size == (7, 7) and m.sampling_ratio == 2
    feats = torch.randn(1, 4, 10, 10)
    out = m(feats, torch.tensor([[0, 20.0, 20, 16, 8, 0.3]]))
    assert out.shape == (1, 4, 7, 7)
    assert m(feats, torch.zeros(0, 6)).shape == (0, 4, 7, 7)
    assert "clockwise=True" in repr(m)


def test_axis_aligned_matches_plain_bilinear_mean():
    """A roi at angle 0 with one sample per bin samples the bin centres: check against grid_sample."""
    feats = torch.arange(64, dtype=torch.float64).view(1, 1, 8, 8)
    out = roi_align_rotated(feats, torch.tensor([[0, 4.0, 4.0, 4.0, 4.0, 0.0]], dtype=torch.float64), 2, 1.0, 1)
    # bin centres at (x, y) = 4 -0.5 +- 1 -> 2.5, 4.5 -> values 8*y + x
    expected = torch.tensor([[2.5 * 8 + 2.5, 2.5 * 8 + 4.5], [4.5 * 8 + 2.5, 4.5 * 8 + 4.5]], dtype=torch.float64)
    assert torch.allclose(out[0, 0], expected)
