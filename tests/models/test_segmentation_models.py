"""Segmentation / change models: shapes for any band count and odd sizes, fusion semantics, config errors."""
from __future__ import annotations

import pytest
import torch

from rsvision.errors import ConfigError
from rsvision.models.factory import build_model
from rsvision.models.segmentation import Segmentor, SiameseChangeModel



@pytest.mark.parametrize("decoder", ["upernet", "semantic_fpn"])
@pytest.mark.parametrize("backbone", ["test_convnext", "test_resnet"])
def test_segmentor_shapes_any_bands_odd_size(decoder, backbone):
    m = build_model({"type": "Segmentor", "backbone": backbone, "decoder": decoder, "num_classes": 5,
                     "in_chans": 6, "channels": 16}).eval()
    assert isinstance(m, Segmentor)
    # test_resnet has a stride-2 stem feature: the encoder keeps the 4/8/16/32 pyramid only.
    assert m.encoder.strides == [4, 8, 16, 32]
    with torch.no_grad():
        y = m(torch.randn(2, 6, 100, 130))
    assert y.shape == (2, 5, 100, 130)
    assert torch.isfinite(y).all()


def test_segmentor_gradients_reach_encoder():
    m = Segmentor("test_convnext", num_classes=3, channels=16)
    m(torch.randn(1, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in m.encoder.parameters() if p.requires_grad)


@pytest.mark.parametrize("fusion", ["diff", "concat"])
def test_change_model_shapes(fusion):
    m = build_model({"type": "SiameseChange", "backbone": "test_convnext", "fusion": fusion, "in_chans": 4,
                     "channels": 16}).eval()
    assert isinstance(m, SiameseChangeModel)
    with torch.no_grad():
        y = m(torch.randn(3, 2, 4, 64, 72))
    assert y.shape == (3, 2, 64, 72)


def test_diff_fusion_is_order_invariant_and_shares_weights():
    torch.manual_seed(0)
    m = SiameseChangeModel("test_convnext", fusion="diff", channels=16).eval()
    x = torch.randn(2, 2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(m(x), m(x.flip(1)), atol=1e-5)
        # identical dates -> identical features -> zero difference everywhere: output independent of content
        same = torch.stack([x[:, 0], x[:, 0]], 1)
        other = torch.stack([x[:, 1], x[:, 1]], 1)
        assert torch.allclose(m(same), m(other), atol=1e-5)
    assert len({id(m.encoder)}) == 1 and not hasattr(m, "encoder_b")


def test_change_model_rejects_single_images():
    m = SiameseChangeModel("test_convnext", channels=16)
    with pytest.raises(ValueError, match=r"\(B, 2, C, H, W\)"):
        m(torch.randn(1, 3, 64, 64))


def test_config_errors():
    with pytest.raises(ConfigError, match="decoder"):
        Segmentor("test_convnext", decoder="deeplab")
    with pytest.raises(ConfigError, match="fusion"):
        SiameseChangeModel("test_convnext", fusion="sum")
    with pytest.raises(ConfigError, match="backbone"):
        Segmentor("no_such_backbone_xyz")
    with pytest.raises(ConfigError, match="unknown segmentor option"):
        build_model({"type": "Segmentor", "backbone": "test_convnext", "colour": "red"})


def test_rsvision_backbone_as_encoder():
    import timm

    if "lsknet_t" not in timm.list_models("lsknet*"):
        pytest.skip("lsknet_t not registered")
    m = Segmentor("lsknet_t", num_classes=2, in_chans=3, channels=16).eval()
    assert m.encoder.strides == [4, 8, 16, 32]
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def test_lsknet_encoder_loads_official_weights_and_matches_golden():
    """An official-layout LSKNet-T checkpoint loads into the segmentation encoder (features_only
    wrapper) and reproduces the official stage outputs."""
    from tests.conftest import shared_path

    g = torch.load(shared_path("golden", "lsknet_t_golden.pt"), map_location="cpu", weights_only=True)
    m = Segmentor("lsknet_t", num_classes=2, channels=16).eval()
    report = m.encoder.load_pretrained({"state_dict": g["state_dict"]})
    assert report.meta["encoder_tensors_loaded"] == "478/478"
    with torch.no_grad():
        feats = m.encoder(g["inputs"][1])
    for f, ref in zip(feats, g["outputs"][1]):
        torch.testing.assert_close(f, ref.float(), atol=1e-4, rtol=0)
