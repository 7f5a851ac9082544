"""Same seed, same run: segment, change and detect train identically twice, and a killed run resumes exactly.

Every random draw of their training data (sampler order, crop positions, flips, rotations, date
swaps, gains) depends only on ``(seed, epoch, sample index)``, and the model's draws on the streams
:class:`rsvision.tasks.common.SeedEveryStep` re-seeds, so on CPU with ``num_workers=0`` the runs
must be bitwise equal: the weights are compared with ``torch.equal`` and ``metrics.csv`` as text.
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from rsvision.tasks import train

EPOCHS = 3


class Kill(L.Callback):
    """Simulate a crash in the middle of epoch 2 (after epoch 1's last.ckpt was written)."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.current_epoch == 2 and batch_idx == 1:
            raise RuntimeError("simulated kill")


def _trainer(cfg, out: Path):
    t = cfg.trainer
    t.out, t.max_epochs, t.seed, t.device = str(out), EPOCHS, 3, "cpu"
    t.threads, t.progress, t.log_every_n_steps = 1, "none", 1
    return cfg


def _segment(data: Path, out: Path):
    from rsvision.tasks.segmentation import SegmentConfig

    cfg = SegmentConfig()
    d = cfg.data
    d.root, d.classes, d.img_size, d.batch_size, d.samples_per_image = str(data), ["bg", "bd", "rd", "wt"], 32, 2, 2
    cfg.model.name, cfg.model.channels = "test_convnext", 16
    return _trainer(cfg, out)


def _change(data: Path, out: Path):
    from rsvision.tasks.change import ChangeConfig

    cfg = ChangeConfig()
    d = cfg.data
    d.root, d.img_size, d.batch_size, d.samples_per_image = str(data), 32, 2, 2
    cfg.model.name, cfg.model.channels = "test_convnext", 16
    return _trainer(cfg, out)


def _detect(data: Path, out: Path):
    from rsvision.tasks.detection import DetectConfig

    cfg = DetectConfig()
    d = cfg.data
    d.root, d.classes, d.img_size, d.batch_size, d.num_workers = str(data), ["ship", "vehicle", "tank"], 64, 2, 0
    d.rect_classes, d.rotate_p = ["tank"], 1.0  # every sample flipped or turned at random (both kinds of angle)
    m = cfg.model
    m.name, m.fpn_channels, m.fc_channels = "lsknet_t", 32, 64
    m.kwargs = {"backbone_drop_rate": 0.0, "backbone_drop_path_rate": 0.1,  # drop path: a model-side stream
                "rpn": {"nms_pre": 200, "max_per_img": 100}, "rcnn": {"max_per_img": 50}}
    cfg.optim.warmup_steps = 2
    cfg.eval.window, cfg.eval.overlap = 64, 16
    return _trainer(cfg, out)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    from rsvision.data.synthetic.change import write_change_folder
    from rsvision.data.synthetic.objects import make_dota_dataset
    from rsvision.data.synthetic.segmentation import write_segmentation_folder

    root = tmp_path_factory.mktemp("repro")
    det = root / "det"
    make_dota_dataset(det / "train", 4, 64, seed=0, num_objects=3)
    make_dota_dataset(det / "val", 1, 64, seed=1, num_objects=3)
    return {"segment": (_segment, write_segmentation_folder(root / "seg", n=4, size=40)),
            "change": (_change, write_change_folder(root / "cd", n=4, size=40)),
            "detect": (_detect, det)}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def full_runs(datasets, tmp_path_factory):
    """One uninterrupted run per task, trained on first use (both tests compare against it)."""
    runs: dict[str, Path] = {}

    def get(task: str) -> Path:
        if task not in runs:
            make, data = datasets[task]
            out = tmp_path_factory.mktemp(f"full_{task}") / "run"
            n = torch.get_num_threads()
            train(make(data, out))
            torch.set_num_threads(n)
            runs[task] = out
        return runs[task]

    return get


def _assert_same_run(a: Path, b: Path) -> None:
    sa = torch.load(a / "last.ckpt", weights_only=True)
    sb = torch.load(b / "last.ckpt", weights_only=True)
    assert sa["epoch"] == sb["epoch"] == EPOCHS - 1 and sa["global_step"] == sb["global_step"]
    wa, wb = sa["state_dict"], sb["state_dict"]
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)}/{len(wa)} tensors differ, e.g. {differ[:3]}"
    assert (a / "metrics.csv").read_text().splitlines() == (b / "metrics.csv").read_text().splitlines()


@pytest.mark.parametrize("task", ["segment", "change", "detect"])
def test_same_seed_gives_the_same_run(task, datasets, full_runs, tmp_path):
    make, data = datasets[task]
    train(make(data, tmp_path / "again"))
    _assert_same_run(full_runs(task), tmp_path / "again")


@pytest.mark.parametrize("task", ["segment", "change", "detect"])
def test_killed_and_resumed_run_equals_the_uninterrupted_one(task, datasets, full_runs, tmp_path):
    make, data = datasets[task]
    cfg = make(data, tmp_path / "part")
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(cfg, callbacks=[Kill()])
    assert torch.load(tmp_path / "part" / "last.ckpt", weights_only=True)["epoch"] == 1
    cfg.trainer.resume = True
    train(cfg)
    _assert_same_run(full_runs(task), tmp_path / "part")


def _datasets(data: dict):
    from rsvision.data.change import ChangeDataset, find_change_items
    from rsvision.data.det_transforms import train_transforms
    from rsvision.data.detection import DetectionDataset
    from rsvision.data.segmentation import SegmentationDataset, find_pairs, get_encoding

    seg = SegmentationDataset(find_pairs(data["segment"][1]), get_encoding(None, ["a", "b", "c", "d"]), 24, True, seed=5)
    cd = ChangeDataset(find_change_items(data["change"][1]), 24, True, seed=5)
    det_root = data["detect"][1] / "train"
    det = DetectionDataset(det_root / "images", det_root / "labelTxt", ["ship", "vehicle", "tank"],
                           transforms=train_transforms(rotate_p=1.0), seed=5)
    return {"segment": seg, "change": cd, "detect": det}


@pytest.mark.parametrize("task", ["segment", "change", "detect"])
def test_training_draws_depend_only_on_seed_epoch_and_index(task, datasets):
    """Keyed samples: the same key gives the same sample whatever the global streams hold, other
    epochs give other augmentations, and the caller's streams are left as they were."""
    import random

    import numpy as np

    from rsvision.data.samplers import SampleKey

    ds = _datasets(datasets)[task]

    def get(i, epoch):
        s = ds[SampleKey(i, epoch)]
        return torch.cat([s["image"].flatten(), s.get("mask", s.get("boxes")).flatten().float()])

    def streams():
        return torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()

    torch.manual_seed(0)
    first = [get(i, 1) for i in range(len(ds))]
    torch.manual_seed(123), np.random.seed(7), random.seed(9)  # other global streams, other order
    before = streams()
    assert all(torch.equal(get(i, 1), first[i]) for i in reversed(range(len(ds))))
    after = streams()  # keyed draws neither use nor move the caller's streams (detection: a sealed block)
    assert torch.equal(before[0], after[0]) and (before[1] == after[1]).all() and before[2] == after[2]
    assert any(not torch.equal(get(i, 2), first[i]) for i in range(len(ds)))


def test_keyed_loader_is_independent_of_workers(datasets):
    """The training loader's keys make the crops the same with or without worker processes."""
    from rsvision.data.segmentation import SegmentationDataModule, SegmentDataConfig

    cfg = SegmentDataConfig(root=str(datasets["segment"][1]), classes=["a", "b", "c", "d"], img_size=24,
                            batch_size=2, samples_per_image=2, mean=[0.0] * 3, std=[1.0] * 3)
    batches = []
    for workers in (0, 2):
        cfg.num_workers = workers
        dm = SegmentationDataModule(cfg, seed=4)
        dm.setup("fit")
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(3)
        batches.append([(b["image"], b["mask"]) for b in loader])
    assert len(batches[0]) == len(batches[1]) == 3
    for (i0, m0), (i1, m1) in zip(*batches):
        assert torch.equal(i0, i1) and torch.equal(m0, m1)
