"""rsvision.models.fast: the fast paths compute the plain backbones' function.

Tolerances (fp32, on the golden weights, which move every BN / layer scale off its init so
that folding mistakes show): on every stage output, max abs difference <= 1e-4 and max
*max-normalised* relative difference ``max|fast - ref| / max|ref|`` <= 1e-4 (per-element
``|d| / |ref|`` is meaningless where the reference crosses zero). Gradients: the same
max-normalised relative difference per parameter tensor, <= 1e-4.
"""
from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import rsvision  # noqa: F401  (registers the models)
import rsvision.models.fast as fast
from rsvision.models import load_checkpoint
from rsvision.models.fast import (
    PhaseDilatedConv2d,
    dilated_depthwise_conv,
    optimize_for_inference,
    optimize_for_training,
)
from tests.conftest import shared_path

FAMILIES = ["lsknet_t", "haksnet_t"]
TOL = 1e-4


def _golden(name):
    g = torch.load(shared_path("golden", f"{name}_golden.pt"), weights_only=True)
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in g["state_dict"].items()}
    return g, sd


def _model(name, sd, **kw):
    m = timm.create_model(name, **kw).eval()
    report = load_checkpoint(m, sd)
    assert not report.unexpected, report.summary()
    return m


def _check(outs, refs, tol=TOL, what=""):
    assert len(outs) == len(refs)
    for i, (o, r) in enumerate(zip(outs, refs)):
        assert o.shape == r.shape, (what, i, o.shape, r.shape)
        d = (o - r).abs().max().item()
        rel = d / r.abs().max().item()
        assert d <= tol and rel <= tol, f"{what} stage {i}: abs {d:.2e} rel {rel:.2e}"


@pytest.fixture(scope="module", params=FAMILIES)
def golden(request):
    g, sd = _golden(request.param)
    return request.param, g, sd


@pytest.fixture(scope="module")
def plain_fast(golden):
    """(plain eval backbone, its optimize_for_inference copy) on the golden weights."""
    name, g, sd = golden
    plain = _model(name, sd, num_classes=0)
    return plain, optimize_for_inference(plain)


def test_golden_every_stage_plain_and_features_only(golden, plain_fast):
    name, g, sd = golden
    plain, f = plain_fast
    feat = _model(name, sd, features_only=True, out_indices=(0, 1, 2, 3))
    ffeat = optimize_for_inference(feat)
    with torch.inference_mode():
        for x, refs in zip(g["inputs"], g["outputs"]):
            _check(f.forward_intermediates(x, intermediates_only=True), refs, what=f"{name} {tuple(x.shape)}")
            _check(ffeat(x), refs, what=f"{name} features_only {tuple(x.shape)}")


def test_borders_match_where_bn_meets_zero_padding(golden, plain_fast):
    """The outermost 2 rows / columns of every stage output, checked on their own.

    HAKSNet's pre-norm BN feeds zero-padded depthwise convs; a BN folded into such a conv puts
    BN(0) = shift into the padding, wrong exactly here. This also shows that hazard is real on
    these weights (a naive fold differs on the border, not inside), so the check can fail.
    """
    name, g, sd = golden
    plain, f = plain_fast
    x = g["inputs"][1]
    with torch.inference_mode():
        outs = f.forward_intermediates(x, intermediates_only=True)
    for o, r in zip(outs, g["outputs"][1]):
        ring = torch.ones_like(r, dtype=torch.bool)
        ring[..., 2:-2, 2:-2] = False
        _check([o[ring]], [r[ring]], what=f"{name} border")
    if name.startswith("haksnet"):
        blk = plain.block1[0]
        u_in = torch.randn(1, blk.norm1.num_features, 12, 14)
        conv = blk.attn.spatial_mix.dw_conv3
        s, t = fast.inference._bn_affine(blk.norm1)
        with torch.no_grad():
            ref = conv(blk.norm1(u_in))
            w = conv.weight * s.float()[:, None, None, None]
            b = conv.bias + (conv.weight.sum((1, 2, 3)) * t.float())
            naive = F.conv2d(u_in, w, b, padding=1, groups=conv.groups)
        inner = (naive - ref)[..., 1:-1, 1:-1].abs().max()
        border = (naive - ref).abs().max()
        assert inner < 1e-5 and border > 1e-2, (inner, border)


def test_classifier_wrapper_and_original_untouched(golden):
    name, g, sd = golden
    torch.manual_seed(0)
    m = _model(name, sd, num_classes=7)  # head is not in the golden file: random, seeded
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    types = [type(mod) for mod in m.modules()]
    f = optimize_for_inference(m)
    assert m.training and not f.training
    assert [type(mod) for mod in m.modules()] == types
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert all(p.requires_grad for p in m.parameters())
    m.eval()
    with torch.inference_mode():
        for x in g["inputs"]:
            _check([f(x)], [m(x)], what=f"{name} classifier logits")
    f.train()
    with pytest.raises(RuntimeError, match="eval"):
        f(g["inputs"][0])


@pytest.mark.parametrize(
    "name,shape", [("lsknet_t", (3, 3, 37, 53)), ("lsknet_t", (1, 4, 64, 31)), ("haksnet_t", (2, 3, 33, 35))]
)
def test_odd_sizes_batches_and_bands(name, shape):
    g, sd = _golden(name)
    torch.manual_seed(1)
    m = timm.create_model(name, num_classes=0, in_chans=shape[1]).eval()
    load_checkpoint(m, sd)  # stem adapted to 4 bands where needed
    f = optimize_for_inference(m)
    x = torch.randn(shape)
    with torch.inference_mode():
        _check(f.forward_intermediates(x, intermediates_only=True), m.forward_intermediates(x, intermediates_only=True))


def test_tiled_ffn_path(golden, plain_fast, monkeypatch):
    """Large inputs run the FFN in tiles (channel groups x row strips with a halo); force it on
    the golden inputs: 8-row strips cut the 25-row stage-1 map of input 1 (batch 2) into 4."""
    name, g, sd = golden
    monkeypatch.setattr(fast.inference, "_tiles_pay", lambda: True)  # whatever the allocator mode
    monkeypatch.setattr(fast.inference, "_CHUNK_BYTES", 4096)
    monkeypatch.setattr(fast.inference, "_TILE_BYTES", 1)
    monkeypatch.setattr(fast.inference, "_TILE_CHANNELS", 48)  # uneven last group too
    with torch.inference_mode():
        for x, refs in zip(g["inputs"], g["outputs"]):
            _check(plain_fast[1].forward_intermediates(x, intermediates_only=True), refs, what="tiled")


@pytest.mark.parametrize("mode,tiles", [("system", True), ("keep", False)])
def test_ffn_tiles_only_under_the_system_allocator(golden, plain_fast, monkeypatch, mode, tiles):
    """Kept memory: one call per conv (tiles would only add barriers); system: tiled."""
    monkeypatch.setattr(fast.inference, "allocator_mode", lambda: mode)
    monkeypatch.setattr(fast.inference, "_CHUNK_BYTES", 4096)
    monkeypatch.setattr(fast.inference, "_TILE_BYTES", 1)
    calls = []
    real = fast.inference._conv
    monkeypatch.setattr(fast.inference, "_conv", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.inference_mode():
        plain_fast[1].forward_intermediates(golden[1]["inputs"][1], intermediates_only=True)
    assert bool(calls) is tiles


def test_plain_aten_path_matches(golden, plain_fast, monkeypatch):
    """The path used on CUDA / in export (no oneDNN fusion) gives the same function."""
    name, g, sd = golden
    monkeypatch.setattr(fast.ops, "_MKLDNN", False)
    with torch.inference_mode():
        _check(plain_fast[1].forward_intermediates(g["inputs"][1], intermediates_only=True), g["outputs"][1])


@pytest.mark.parametrize("h,w", [(30, 27), (31, 29), (32, 28), (5, 4), (1, 2)])
@pytest.mark.parametrize("dilation,k", [(3, 7), (2, 5)])
def test_phase_dilated_conv_equals_dilated_conv(h, w, dilation, k):
    torch.manual_seed(0)
    c = 8
    x = torch.randn(2, c, h, w)
    wt, b = torch.randn(c, 1, k, k), torch.randn(c)
    ref = F.conv2d(x, wt, b, padding=dilation * (k // 2), dilation=dilation, groups=c)
    for inp in (x, x.contiguous(memory_format=torch.channels_last)):
        out = dilated_depthwise_conv(inp, wt, b, dilation)
        assert out.shape == ref.shape
        assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dilation,k,pad,hw", [(1, 3, 1, (9, 7)), (1, 5, 2, (8, 8)), (3, 7, 9, (10, 8))])
@pytest.mark.parametrize("channels_last", [False, True])
def test_depthwise_grads_equal_conv2d(dilation, k, pad, hw, channels_last):
    """Our backward (input / weight grads from oneDNN, bias grad summed) against autograd of F.conv2d."""
    torch.manual_seed(0)
    c = 6
    x0 = torch.randn(2, c, *hw, dtype=torch.float64).float()
    if channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    w0, b0 = torch.randn(c, 1, k, k), torch.randn(c)
    gy = torch.randn(2, c, *hw)
    grads = []
    for fn in (
        lambda x, w, b: F.conv2d(x, w, b, 1, pad, dilation, c),
        lambda x, w, b: fast.depthwise_conv(x, w, b, pad, dilation),
        lambda x, w, b: dilated_depthwise_conv(x, w, b, dilation) if dilation > 1 else fast.depthwise_conv(x, w, b, pad),
    ):
        x, w, b = (t.clone().requires_grad_() for t in (x0, w0, b0))
        y = fn(x, w, b)
        y.backward(gy)
        grads.append((y.detach(), x.grad, w.grad, b.grad))
    for other in grads[1:]:
        for r, o in zip(grads[0], other):
            assert torch.allclose(r, o, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("k", [1, 3, 5, 7, 9])
@pytest.mark.parametrize("same", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_depthwise_weight_grad_against_a_loop(k, same, channels_last):
    """The 3x3-block weight gradient equals the obvious sum over taps (float64 and float32)."""
    torch.manual_seed(k)
    pad = k // 2 if same else 0
    x = torch.randn(2, 5, 11, 9 + k, dtype=torch.float64)
    Ho, Wo = x.shape[2] + 2 * pad - k + 1, x.shape[3] + 2 * pad - k + 1
    g = torch.randn(2, 5, Ho, Wo, dtype=torch.float64)
    xp = F.pad(x, (pad,) * 4)
    ref = torch.stack([
        torch.stack([(g * xp[:, :, i : i + Ho, j : j + Wo]).sum((0, 2, 3)) for j in range(k)], -1) for i in range(k)
    ], 1).unsqueeze(1)  # (C, 1, k, k)
    for dt, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        xs, gs = x.to(dt), g.to(dt)
        if channels_last:
            xs, gs = xs.contiguous(memory_format=torch.channels_last), gs.contiguous(memory_format=torch.channels_last)
        out = fast.depthwise_weight_grad(gs, xs, k, pad)
        assert out.shape == (5, 1, k, k) and out.dtype == dt
        assert (out.double() - ref).abs().max().item() <= tol * ref.abs().max().item()


def test_inplace_backward_gelu_grads_and_reuse_guard():
    torch.manual_seed(0)
    h0, gy = torch.randn(2, 5, 7, 3, dtype=torch.float64), torch.randn(2, 5, 7, 3, dtype=torch.float64)
    grads = []
    for act in (nn.GELU(), fast.InplaceBackwardGELU()):
        x = h0.clone().requires_grad_()
        h = x * 1.5  # a non-leaf pre-activation, as after a conv
        act(h).backward(gy)
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-12)
    # its buffer now holds the gradient: a second backward through the graph must fail, not lie
    x = h0.clone().requires_grad_()
    y = fast.InplaceBackwardGELU()(x * 1.5)
    y.backward(gy, retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward(gy)


def test_onnx_export_matches_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    name = "lsknet_t"
    g, sd = _golden(name)
    m = _model(name, sd, features_only=True, out_indices=(0, 1, 2, 3))
    f = optimize_for_inference(m)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            f, (g["inputs"][0],), buf, dynamo=False, opset_version=17, input_names=["x"],
            dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}},
        )
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    for x, refs in zip(g["inputs"], g["outputs"]):  # the second input has other batch / odd size
        outs = sess.run(None, {"x": x.numpy()})
        _check([torch.from_numpy(np.asarray(o)) for o in outs], refs, what="onnxruntime")


def _grads(model, x):
    model.zero_grad(set_to_none=True)
    feats = model.forward_intermediates(x, intermediates_only=True)
    wts = torch.linspace(0.5, 1.5, 4)
    loss = sum(w * (f.tanh() * torch.linspace(-1, 1, f.shape[-1])).mean() for w, f in zip(wts, feats))
    loss.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("recompute", [False, True])
def test_training_path_gradients_and_bn(golden, recompute, monkeypatch):
    name, g, sd = golden
    plain = _model(name, sd, num_classes=0).train()
    monkeypatch.setattr(fast.training, "_TRAIN_TILE_BYTES", 4096)  # several (batch, channel) tiles
    monkeypatch.setattr(fast.training, "_TRAIN_TILE_CHANNELS", 48)
    fast_m = optimize_for_training(plain, recompute_ffn=recompute)
    assert any(isinstance(mod, (fast.TiledMlp, fast.TiledPartialConvMlp)) for mod in fast_m.modules()) == recompute
    assert fast_m is not plain and list(fast_m.state_dict()) == list(plain.state_dict())
    if name.startswith("lsknet"):
        assert any(isinstance(mod, PhaseDilatedConv2d) for mod in fast_m.modules())
    if not recompute:
        assert any(type(mod) in (fast.training.PooledMlp, fast.training.PooledPartialConvMlp) for mod in fast_m.modules())
    assert any(isinstance(mod, fast.DepthwiseConv2d) for mod in fast_m.modules())
    assert any(isinstance(mod, fast.InplaceBackwardGELU) for mod in fast_m.modules())
    x = g["inputs"][1]  # 2 x 100 x 130: stage widths not multiples of 3 (phase padding path)
    gp = _grads(plain, x)
    gf = _grads(fast_m, x.contiguous(memory_format=torch.channels_last))
    assert gp.keys() == gf.keys()
    gmax = max(v.abs().max().item() for v in gp.values())
    for k in gp:
        d = (gf[k] - gp[k]).abs().max().item()
        if k.startswith("patch_embed") and k.endswith("proj.bias"):
            # a conv bias right before a train-mode BN has gradient exactly 0 (the batch mean
            # removes it): both sides are float noise, ~1e-9 of the largest gradient
            assert max(d, gp[k].abs().max().item()) <= 1e-6 * gmax, k
            continue
        scale = gp[k].abs().max().item()
        assert d <= TOL * scale + 1e-12, f"{k}: {d:.2e} vs max {scale:.2e}"
    sp, sf = plain.state_dict(), fast_m.state_dict()
    for k in sp:  # train-mode BN: the same running statistics updates
        if "running" in k:
            assert torch.allclose(sp[k], sf[k], rtol=1e-5, atol=1e-6), k
    # in place keeps the very same Parameter objects (an existing optimizer keeps working)
    params = list(plain.parameters())
    same = optimize_for_training(plain, inplace=True)
    assert same is plain and all(a is b for a, b in zip(params, same.parameters()))


# CUDA equivalence (TF32 off, every golden input, features_only, training grads): tests/test_cuda.py


def test_rejects_other_models():
    with pytest.raises(TypeError):
        optimize_for_inference(nn.Conv2d(3, 3, 1))
