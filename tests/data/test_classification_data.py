"""Raster reading, class-folder / CSV datasets, split files, bad-file handling, transforms."""
from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsvision.data.classification import (
    ClassificationDataConfig, ClassificationDataModule, load_or_create_splits, read_multilabel_csv,
    read_split_file, scan_class_folders, stratified_split,
)
from rsvision.data.raster import compute_band_stats, normalize, read_image, read_info
from rsvision.data.synthetic.scenes import make_multilabel_dataset, make_scene_dataset, scene_image, write_image
from rsvision.data.transforms import ResizePolicy, SceneTransform, center_crop, random_resized_crop, resize
from rsvision.errors import BandMismatchError, DataError


# --- raster -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,bands,dtype", [("RGB", 3, np.uint8), ("L", 1, np.uint8), ("RGBA", 4, np.uint8),
                                              ("I;16", 1, np.uint16)])
def test_read_png_modes(tmp_path, mode, bands, dtype):
    rng = np.random.default_rng(0)
    shape = (9, 7, bands) if bands > 1 else (9, 7)
    arr = rng.integers(0, 60000 if dtype == np.uint16 else 255, shape).astype(dtype)
    p = tmp_path / "x.png"
    Image.fromarray(arr, mode=mode if mode != "I;16" else None).save(p)
    out = read_image(p)
    assert out.shape == (bands, 9, 7) and out.dtype == dtype
    np.testing.assert_array_equal(out, arr[None] if bands == 1 else arr.transpose(2, 0, 1))
    assert read_info(p).count == bands


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_read_multiband_geotiff(tmp_path, dtype):
    img = scene_image(2, 16, bands=6, rng=np.random.default_rng(1), dtype=dtype)
    p = write_image(tmp_path / "x.tif", img)
    out = read_image(p)
    assert out.dtype == img.dtype and out.shape == (6, 16, 16)
    np.testing.assert_array_equal(out, img)
    np.testing.assert_array_equal(read_image(p, bands=[3, 0]), img[[3, 0]])
    with pytest.raises(BandMismatchError, match="x.tif"):
        read_image(p, bands=[6])


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif"])
def test_truncated_file_names_the_file(tmp_path, suffix):
    p = write_image(tmp_path / f"good{suffix}", scene_image(0, 64, 3, np.random.default_rng(0)))
    data = p.read_bytes()
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match=f"bad{suffix}"):
        read_image(bad)
    (tmp_path / f"junk{suffix}").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=f"junk{suffix}"):
        read_image(tmp_path / f"junk{suffix}")


def test_band_stats_and_normalize():
    rng = np.random.default_rng(0)
    imgs = [rng.normal([[[10.0]], [[200.0]]], [[[2.0]], [[30.0]]], (2, 20, 20)) for _ in range(5)]
    st = compute_band_stats(imgs, max_pixels_per_image=None)
    allpix = np.concatenate([i.reshape(2, -1) for i in imgs], 1)
    np.testing.assert_allclose(st.mean, allpix.mean(1), rtol=1e-10)
    np.testing.assert_allclose(st.std, allpix.std(1), rtol=1e-8)
    z = normalize(imgs[0], st.mean, st.std)
    assert z.dtype == np.float32 and abs(float(z.mean())) < 0.5
    with pytest.raises(BandMismatchError):
        normalize(np.zeros((3, 4, 4)), st.mean, st.std)
    with pytest.raises(BandMismatchError):
        compute_band_stats([np.zeros((2, 4, 4)), np.zeros((3, 4, 4))])
    assert compute_band_stats([np.full((1, 4, 4), 7.0)]).std == (1.0,)  # constant band: no division by 0


# --- indexing and splits ----------------------------------------------------------------------------
def test_scan_and_empty_class(tmp_path):
    make_scene_dataset(tmp_path, num_classes=3, per_class=4, size=16)
    samples, classes = scan_class_folders(tmp_path)
    assert classes == sorted(classes) and len(classes) == 3 and len(samples) == 12
    (tmp_path / "zzz_empty").mkdir()
    with pytest.raises(DataError, match="zzz_empty"):
        scan_class_folders(tmp_path)
    with pytest.warns(UserWarning, match="zzz_empty"):
        _, classes = scan_class_folders(tmp_path, skip_bad=True)
    assert "zzz_empty" not in classes


def test_stratified_split_is_seeded_and_stratified():
    targets = [k for k in range(7) for _ in range(80)]
    a = stratified_split(targets, (0.6, 0.2, 0.2), seed=0)
    assert a == stratified_split(targets, (0.6, 0.2, 0.2), seed=0)
    assert a != stratified_split(targets, (0.6, 0.2, 0.2), seed=1)
    for k in range(7):
        c = Counter(s for s, t in zip(a, targets) if t == k)
        assert c == {"train": 48, "val": 16, "test": 16}


def test_split_file_roundtrip(tmp_path):
    root = tmp_path / "d"
    make_scene_dataset(root, num_classes=2, per_class=10, size=16)
    samples, classes = scan_class_folders(root)
    sf = tmp_path / "splits.csv"
    first = load_or_create_splits(samples, root, sf, classes, (0.6, 0.2, 0.2), seed=3)
    table = read_split_file(sf)
    assert len(table) == 20 and set(table.values()) == {"train", "val", "test"}
    again = load_or_create_splits(samples, root, sf, classes, (0.1, 0.1, 0.8), seed=99)  # file wins
    assert {k: [s.path for s in v] for k, v in first.items()} == {k: [s.path for s in v] for k, v in again.items()}
    Path(first["test"][0].path).unlink()
    samples2, _ = scan_class_folders(root)
    with pytest.raises(DataError, match="splits.csv"):
        load_or_create_splits(samples2, root, sf, classes)


def test_multilabel_csv_formats(tmp_path):
    csv_path, names = make_multilabel_dataset(tmp_path, num_classes=3, count=6, size=16)
    samples, classes = read_multilabel_csv(csv_path)
    assert sorted(classes) == sorted(names) and len(samples) == 6
    assert all(isinstance(s.target, tuple) and s.target for s in samples)
    onehot = tmp_path / "onehot.csv"
    onehot.write_text("path,a,b,c\nimages/img_0000.png,1,0,1\nimages/img_0001.png,0,1,0\n")
    s2, c2 = read_multilabel_csv(onehot)
    assert c2 == ["a", "b", "c"] and s2[0].target == (0, 2) and s2[1].target == (1,)
    bad = tmp_path / "bad.csv"
    bad.write_text("path,a,b\nx.png,1,0\ny.png,1\n")
    with pytest.raises(DataError, match=r"bad.csv:3"):
        read_multilabel_csv(bad)


# --- datamodule and bad files -----------------------------------------------------------------------
def _dm(root, tmp_path, **kw):
    cfg = ClassificationDataConfig(root=str(root), img_size=16, batch_size=4, **kw)
    return ClassificationDataModule(cfg, seed=0, run_dir=tmp_path / "run")


def test_datamodule_batches_and_stats(tmp_path):
    make_scene_dataset(tmp_path / "d", num_classes=3, per_class=10, size=24, bands=5, dtype="uint16")
    dm = _dm(tmp_path / "d", tmp_path, resize=20)
    dm.setup()
    assert dm.in_chans == 5 and len(dm.mean) == 5 and dm.num_classes == 3
    assert (tmp_path / "run" / "splits.csv").exists()
    b = next(iter(dm.train_dataloader()))
    assert b["image"].shape == (4, 5, 16, 16) and b["image"].dtype == torch.float32
    v = next(iter(dm.val_dataloader()))
    assert v["image"].shape[1:] == (5, 16, 16)
    allv = torch.cat([x["image"] for x in dm.loader("train")])
    assert allv.mean().abs() < 0.3 and 0.6 < allv.std() < 1.4  # normalised with train statistics


def test_corrupt_file_raises_or_is_skipped(tmp_path):
    root = tmp_path / "d"
    make_scene_dataset(root, num_classes=2, per_class=8, size=16)
    victim = sorted((root / "forest").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:40])
    with pytest.raises(DataError, match=victim.name):
        _dm(root, tmp_path).setup()
    (tmp_path / "run" / "splits.csv").unlink()
    dm = _dm(root, tmp_path, skip_bad=True)
    with pytest.warns(UserWarning, match=victim.name):
        dm.setup()
    assert sum(len(d) for d in dm.datasets.values()) == 15
    # uncached: the error surfaces when the item is read, and skip_bad substitutes another image
    dm2 = _dm(root, tmp_path, skip_bad=True, cache=False)
    dm2.cfg.split_file = str(tmp_path / "run" / "splits.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm2.setup()
        for ds in dm2.datasets.values():
            for i in range(len(ds)):
                assert ds[i]["image"].shape == (3, 16, 16)


def test_wrong_band_count_names_file(tmp_path):
    root = tmp_path / "d"
    make_scene_dataset(root, num_classes=2, per_class=6, size=16)
    odd = root / "forest" / "odd.png"
    write_image(odd, scene_image(1, 16, 1, np.random.default_rng(0)))
    with pytest.raises(BandMismatchError, match="odd.png"):
        _dm(root, tmp_path, split=[1, 0, 0]).setup()


# --- transforms -------------------------------------------------------------------------------------
def test_transforms_shapes_and_invariances():
    torch.manual_seed(0)
    img = torch.arange(2 * 40 * 40, dtype=torch.float32).view(2, 40, 40)
    ev = SceneTransform(ResizePolicy(32, resize=36), train=False)
    a = ev(img)
    assert a.shape == (2, 32, 32) and torch.equal(a, ev(img))
    tr = SceneTransform(ResizePolicy(32, resize=None, scale=None), train=True)
    small = torch.rand(3, 32, 32)
    outs = [tr(small) for _ in range(20)]
    # flips / 90-degree rotations only permute pixels: the multiset of values is unchanged
    assert all(torch.equal(o.flatten().sort().values, small.flatten().sort().values) for o in outs)
    assert any(not torch.equal(o, small) for o in outs)
    assert random_resized_crop(img, 24).shape == (2, 24, 24)
    # eval_size: the whole (base-size) image resized, not a centre crop of it
    whole = SceneTransform(ResizePolicy(32, resize=36, eval_size=48), train=False)(img)
    assert whole.shape == (2, 48, 48) and torch.equal(whole, resize(resize(img, 36), 48))
    assert not torch.equal(resize(a, 48), whole)
    # jitter: a per-band affine change, bounded by j (eval never jitters)
    jit = SceneTransform(ResizePolicy(32, scale=None), train=True, hflip=False, vflip=False, rot90=False, jitter=0.2)
    x = torch.randn(3, 32, 32)
    y = jit(x)
    for b in range(3):
        g, o = torch.linalg.lstsq(torch.stack([x[b].flatten(), torch.ones(32 * 32)], 1), y[b].flatten()[:, None]).solution
        assert abs(g - 1) <= 0.2 + 1e-4 and abs(o) <= 0.2 + 1e-4
        assert torch.allclose(y[b], x[b] * g + o, atol=1e-4)
    assert not torch.equal(y, x)
    assert torch.equal(SceneTransform(ResizePolicy(32, scale=None), train=False, jitter=0.2)(x), x)
    assert center_crop(torch.zeros(1, 10, 10), 16).shape == (1, 16, 16)
