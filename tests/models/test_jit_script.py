"""TorchScript / torch.export of LSKNet and HAKSNet, with the official state-dict keys kept.

The stages keep their official attribute names (``patch_embed{i}``, ``block{i}.{j}``,
``norm{i}``), so ``torch.jit.script`` must work without a ModuleList of stages; these tests
pin both: scripted == eager (exactly, up to 1e-6) and the key layout of the golden files.
"""
from __future__ import annotations

import io
import re

import pytest
import timm
import torch

import rsvision  # noqa: F401  (registers the models)
from rsvision.models import load_checkpoint
from tests.conftest import shared_path

NAMES = ["lsknet_t", "lsknet_s", "haksnet_t", "haksnet_s"]
DEPTHS = {"lsknet_t": (3, 3, 5, 2), "lsknet_s": (2, 2, 4, 2), "haksnet_t": (3, 3, 5, 2), "haksnet_s": (2, 2, 4, 2)}
ATOL = 1e-6
# torch >= 2.9 marks torch.jit.script / save / load deprecated (FutureWarning); they still work.
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")


def _input(b=1, h=64, w=64):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(0))


def _same(a, b):
    a, b = ([a], [b]) if isinstance(a, torch.Tensor) else (list(a), list(b))
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape and torch.isfinite(y).all()
        torch.testing.assert_close(x, y, atol=ATOL, rtol=0)


def _model(name, **kwargs):
    """A seeded model with BatchNorm stats / affine and layer scales moved off their init."""
    torch.manual_seed(0)
    m = timm.create_model(name, **kwargs)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
                mod.weight.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
        for pname, p in m.named_parameters():
            if "layer_scale" in pname:
                p.copy_(torch.rand(p.shape, generator=g) * 0.1)  # larger ones overflow HAKSNet
    return m.eval()


@pytest.mark.parametrize("name", NAMES)
def test_script_classifier_equals_eager(name):
    m = _model(name)
    sm = torch.jit.script(m)
    x = _input()
    with torch.no_grad():
        ref = m(x)
        _same(sm(x), ref)
    assert ref.shape == (1, 1000)
    assert sorted(sm.state_dict()) == sorted(m.state_dict())


@pytest.mark.parametrize("name", NAMES)
def test_script_features_only_equals_eager(name):
    """timm's FeatureGetterNet wrapper scripts too (it calls our forward_intermediates)."""
    m = _model(name, features_only=True, out_indices=(0, 1, 2, 3))
    sm = torch.jit.script(m)
    x = _input()
    with torch.no_grad():
        ref = m(x)
        _same(sm(x), ref)
    assert [tuple(f.shape[-2:]) for f in ref] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert sorted(sm.state_dict()) == sorted(m.state_dict())


@pytest.mark.parametrize("name,out_indices", [("lsknet_t", (1,)), ("haksnet_t", (0, 2))])
def test_script_pruned_features_only(name, out_indices):
    """Stages pruned by prune_intermediate_layers are gone from the module and from the script."""
    m = _model(name, features_only=True, out_indices=out_indices)
    gone = tuple(f"model.{p}{i}." for i in range(max(out_indices) + 2, 5) for p in ("patch_embed", "block", "norm"))
    assert gone and not any(k.startswith(gone) for k in m.state_dict())
    sm = torch.jit.script(m)
    x = _input()
    with torch.no_grad():
        ref = m(x)
        _same(sm(x), ref)
    assert len(ref) == len(out_indices)


def test_script_with_drop_path_and_save_load():
    """DropPath / dropout compile; the scripted module survives torch.jit.save / load."""
    m = _model("haksnet_t", num_classes=7, drop_rate=0.1, drop_path_rate=0.1)
    sm = torch.jit.script(m)
    buf = io.BytesIO()
    torch.jit.save(sm, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    x = _input(2, 32, 48)
    with torch.no_grad():
        ref = m(x)
        _same(sm(x), ref)
        _same(loaded(x), ref)
    sm.train()
    assert sm(x).shape == (2, 7)  # the training branch (stochastic depth) runs


@pytest.mark.parametrize("name", ["lsknet_t", "haksnet_t"])
def test_script_on_golden_weights(name):
    """With the official weights loaded, the scripted features match the golden outputs."""
    g = torch.load(shared_path("golden", f"{name}_golden.pt"), weights_only=True)
    m = timm.create_model(name, features_only=True, out_indices=(0, 1, 2, 3)).eval()
    report = load_checkpoint(m, {k: v.float() if v.is_floating_point() else v for k, v in g["state_dict"].items()})
    assert not report.missing and not report.unexpected, report.summary()
    sm = torch.jit.script(m)
    x, refs = g["inputs"][0], g["outputs"][0]
    with torch.no_grad():
        out, eager = sm(x), m(x)
    _same(out, eager)
    for o, r in zip(out, refs):
        torch.testing.assert_close(o, r, atol=1e-4, rtol=0)  # the golden tests' tolerance


@pytest.mark.parametrize("name", NAMES)
def test_torch_export_equals_eager(name):
    m = _model(name, num_classes=0)
    x = _input()
    with torch.no_grad():
        ref = m(x)
        ep = torch.export.export(m, (x,))
        _same(ep.module()(x), ref)


def _expected_keys(template: set, depths) -> set:
    """The golden (official) key set of one family, with ``block{i}`` expanded to ``depths``."""
    out, per_block = set(), {}
    for k in template:
        mt = re.match(r"block(\d)\.(\d+)\.(.+)$", k)
        if mt:
            per_block.setdefault(int(mt.group(1)), set()).add(mt.group(3))
        else:
            out.add(k)
    for i, d in enumerate(depths, start=1):
        out |= {f"block{i}.{j}.{rest}" for j in range(d) for rest in per_block[i]}
    return out


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_are_the_official_ones(name):
    """Every variant's keys: the golden file's of its family (T), expanded to its own depths."""
    family = name.split("_")[0]
    template = set(torch.load(shared_path("golden", f"{family}_t_golden.pt"), weights_only=True)["state_dict"])
    m = timm.create_model(name, num_classes=0)
    assert set(m.state_dict()) == _expected_keys(template, DEPTHS[name])
    head = timm.create_model(name, num_classes=3)
    assert set(head.state_dict()) == set(m.state_dict()) | {"head.weight", "head.bias"}
    feats = timm.create_model(name, features_only=True, out_indices=(0, 1, 2, 3))
    assert set(feats.state_dict()) == {f"model.{k}" for k in m.state_dict()}
