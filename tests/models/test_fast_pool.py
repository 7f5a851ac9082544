"""The pooled training FFN (``PooledMlp`` / ``PooledPartialConvMlp``) and its ``BufferPool``.

Whole-model gradients on the golden weights: ``test_fast.py::test_training_path_gradients_and_bn``.
Here: each FFN alone against its plain module (random, non-trivial weights, fp32 through oneDNN
and float64 through the plain fallback), several forwards before a backward, the one-backward
guard, and that the buffers are reused instead of re-allocated.
"""
from __future__ import annotations

import copy

import pytest
import torch

import rsvision.models.fast as fast
from rsvision.models.backbones.haksnet import PartialConvMlp
from rsvision.models.backbones.lsknet import Mlp
from rsvision.models.fast.pool import POOL, BufferPool

CL = torch.channels_last


def _pair(gated: bool, dtype=torch.float32):
    torch.manual_seed(0)
    plain = PartialConvMlp(16, 48) if gated else Mlp(12, 96)
    for p in plain.parameters():  # default init is too tame to show a swapped or missing term
        p.data.normal_(0, 0.3)
    plain = plain.to(dtype)
    pooled = copy.deepcopy(plain)
    pooled.__class__ = fast.PooledPartialConvMlp if gated else fast.PooledMlp
    return plain, pooled


def _grads(m, xs, gys):
    m.zero_grad(set_to_none=True)
    xs = [x.clone().requires_grad_() for x in xs]
    outs = [m(x) for x in xs]  # all forwards first (a siamese encoder), then one backward
    torch.autograd.backward(outs, gys)
    return [o.detach() for o in outs], [x.grad for x in xs] + [p.grad for p in m.parameters()]


def _close(a, b, tol):
    for u, v in zip(a, b):
        assert u.shape == v.shape
        assert (u - v).abs().max().item() <= tol * v.abs().max().item() + 1e-12


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pooled_ffn_matches_plain_with_two_forwards_per_backward(gated, dtype):
    plain, pooled = _pair(gated, dtype)
    c = 16 if gated else 12
    xs = [torch.randn(2, c, 13, 10, dtype=dtype), torch.randn(3, c, 7, 9, dtype=dtype)]
    gys = [torch.randn_like(x) for x in xs]
    ref_out, ref_g = _grads(plain, xs, gys)
    cl = [t.contiguous(memory_format=CL) for t in xs + gys]
    out, g = _grads(pooled, cl[:2], cl[2:])
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    _close(out, ref_out, tol)
    _close(g, ref_g, tol)


def test_pooled_ffn_is_sensitive_to_each_gradient():
    """The comparison above would notice a wrong term: perturb the pooled depthwise bias grad."""
    plain, pooled = _pair(False)
    x = torch.randn(2, 12, 9, 9)
    gy = torch.randn_like(x)
    _, ref_g = _grads(plain, [x], [gy])
    _, g = _grads(pooled, [x.contiguous(memory_format=CL)], [gy.contiguous(memory_format=CL)])
    names = ["x"] + [n for n, _ in pooled.named_parameters()]
    g[names.index("dwconv.dwconv.bias")] *= 1.001
    with pytest.raises(AssertionError):
        _close(g, ref_g, 1e-5)


def test_second_backward_raises_and_buffers_are_reused():
    _, pooled = _pair(False)
    x = torch.randn(2, 12, 16, 16).contiguous(memory_format=CL).requires_grad_()
    y = pooled(x)
    y.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        y.sum().backward()
    POOL.clear()
    seen = []
    for _ in range(3):
        pooled(x).sum().backward()
        seen.append(fast.training_buffer_bytes())
    assert seen[0] > 0 and seen[0] == seen[1] == seen[2]  # the same buffers again, no growth
    with torch.no_grad():  # no graph: the plain path, nothing taken from the pool
        pooled(x)
    pooled.requires_grad_(False)
    pooled(x.detach())  # grad mode on but nothing requires grad: no graph either
    pooled.requires_grad_(True)
    assert fast.training_buffer_bytes() == seen[0]
    y = pooled(x)
    del y  # a graph dropped before its backward: its buffers are freed, not counted as in use
    pooled(x).sum().backward()
    assert fast.training_buffer_bytes() == seen[0] and POOL._peak == seen[0]
    fast.release_training_buffers()
    assert fast.training_buffer_bytes() == 0


def test_buffer_pool_best_fit_and_bounded():
    pool = BufferPool()
    like = torch.empty(0)
    a, b = pool.take(100, like), pool.take(300, like)
    assert a.numel() == 100 and b.numel() == 300
    pool.give(a, b)
    c = pool.take(90, like)
    assert c.data_ptr() == a.data_ptr()  # the smallest buffer that fits
    d = pool.take(250, like)
    assert d.data_ptr() == b.data_ptr()
    e = pool.take(500, like)  # nothing fits: a new buffer
    pool.give(c, d, e)
    # peak use was 100 + 300 + 500 elements... 900 * 4 bytes: every free buffer is kept
    assert pool.free_bytes == 900 * 4
    for n in (700, 800, 600):  # varying sizes never hold more than the peak in use
        pool.give(pool.take(n, like))
        assert pool.free_bytes <= 900 * 4
    assert pool.take(10, torch.empty(0, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("gated", [False, True])
def test_pooled_ffn_falls_back_to_plain_ops(gated):
    """NCHW input or no grad: the plain forward, nothing taken from the pool."""
    plain, pooled = _pair(gated)
    x = torch.randn(2, 16 if gated else 12, 6, 5)
    POOL.clear()
    before = POOL._peak
    with torch.no_grad():
        torch.testing.assert_close(pooled(x.contiguous(memory_format=CL)), plain(x), rtol=1e-5, atol=1e-5)
    y = pooled(x.requires_grad_())  # NCHW: what CUDA and other layouts take too
    torch.testing.assert_close(y, plain(x), rtol=1e-5, atol=1e-5)
    assert POOL._peak == before
    pooled(x.detach().contiguous(memory_format=CL).requires_grad_())  # the pooled path does take buffers
    assert POOL._peak > before


def test_training_path_under_bf16_autocast_and_bf16_weights():
    """Autocast and low-precision models take the plain ops (the pooled FFN is fp32 / fp64 only)."""
    import timm

    import rsvision  # noqa: F401  (registers the models)

    torch.manual_seed(0)
    plain = timm.create_model("lsknet_t", num_classes=3).train()
    fast_m = fast.optimize_for_training(plain)
    x = torch.randn(2, 3, 64, 64)
    outs = []
    for m, xx in ((plain, x), (fast_m, x.contiguous(memory_format=CL))):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(xx)
        y.float().sum().backward()
        outs.append(y.float().detach())
    torch.testing.assert_close(outs[1], outs[0], rtol=0.05, atol=0.05)  # bf16: loose
    fast_bf16 = fast.optimize_for_training(plain).to(torch.bfloat16)
    fast_bf16(x.to(torch.bfloat16).contiguous(memory_format=CL)).float().sum().backward()
