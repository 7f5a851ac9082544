"""ViT + RVSA against MTP's official ``ViT_Win_RVSA_V3_WSZ7`` (``../shared/golden/mtp_vit_rvsa_golden.pt``).

A reduced official model (96 wide, 6 blocks, seeded random weights) and the four multi-scale maps it
computed; atol 1e-4 on every map, as the golden README states. Input 0 (224) has no padding, input 1
(256) pads the 16-token grid to 21, so together they pin the window geometry. The README's
``released_state_dict_shapes`` pins the full ViT-B / ViT-L key layout and parameter counts.
"""
from __future__ import annotations

import pytest
import timm
import torch

import rsvision.models  # noqa: F401  (registers vit_*_rvsa with timm)
from rsvision.models import load_checkpoint
from rsvision.models.backbones.vit_rvsa import ViTRVSA
from tests.conftest import shared_path

ATOL = 1e-4


@pytest.fixture(scope="module")
def golden():
    return torch.load(shared_path("golden", "mtp_vit_rvsa_golden.pt"), weights_only=True)


@pytest.fixture(scope="module")
def weights(golden):
    # stored as float16; every golden output was computed from exactly these values in float32
    return {k: v.float() if v.is_floating_point() else v for k, v in golden["state_dict"].items()}


def _model(golden, img_size: int) -> ViTRVSA:
    return ViTRVSA(**{**golden["config"], "img_size": img_size}, num_classes=0).eval()


def _maps(model, x) -> list[torch.Tensor]:
    with torch.no_grad():
        return model.forward_intermediates(x, intermediates_only=True)


def _close(got, want, what: str) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape, f"{what}[{i}]: {tuple(g.shape)} != {tuple(w.shape)}"
        err = (g - w).abs().max().item()
        assert err <= ATOL, f"{what}[{i}]: max |diff| {err:.3g} > {ATOL}"


def test_registered_tiny_variant_is_the_golden_layout(golden, weights):
    m = timm.create_model("vit_t_rvsa", num_classes=0, drop_path_rate=0.1)
    assert m.out_indices == golden["config"]["out_indices"] and m.interval == golden["config"]["interval"]
    assert m.load_state_dict(weights, strict=True)  # every official key, no extra
    assert [type(b.attn).__name__ for b in m.blocks] == ["RVSAttention"] * 2 + ["GlobalAttention"] + ["RVSAttention"] * 2 + ["GlobalAttention"]


def test_input0_224_matches_the_official_maps(golden, weights):
    m = _model(golden, 224)
    m.load_state_dict(weights, strict=True)
    _close(_maps(m, golden["inputs"][0]), golden["outputs"][0], "input0")


def test_block_outputs_and_window_predictions(golden, weights):
    """Every block's residual stream and block 0's raw (offset, scale, angle) regressions."""
    for i, size in enumerate(golden["input_img_size"]):
        m = _model(golden, size)
        sd = dict(weights)
        if i == 1:
            sd.update({k: v.float() for k, v in golden["resized_for_input1"].items()})
        m.load_state_dict(sd, strict=True)
        x = golden["inputs"][i]
        m.out_indices = list(range(len(m.blocks)))  # tap every block
        with torch.no_grad():
            blocks = m._tokens(x, len(m.blocks) - 1)[0]
            z = m.patch_embed(x).flatten(2).transpose(1, 2) + m.pos_embed
            z = m.blocks[0].norm1(z).transpose(1, 2).reshape(x.shape[0], -1, *m.grid)
            pad = (7 - m.grid[0] % 7) % 7
            z = torch.nn.functional.pad(z, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
            raw = {k: getattr(m.blocks[0].attn, k)(z) for k in ("sampling_offsets", "sampling_scales")}
            raw["sampling_angles"] = m.blocks[0].attn.sampling_angles(z)
        _close(blocks, golden["debug"]["block_outputs"][i], f"blocks(input{i})")
        want = golden["debug"]["block0_sampling_raw"][i]
        _close([raw[k] for k in want], [want[k] for k in want], f"block0 sampling (input{i})")


def test_input1_256_with_the_official_loader_tables(golden, weights):
    m = _model(golden, 256)
    m.load_state_dict({**weights, **{k: v.float() for k, v in golden["resized_for_input1"].items()}}, strict=True)
    _close(_maps(m, golden["inputs"][1]), golden["outputs"][1], "input1")


def test_load_checkpoint_resizes_224_weights_like_the_finetune_loader(golden, weights):
    """A 224 encoder file loaded into a 256 model: pos_embed and the global rel-pos tables resized
    bicubically exactly as ``RVSA_MTP.init_weights`` did; then the maps match."""
    m = _model(golden, 256)
    report = load_checkpoint(m, {"state_dict": golden["state_dict"], "epoch": 3, "iteration": 10})  # float16 file
    assert not report.missing and not report.unexpected, report.summary()
    assert len(report.adapted) == 5, report.adapted
    sd = m.state_dict()
    for k, v in golden["resized_for_input1"].items():
        assert sd[k].shape == v.shape
        assert (sd[k] - v.float()).abs().max().item() <= 1e-6, k
    _close(_maps(m, golden["inputs"][1]), golden["outputs"][1], "input1 via load_checkpoint")


def test_a_224_model_runs_at_256_as_if_loaded_there(golden, weights):
    """Other input sizes resize the tables on the fly: same maps as a model built and loaded at 256."""
    m = _model(golden, 224)
    m.load_state_dict(weights, strict=True)
    _close(_maps(m, golden["inputs"][1]), golden["outputs"][1], "input1 on the 224 model")


def test_detection_finetune_variant_without_global_rel_pos(golden, weights):
    """``RVSA_MTP_branches`` (MTP's detection finetuning) has no global rel-pos tables: our zero init
    of the missing tables reproduces it."""
    var = golden["variants"]["RVSA_MTP_branches"]
    ignored = set(var["ignored_state_dict_keys"])
    m = _model(golden, 224)
    report = load_checkpoint(m, {k: v for k, v in weights.items() if k not in ignored})
    assert set(report.missing) == ignored
    _close(_maps(m, golden["inputs"][0]), var["outputs_input0"], "RVSA_MTP_branches")


def _prefixed(weights, prefix):
    return {prefix + k: v for k, v in weights.items()}


@pytest.mark.parametrize("layout", ["encoder_file", "model_file", "ddp", "finetuned", "plain"])
def test_released_checkpoint_layouts_load_into_timm_features_only(golden, weights, layout):
    """MTP's Backbone Weights (``state_dict`` without prefix), Model Weights (``encoder.`` + decoders),
    ``module.``-prefixed DDP saves and OpenMMLab finetuned files (``backbone.``), into timm's
    ``features_only`` wrapper (``model.`` prefix)."""
    decoder = {"semsegdecoder.conv.weight": torch.zeros(4, 4), "rotdetdecoder.fpn.weight": torch.zeros(2)}
    ckpt = {
        "encoder_file": {"state_dict": golden["state_dict"], "epoch": 1, "iteration": 2, "loss_pretrain": 0.5},
        "model_file": {"state_dict": {**_prefixed(weights, "encoder."), **decoder}},
        "ddp": {"model": _prefixed(weights, "module.")},
        "finetuned": {"meta": {"epoch": 12}, "state_dict": {**_prefixed(weights, "backbone."), "decode_head.conv_seg.weight": torch.zeros(3)}},
        "plain": weights,
    }[layout]
    m = timm.create_model("vit_t_rvsa", features_only=True, drop_path_rate=0.1).eval()
    report = load_checkpoint(m, ckpt)
    assert not report.missing, report.summary()
    assert len(report.loaded) == len(weights)
    assert all(k.split(".")[0] in ("semsegdecoder", "rotdetdecoder", "decode_head") for k in report.unexpected)
    with torch.no_grad():
        _close(m(golden["inputs"][0]), golden["outputs"][0], f"features_only ({layout})")


@pytest.mark.parametrize("name,key", [("vit_b_rvsa", "vit_b_rvsa_img224"), ("vit_l_rvsa", "vit_l_rvsa_img448")])
def test_full_size_key_layout_and_parameter_count(golden, name, key):
    want = golden["released_state_dict_shapes"][key]
    with torch.device("meta"):
        m = timm.create_model(name, num_classes=0)
    got = {k: list(v.shape) for k, v in m.state_dict().items()}
    assert got == {k: list(v) for k, v in want.items()}
    assert sum(v.numel() for v in m.state_dict().values()) == sum(torch.Size(v).numel() for v in want.values())
