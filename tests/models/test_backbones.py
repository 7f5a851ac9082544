"""LSKNet / HAKSNet: exact architecture (params, MACs, golden outputs) and the timm / checkpoint contract."""
from __future__ import annotations

import pytest
import timm
import torch

import rsvision  # noqa: F401  (registers the models)
from rsvision.errors import CheckpointError
from rsvision.models import load_checkpoint
from rsvision.models.complexity import count_macs, count_params
from tests.conftest import shared_path

NAMES = ["lsknet_t", "lsknet_s", "haksnet_t", "haksnet_s"]
PARAMS = {"lsknet_t": 3_990_190, "lsknet_s": 13_840_892, "haksnet_t": 4_696_364, "haksnet_s": 15_883_032}
PARAMS_HEAD = {"lsknet_t": 4_247_190, "lsknet_s": 14_353_892}
GMACS_1024 = {"lsknet_t": 18.64, "lsknet_s": 53.82, "haksnet_t": 22.96, "haksnet_s": 63.75}


def _golden(name):
    g = torch.load(shared_path("golden", f"{name}_golden.pt"), weights_only=True)
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in g["state_dict"].items()}
    return g, sd


@pytest.mark.parametrize("name", NAMES)
def test_exact_parameter_counts_and_macs(name):
    m = timm.create_model(name, num_classes=0)
    assert count_params(m) == PARAMS[name]
    if name in PARAMS_HEAD:
        assert count_params(timm.create_model(name)) == PARAMS_HEAD[name]
    assert round(count_macs(m, 1024) / 1e9, 2) == GMACS_1024[name]


@pytest.mark.parametrize("name", ["lsknet_t", "haksnet_t"])
def test_golden_equivalence_features_only(name):
    g, sd = _golden(name)
    m = timm.create_model(name, features_only=True, out_indices=(0, 1, 2, 3)).eval()
    report = load_checkpoint(m, sd)
    assert not report.missing and not report.unexpected, report.summary()
    assert len(report.loaded) == len(sd)
    with torch.no_grad():
        for x, ref in zip(g["inputs"], g["outputs"]):
            out = m(x)
            assert len(out) == 4
            for o, r in zip(out, ref):
                assert o.shape == r.shape
                torch.testing.assert_close(o, r, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["lsknet_t", "haksnet_t"])
def test_golden_equivalence_classifier_path_and_file(name, tmp_path):
    """The classifier model loads the backbone-only golden file with the head reported missing."""
    g, sd = _golden(name)
    m = timm.create_model(name, num_classes=10).eval()
    path = tmp_path / "official.pth"
    torch.save({"state_dict": {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}}, path)
    report = load_checkpoint(m, path)
    assert report.missing == ["head.bias", "head.weight"]
    assert not report.unexpected
    with torch.no_grad():
        x, ref = g["inputs"][1], g["outputs"][1]
        _, feats = m.forward_intermediates(x)
        for o, r in zip(feats, ref):
            torch.testing.assert_close(o, r, atol=1e-4, rtol=0)
        logits = m(x)
    assert logits.shape == (2, 10)


def test_golden_mismatch_is_detected():
    """A perturbed tensor moves the outputs beyond the tolerance: the golden test can fail."""
    g, sd = _golden("lsknet_t")
    sd = dict(sd)
    sd["block2.1.attn.spatial_gating_unit.conv_squeeze.weight"] = sd["block2.1.attn.spatial_gating_unit.conv_squeeze.weight"] * 1.1
    m = timm.create_model("lsknet_t", features_only=True).eval()
    load_checkpoint(m, sd)
    with torch.no_grad():
        out = m(g["inputs"][0])
    assert max((o - r).abs().max().item() for o, r in zip(out, g["outputs"][0])) > 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_feature_shapes_and_reductions(name):
    m = timm.create_model(name, features_only=True, out_indices=(0, 1, 2, 3), in_chans=13)
    assert m.feature_info.reduction() == [4, 8, 16, 32]
    assert m.feature_info.channels() == m.model.embed_dims
    with torch.no_grad():
        feats = m.eval()(torch.randn(1, 13, 200, 328))
    assert [f.shape[-2:] for f in feats] == [(50, 82), (25, 41), (13, 21), (7, 11)]
    with torch.no_grad():
        feats = m(torch.randn(2, 13, 256, 256))
    assert [tuple(f.shape[-2:]) for f in feats] == [(64, 64), (32, 32), (16, 16), (8, 8)]


def test_classifier_api_and_drop_path():
    m = timm.create_model("lsknet_t", num_classes=5, drop_path_rate=0.1, drop_rate=0.1)
    assert m.get_classifier().out_features == 5
    dps = [b.drop_path.drop_prob for b in m.block4]
    assert dps[-1] == pytest.approx(0.1)
    assert m.block1[0].drop_path.__class__.__name__ == "Identity"  # rate 0 at the first block
    x = torch.randn(2, 3, 64, 64)
    f = m.forward_features(x)
    assert f.shape == (2, 256, 2, 2)
    assert m.forward_head(f, pre_logits=True).shape == (2, 256)
    m.reset_classifier(3)
    assert m(x).shape == (2, 3)
    m.reset_classifier(0)
    assert m(x).shape == (2, 256)


def test_state_dict_round_trip_and_official_keys():
    g, sd = _golden("haksnet_t")
    m = timm.create_model("haksnet_t", num_classes=0)
    assert set(m.state_dict()) == set(sd)  # official key layout, nothing renamed
    m2 = timm.create_model("haksnet_t", num_classes=0)
    m2.load_state_dict(m.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(x), m2.eval()(x))


def _formats(sd):
    half = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    return {
        "plain": sd,
        "state_dict": {"state_dict": sd},
        "model": {"model": sd},
        "float16": half,
        "mmrotate": {
            "meta": {"CLASSES": ["a"], "mmcv_version": "1.7.2"},
            "state_dict": {**{f"backbone.{k}": v for k, v in sd.items()}, "neck.lateral_convs.0.conv.weight": torch.zeros(1)},
            "optimizer": {"state": {}, "param_groups": []},
        },
        "ema": {"state_dict": {**sd, **{"ema_" + k.replace(".", "_"): v for k, v in sd.items() if v.is_floating_point()}}},
        "lightning": {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "hyper_parameters": {"x": 1}},
        "haks_alt_names": {
            k.replace("spatial_mix.dw_conv3", "spatial_mix.conv1").replace("spatial_mix.spatial_fusion", "spatial_mix.conv_squeeze"): v
            for k, v in sd.items()
        },
    }


@pytest.mark.parametrize("fmt", list(_formats({}).keys()))
def test_every_checkpoint_format_loads_to_the_same_outputs(fmt, tmp_path):
    g, sd = _golden("haksnet_t")
    ckpt = _formats(sd)[fmt]
    path = tmp_path / f"{fmt}.pth"
    torch.save(ckpt, path)
    m = timm.create_model("haksnet_t", features_only=True).eval()
    report = load_checkpoint(m, path)
    assert not report.missing, report.summary()
    if fmt == "mmrotate":
        assert report.unexpected == ["neck.lateral_convs.0.conv.weight"]
        assert report.meta["CLASSES"] == ["a"]
    else:
        assert not report.unexpected, report.summary()
    with torch.no_grad():
        out = m(g["inputs"][0])
    atol = 1e-2 if fmt == "float16" else 1e-4  # float16 re-rounding of float16 values is exact; kept loose for safety
    for o, r in zip(out, g["outputs"][0]):
        torch.testing.assert_close(o, r, atol=atol, rtol=0)


def test_timm_pretrained_file_path(tmp_path):
    g, sd = _golden("lsknet_t")
    path = tmp_path / "lsknet_t_official.pth"
    torch.save({"state_dict": sd}, path)
    m = timm.create_model(
        "lsknet_t", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), features_only=True
    ).eval()
    with torch.no_grad():
        out = m(g["inputs"][0])
    for o, r in zip(out, g["outputs"][0]):
        torch.testing.assert_close(o, r, atol=1e-4, rtol=0)
    # classifier with the head missing from the file: loads, head keeps its init
    c = timm.create_model("lsknet_t", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=7)
    assert c.head.out_features == 7


def test_in_chans_adapts_stem(tmp_path):
    g, sd = _golden("lsknet_t")
    m = timm.create_model("lsknet_t", features_only=True, in_chans=13).eval()
    report = load_checkpoint(m, sd)
    assert report.adapted and "patch_embed1.proj.weight" in report.adapted[0]
    assert m.model.patch_embed1.proj.weight.shape[1] == 13
    # a 13-band input equal to the RGB image repeated gives features close to the RGB ones
    x = g["inputs"][0]
    with torch.no_grad():
        y = m(torch.cat([x] * 4 + [x[:, :1]], 1))
    assert y[0].shape == g["outputs"][0][0].shape


def test_shape_mismatch_raises_with_key_name():
    _, sd = _golden("lsknet_t")
    m = timm.create_model("lsknet_s", num_classes=0)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_checkpoint(m, sd)


def test_missing_or_corrupt_file_errors(tmp_path):
    m = timm.create_model("lsknet_t", num_classes=0)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(m, tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pth"):
        load_checkpoint(m, bad)


@pytest.mark.parametrize("name", ["lsknet_t", "haksnet_t"])
def test_torch_export_and_trace(name):
    m = timm.create_model(name, num_classes=0).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = m(x)
        traced = torch.jit.trace(m, x)
        torch.testing.assert_close(traced(x), ref)
        ep = torch.export.export(m, (x,))
        torch.testing.assert_close(ep.module()(x), ref)


def test_segmentation_models_pytorch_encoder():
    smp = pytest.importorskip("segmentation_models_pytorch")
    net = smp.Unet(encoder_name="tu-lsknet_t", encoder_weights=None, classes=3, in_channels=4, encoder_depth=4,
                   decoder_channels=(64, 32, 16, 8))
    with torch.no_grad():
        y = net.eval()(torch.randn(1, 4, 128, 128))
    assert y.shape == (1, 3, 128, 128)


def test_load_into_timm_feature_list_wrapper_with_flattened_names():
    """timm's FeatureListNet renames ``stages.0`` to ``stages_0``; load_checkpoint still matches."""
    src = timm.create_model("convnext_atto", num_classes=0).eval()
    m = timm.create_model("convnext_atto", features_only=True, out_indices=(0, 1, 2, 3)).eval()
    report = load_checkpoint(m, src.state_dict())
    assert not report.missing
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m(x)[-1], src.forward_features(x))
