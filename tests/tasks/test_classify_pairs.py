"""Multi-label classification of real S1 / S2 pairs (reBEN) through the classification task with SkySense V2."""
from __future__ import annotations

import json

import pytest
import torch

from rsvision.errors import ConfigError
from rsvision.tasks import evaluate, load_task, train
from rsvision.tasks.classification import ClassifyConfig
from tests.conftest import shared_path

SMALL = {"embed_dim": 16, "depths": [1, 1, 2, 2], "head_dim": 8}  # skysense_v2_tiny narrowed for a CPU test


def _cfg(root, out, modalities=None):
    cfg = ClassifyConfig()
    d = cfg.data
    d.root, d.format, d.img_size, d.batch_size = str(root), "pairs", 64, 8
    d.modalities = modalities
    cfg.model.name, cfg.model.kwargs = "skysense_v2_tiny", dict(SMALL)
    cfg.optim.lr, cfg.optim.warmup_steps = 1e-3, 0
    t = cfg.trainer
    t.out, t.max_epochs, t.progress, t.threads, t.log_every_n_steps = str(out), 2, "none", 1, 1
    return cfg


@pytest.mark.parametrize("modalities", [None, {"s1": ["VV", "VH"]}], ids=["s2+s1", "s1"])
def test_train_eval_on_reben_pairs(tmp_path, modalities):
    root = shared_path("data", "multimodal", "reben_configilm")
    out = tmp_path / "run"
    res = train(_cfg(root, out, modalities))
    m = json.loads((out / "test_metrics.json").read_text())
    assert {"mAP", "f1_micro", "f1_macro", "per_class"} <= m.keys() and m["num_samples"] == 8
    assert all(0 <= m[k] <= 1 for k in ("mAP", "f1_micro", "f1_macro")) and len(m["per_class"]) == 19
    hp = torch.load(out / "best.ckpt", weights_only=True)["hyper_parameters"]
    mods = modalities or {"s2": ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"],
                          "s1": ["VV", "VH"]}
    assert hp["modalities"] == mods and hp["multilabel"] is True
    assert hp["bands"] == [f"{k}:{b}" for k, bs in mods.items() for b in bs]
    assert len(hp["mean"]) == len(hp["std"]) == len(hp["bands"])
    task = load_task(res.checkpoint)
    assert task.model.modalities == {k: tuple(v) for k, v in mods.items()}
    again = evaluate(task, root, split="test")
    assert again["mAP"] == pytest.approx(m["mAP"], abs=1e-6) and again["f1_micro"] == pytest.approx(m["f1_micro"], abs=1e-6)
    if modalities is None:  # trained on S1 + S2, tested on S2 only (the missing-modality row)
        s2 = evaluate(task, root, split="test", modalities=["s2"])
        assert 0 <= s2["mAP"] <= 1 and s2["num_samples"] == 8 and s2["mAP"] != again["mAP"]
        with pytest.raises(ConfigError, match="hr"):
            evaluate(task, root, split="test", modalities=["hr"])


def test_pairs_refuse_mixing(tmp_path):
    root = shared_path("data", "multimodal", "reben_configilm")
    cfg = _cfg(root, tmp_path / "run")
    cfg.optim.mixup = 0.4
    with pytest.raises(ConfigError, match="mixup"):
        train(cfg)


# --- classify predict on pair checkpoints ---------------------------------------------------------
@pytest.fixture(scope="module")
def pair_ckpt(tmp_path_factory):
    """A small S1 + S2 checkpoint trained for one epoch on the reBEN pairs (32 px)."""
    root = shared_path("data", "multimodal", "reben_configilm")
    out = tmp_path_factory.mktemp("pairs") / "run"
    cfg = _cfg(root, out)
    cfg.data.img_size, cfg.trainer.max_epochs = 32, 1
    return train(cfg).checkpoint


def _rows(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_pairs_writes_per_pair_labels_and_probabilities(pair_ckpt, tmp_path):
    from rsvision.data.multimodal import BEN19_CLASSES, pairs_eval_dataset, read_dataset
    from rsvision.tasks import predict

    root = shared_path("data", "multimodal", "reben_configilm")
    task = load_task(pair_ckpt)
    preds = list(predict(task, [root], tmp_path / "p", score_thr=0.5))
    ids = [s.id for s in read_dataset(root)]
    assert [p["id"] for p in preds] == ids and all(p["modalities"] == ["s2", "s1"] for p in preds)
    # the same probabilities as a direct forward of the evaluation dataset
    ds = pairs_eval_dataset(task.hparams, root)
    with torch.no_grad():
        ref = torch.sigmoid(task.net().eval()({m: ds[3]["image"][m][None] for m in ("s2", "s1")}))[0]
    torch.testing.assert_close(torch.tensor(preds[3]["probs"]), ref, rtol=1e-4, atol=1e-5)
    for p in preds:
        assert p["labels"] == [c for c, q in zip(BEN19_CLASSES, p["probs"]) if q >= 0.5]
    rows = _rows(tmp_path / "p" / "predictions.csv")
    assert [r["id"] for r in rows] == ids and list(rows[0])[4:] == list(BEN19_CLASSES)
    assert float(rows[3][BEN19_CLASSES[7]]) == pytest.approx(preds[3]["probs"][7], abs=1e-6)
    assert rows[3]["labels"] == "|".join(preds[3]["labels"]) and rows[3]["modalities"] == "s2+s1"
    js = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert js["multilabel"] is True and [p["id"] for p in js["predictions"]] == ids
    with pytest.raises(Exception, match="already holds results"):  # never clobbered
        list(predict(task, [root], tmp_path / "p"))


def test_predict_pairs_inputs_subsets_and_band_errors(pair_ckpt, tmp_path):
    import shutil

    from rsvision.errors import BandMismatchError
    from rsvision.tasks import predict

    task = load_task(pair_ckpt)
    mm = shared_path("data", "multimodal")
    full = {p["id"]: p for p in predict(task, [mm / "reben_configilm"])}
    # a patch folder inside a dataset (its pair), a product folder (its patches), the index.csv root (all 54)
    patch = next((mm / "reben_configilm" / "BigEarthNet-S2").glob("*/*_26_57"))
    one = list(predict(task, [patch]))
    assert [p["id"] for p in one] == [patch.name]
    assert one[0]["probs"] == pytest.approx(full[patch.name]["probs"], abs=1e-5)  # batched vs alone: float noise
    product = sorted(full)[-1].rsplit("_", 2)[0]
    prod = list(predict(task, [mm / "reben_configilm" / "BigEarthNet-S2" / product]))
    assert {p["id"] for p in prod} == {i for i in full if i.startswith(product + "_")}
    assert len(list(predict(task, [mm]))) == 54
    # S2 only: the missing-modality case
    s2 = list(predict(task, [patch], modalities=["s2"]))
    assert s2[0]["modalities"] == ["s2"] and s2[0]["probs"] != pytest.approx(one[0]["probs"], abs=1e-5)
    # a loose folder of band files: the same pair, the same prediction
    loose = tmp_path / "loose"
    loose.mkdir()
    s1 = next((mm / "reben_configilm" / "BigEarthNet-S1").glob(f"*/*_{patch.name.split('_T')[-1]}"))
    for f in [*patch.glob("*.tif"), *s1.glob("*.tif")]:
        shutil.copy(f, loose / f.name)
    got = list(predict(task, [loose]))
    assert got[0]["probs"] == pytest.approx(one[0]["probs"], abs=1e-5)
    # a missing band: the error names the modality and its band count; --modalities s2 still works
    next(loose.glob("*_VH.tif")).unlink()
    with pytest.raises(BandMismatchError, match=r"modality 's1' needs 2 bands \['VV', 'VH'\], found 1"):
        list(predict(task, [loose]))
    assert list(predict(task, [loose], modalities=["s2"]))[0]["probs"] == pytest.approx(s2[0]["probs"], abs=1e-5)
    with pytest.raises(ConfigError, match="hr"):
        list(predict(task, [loose], modalities=["hr"]))


def test_predict_pairs_cli(pair_ckpt, tmp_path):
    from typer.testing import CliRunner

    from rsvision.cli import app

    patch = next((shared_path("data", "multimodal", "reben_configilm") / "BigEarthNet-S2").glob("*/*_26_57"))
    r = CliRunner().invoke(app, ["classify", "predict", "--checkpoint", str(pair_ckpt), str(patch.parent),
                                 "--modalities", "S2", "--out", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output + repr(r.exception)
    rows = _rows(tmp_path / "p" / "predictions.csv")
    assert len(rows) == len(list(patch.parent.iterdir())) and {r["modalities"] for r in rows} == {"s2"}
    r = CliRunner().invoke(app, ["classify", "predict", "--checkpoint", str(pair_ckpt), str(patch.parent),
                                 "--cluster", "local:1", "--out", str(tmp_path / "q")])
    assert r.exit_code != 0 and "pair checkpoints predict in one process" in r.output + repr(r.exception)
    assert not (tmp_path / "q").exists()
