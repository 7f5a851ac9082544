"""SkySense V2: each module against a slow obvious reference, shapes per modality combination, experts, checkpoints."""
from __future__ import annotations

import itertools
import math

import pytest
import timm
import torch
import torch.nn.functional as F

from rsvision.errors import RSVisionError
from rsvision.models.backbones._skysense_blocks import AdaptivePatchMerging, Block, MoEMlp, WindowMSA
from rsvision.models.backbones.skysense_v2 import SkySenseV2


def tiny(**kw) -> SkySenseV2:
    cfg = dict(embed_dim=16, depths=(1, 1, 2, 2), head_dim=8, window=4, num_classes=3)
    return SkySenseV2(**{**cfg, **kw})


# -- window attention ---------------------------------------------------------------------------
def _reference_window_attention(m: WindowMSA, x: torch.Tensor) -> torch.Tensor:
    """Per-token loop in the grid's own coordinates: token (i, j) attends to the real tokens of its window.

    A shifted partition is the regular one displaced by s (Swin paper, Fig. 2): row i lies in window
    floor((i - s) / ws), so the partial windows at the borders are windows of their own.
    """
    a = m.attn
    b, h, w, c = x.shape
    ws, nh = m.window, a.num_heads
    sh, sw = m.shifts(h, w)
    qkv = F.linear(x, a.qkv.weight, torch.cat([a.q_bias, torch.zeros_like(a.q_bias), a.v_bias]))
    q, k, v = qkv.view(b, h, w, 3, nh, c // nh).unbind(3)
    scale = torch.clamp(a.logit_scale, max=math.log(100.0)).exp().view(nh)

    def win(i, j):
        return (i - sh) // ws, (j - sw) // ws

    def log_coord(d):
        d = d * 8 / (ws - 1)
        return math.copysign(math.log2(abs(d) + 1) / 3, d)

    out = torch.zeros(b, h, w, c)
    for i, j in itertools.product(range(h), range(w)):
        keys = [(p, r) for p, r in itertools.product(range(h), range(w)) if win(p, r) == win(i, j)]
        coords = torch.tensor([[log_coord(i - p), log_coord(j - r)] for p, r in keys])
        bias = 16 * torch.sigmoid(a.cpb_mlp(coords))  # (K, heads)
        kk = torch.stack([k[:, p, r] for p, r in keys], 1)  # (B, K, heads, d)
        vv = torch.stack([v[:, p, r] for p, r in keys], 1)
        logits = torch.einsum("bhd,bkhd->bhk", F.normalize(q[:, i, j], dim=-1), F.normalize(kk, dim=-1))
        attn = (logits * scale[None, :, None] + bias.T[None]).softmax(-1)
        out[:, i, j] = torch.einsum("bhk,bkhd->bhd", attn, vv).reshape(b, c)
    return a.proj(out)


@pytest.mark.parametrize("h,w,shift", [(8, 8, False), (8, 8, True), (7, 10, True), (3, 9, True), (5, 6, False)])
def test_window_attention_matches_a_per_token_loop(h, w, shift):
    torch.manual_seed(0)
    m = WindowMSA(dim=8, num_heads=2, window=4, shift=shift)
    with torch.no_grad():  # non-trivial biases and scales
        m.attn.q_bias.normal_()
        m.attn.v_bias.normal_()
        m.attn.logit_scale.uniform_(0.5, 3.0)
    x = torch.randn(2, h, w, 8)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _reference_window_attention(m, x), atol=1e-5, rtol=1e-4)


def test_shifted_windows_differ_from_plain_and_a_short_axis_is_not_shifted():
    m = WindowMSA(dim=8, num_heads=2, window=4, shift=True)
    assert m.shifts(8, 3) == (2, 0) and m.shifts(4, 4) == (0, 0)
    plain = WindowMSA(dim=8, num_heads=2, window=4, shift=False)
    plain.load_state_dict(m.state_dict())
    x = torch.randn(1, 8, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(m(x), plain(x), atol=1e-4)


# -- adaptive patch merging ---------------------------------------------------------------------
def test_patch_merging_both_paths_match_loops():
    torch.manual_seed(0)
    pm = AdaptivePatchMerging(3, 5)
    x = torch.randn(2, 4, 6, 3)
    wt = pm.reduction.weight  # (5, 12)
    ref_merge = torch.zeros(2, 2, 3, 5)
    for i, j in itertools.product(range(2), range(3)):
        group = [x[:, 2 * i + dr, 2 * j + dc] for dr, dc in ((0, 0), (1, 0), (0, 1), (1, 1))]
        ref_merge[:, i, j] = torch.cat(group, -1) @ wt.T
    blocks = [wt[:, 3 * g:3 * g + 3] for g in range(4)]
    avg = sum(blocks) / 4
    ref_keep = torch.zeros(2, 4, 6, 5)
    for i, j in itertools.product(range(4), range(6)):
        ref_keep[:, i, j] = x[:, i, j] @ avg.T
    with torch.no_grad():
        torch.testing.assert_close(pm(x, merge=True), pm.norm(ref_merge))
        torch.testing.assert_close(pm(x, merge=False), pm.norm(ref_keep))
        # one parameter set: merging a 2x2-repeated map is the kept path (a LayerNorm without eps removes the 4)
        up = x.repeat_interleave(2, 1).repeat_interleave(2, 2)
        pm.norm.eps = 0.0
        torch.testing.assert_close(pm(up, merge=True), pm(x, merge=False), atol=1e-4, rtol=1e-4)
    assert pm(torch.randn(1, 5, 7, 3), merge=True).shape == (1, 3, 4, 5)  # odd grids are padded up


# -- prompt tokens ------------------------------------------------------------------------------
def test_prompts_inserted_before_the_stage_and_dropped_after():
    torch.manual_seed(0)
    m = tiny().eval()
    assert [sorted(p.keys()) for p in m.prompts] == [[], [], ["hr", "s1", "s2"], ["hr", "s1", "s2"]]
    assert all(p.shape == (4, m.embed_dims[i]) for i in (2, 3) for p in m.prompts[i].values())
    x = torch.randn(2, 3, 5, m.embed_dims[1])
    out = m.run_stage(2, "s2", x, [])
    assert out.shape == (2, 3, 5, m.embed_dims[2])  # s2 keeps its grid; the 4 prompt rows are gone
    # reference: explicit concatenation, the blocks, then the prompt rows dropped
    y = m.merges[2](x, merge=False).reshape(2, 15, -1)
    seq = torch.cat([m.prompts[2]["s2"].expand(2, -1, -1), y], 1)
    for blk in m.stages[2]:
        seq = blk(seq)
    torch.testing.assert_close(out, seq[:, 4:].reshape(2, 3, 5, -1))
    # the prompts change the tokens (attention reads them); only the own modality's prompts do
    m.zero_grad()
    m.run_stage(2, "s2", x, []).square().sum().backward()
    assert m.prompts[2]["s2"].grad.abs().sum() > 0
    assert m.prompts[2]["s1"].grad is None and m.prompts[2]["hr"].grad is None


# -- mixture of experts -------------------------------------------------------------------------
def test_top1_routing_matches_a_per_token_loop():
    torch.manual_seed(0)
    moe = MoEMlp(6, 12, num_experts=4)
    x = torch.randn(3, 5, 6)
    with torch.no_grad():
        out = moe(x)
        for t in range(3):
            for s in range(5):
                p = torch.softmax(moe.gate.weight @ x[t, s], -1)
                e = int(p.argmax())
                torch.testing.assert_close(out[t, s], p[e] * moe.experts[e](x[t, s]))


def test_balance_loss_hand_computed():
    moe = MoEMlp(4, 8, num_experts=4)
    with torch.no_grad():
        moe.gate.weight.copy_(torch.eye(4) * math.log(3))  # own expert: 3 / 6, the others 1 / 6 each
    x = torch.eye(4)[[0, 0, 1, 2]]  # f = (1/2, 1/4, 1/4, 0); P = (1/3, 1/4, 1/4, 1/6)
    moe(x)
    torch.testing.assert_close(moe.last_balance_loss, torch.tensor(7 / 6))
    moe(torch.eye(4))  # perfectly balanced: 1
    torch.testing.assert_close(moe.last_balance_loss, torch.tensor(1.0))


def test_moe_in_the_last_six_blocks_and_aux_loss():
    m = tiny()
    flags = [blk.is_moe for stage in m.stages for blk in stage]
    assert flags == [True] * 6 and len(m.moe_layers()) == 6
    m2 = tiny(depths=(2, 2, 4, 2))
    assert [blk.is_moe for stage in m2.stages for blk in stage] == [False] * 4 + [True] * 6
    m2({"s2": torch.randn(1, 10, 16, 16), "s1": torch.randn(1, 2, 16, 16)})
    assert m2.aux_loss.ndim == 0 and m2.aux_loss.requires_grad and 1.0 <= m2.aux_loss.item() <= 8.0


def test_gradients_reach_every_expert_over_a_few_steps():
    torch.manual_seed(0)
    m = tiny()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    seen = {(li, e): 0.0 for li in range(6) for e in range(8)}
    for step in range(5):
        x = {"hr": torch.randn(4, 3, 96, 96), "s2": torch.randn(4, 10, 32, 32)}
        loss = F.cross_entropy(m(x), torch.tensor([0, 1, 2, 0])) + 0.1 * m.aux_loss
        opt.zero_grad()
        loss.backward()
        for li, layer in enumerate(m.moe_layers()):
            for e, expert in enumerate(layer.experts):
                g = expert.fc1.weight.grad
                seen[(li, e)] += 0.0 if g is None else float(g.abs().sum())
        opt.step()
    assert all(v > 0 for v in seen.values()), [k for k, v in seen.items() if v == 0]


# -- the whole backbone -------------------------------------------------------------------------
SIZES = {"hr": (3, 64, 48), "s2": (10, 32, 32), "s1": (2, 32, 32)}


@pytest.mark.parametrize("mods", [c for r in (1, 2, 3) for c in itertools.combinations(SIZES, r)])
def test_feature_shapes_for_every_modality_combination(mods):
    torch.manual_seed(0)
    m = tiny().eval()
    x = {k: torch.randn(2, *SIZES[k]) for k in mods}
    with torch.no_grad():
        feats = m.forward_intermediates(x, intermediates_only=True)
    grids = [(max(math.ceil(SIZES[k][1] / 4 / 2 ** i) for k in mods), max(math.ceil(SIZES[k][2] / 4 / 2 ** i) for k in mods))
             for i in range(4)]
    assert [tuple(f.shape) for f in feats] == [(2, c, *g) for c, g in zip(m.embed_dims, grids)]
    assert all(torch.isfinite(f).all() for f in feats)
    assert m(x).shape == (2, 3)


def test_fusion_is_the_mean_of_the_resized_modality_maps():
    torch.manual_seed(0)
    m = tiny().eval()
    s2, s1 = torch.randn(1, 10, 32, 32), torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        both = m.forward_intermediates({"s2": s2, "s1": s1}, intermediates_only=True)
        a = m.forward_intermediates({"s2": s2}, intermediates_only=True)
        b = m.forward_intermediates({"s1": s1}, intermediates_only=True)
    for f, fa, fb in zip(both, a, b):
        torch.testing.assert_close(f, (fa + fb) / 2)


def test_plain_tensor_input_and_band_checks():
    m = tiny()
    assert m.input_modality == "hr"
    assert tiny(in_chans=10).input_modality == "s2" and tiny(in_chans=2).input_modality == "s1"
    four = tiny(in_chans=4)
    assert four.input_modality == "hr" and four.modalities["hr"] == ("band_1", "band_2", "band_3", "band_4")
    both = tiny(input_modality="s2+s1", in_chans=12)
    with torch.no_grad():
        x = torch.randn(1, 12, 16, 16)
        torch.testing.assert_close(both(x), both({"s2": x[:, :10], "s1": x[:, 10:]}))
    with pytest.raises(RSVisionError, match=r"'s2' expects 10 bands.*\(1, 4, 16, 16\)"):
        m({"s2": torch.randn(1, 4, 16, 16)})
    with pytest.raises(RSVisionError, match=r"'hr' expects 3 bands"):
        m(torch.randn(1, 5, 16, 16))
    with pytest.raises(RSVisionError, match="unknown modality 'lidar'"):
        m({"lidar": torch.randn(1, 1, 16, 16)})
    with pytest.raises(RSVisionError, match="input_modality"):
        tiny(input_modality="s2+s1", in_chans=3)


def test_features_only_through_timm_and_a_segmentor():
    from rsvision.models import build_model

    fo = timm.create_model("skysense_v2_tiny", features_only=True, in_chans=10)
    assert fo.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = fo(torch.randn(1, 10, 120, 120))  # a BigEarthNet S2 patch
    assert [f.shape[-1] for f in feats] == [30, 15, 8, 4]
    seg = build_model({"type": "Segmentor", "backbone": "skysense_v2_tiny", "num_classes": 4, "in_chans": 2,
                       "decoder": "upernet", "channels": 16})
    with torch.no_grad():
        assert seg(torch.randn(1, 2, 64, 64)).shape == (1, 4, 64, 64)
    change = build_model({"type": "SiameseChange", "backbone": "skysense_v2_tiny", "num_classes": 2, "in_chans": 3,
                          "channels": 16})
    det = build_model({"type": "OrientedRCNN", "backbone": "skysense_v2_tiny", "num_classes": 2, "fpn_channels": 16,
                       "fc_channels": 32, "rpn": {"nms_pre": 50, "max_per_img": 20}, "rcnn": {"max_per_img": 10}}).eval()
    with torch.no_grad():
        assert change(torch.randn(1, 2, 3, 64, 64)).shape == (1, 2, 64, 64)
        assert set(det(torch.randn(1, 3, 64, 64))[0]) >= {"boxes", "scores", "labels"}
    part = timm.create_model("skysense_v2_tiny", features_only=True, out_indices=(1, 2))
    assert part.feature_info.reduction() == [8, 16] and len(part.model.stages) == 3  # stage 4 pruned


def test_checkpoint_round_trip(tmp_path):
    from rsvision.models import load_checkpoint

    torch.manual_seed(0)
    m = timm.create_model("skysense_v2_tiny", num_classes=4).eval()
    path = tmp_path / "skysense.pth"
    torch.save({"state_dict": m.state_dict()}, path)
    again = timm.create_model("skysense_v2_tiny", num_classes=4).eval()
    again.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    x = {"hr": torch.randn(1, 3, 32, 32), "s1": torch.randn(1, 2, 32, 32)}
    with torch.no_grad():
        torch.testing.assert_close(again(x), m(x), rtol=0, atol=0)
        fo = timm.create_model("skysense_v2_tiny", features_only=True)
        report = load_checkpoint(fo, path)
        assert not report.missing
        torch.testing.assert_close(fo(x)[-1], m.forward_features(x), rtol=0, atol=0)


def test_base_parameter_count_on_the_meta_device():
    """The paper reports ~665M; ours counts every expert (1.99 B) and 655 M active per token (one expert)."""
    with torch.device("meta"):
        b = timm.create_model("skysense_v2_base", num_classes=0)
    assert b.embed_dims[0] == 352 and all(p.is_meta for p in b.parameters())
    total = sum(p.numel() for p in b.parameters())
    experts = sum(p.numel() for layer in b.moe_layers() for p in layer.experts.parameters())
    active = total - experts + experts // 8
    assert (total, active) == (1_987_540_066, 654_930_018)
    assert abs(active / 665e6 - 1) < 0.02


def test_declared_modalities_are_never_redeclared():
    mods = {"s2": ["B02", "B03", "B04", "B08"], "s1": ["VV", "VH"]}
    m = tiny(modalities=mods, in_chans=3)  # timm's default in_chans: the first modality
    assert m.input_modality == "s2" and m.modalities["s2"] == ("B02", "B03", "B04", "B08")
    assert tiny(modalities=mods, in_chans=2).input_modality == "s1"
    with pytest.raises(RSVisionError, match="in_chans=5"):
        tiny(modalities=mods, in_chans=5)
