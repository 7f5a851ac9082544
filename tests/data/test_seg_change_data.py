"""Segmentation / change data: mask encodings, layouts, real-data decoding, synthetic generators, errors."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rsvision.data.change import ChangeDataset, find_change_items, read_binary_label, sparse_label, split_label
from rsvision.data.segmentation import (
    PRESETS, SegmentationDataset, augment_flips, find_pairs, get_encoding, random_crop, read_mask,
)
from rsvision.viz.masks import colorize
from rsvision.data.synthetic.change import make_change_pair, write_change_folder
from rsvision.data.synthetic.segmentation import make_segmentation_sample, write_segmentation_folder
from rsvision.errors import ConfigError, DataError
from tests.conftest import shared_path


# --- encodings ----------------------------------------------------------------------------------
def test_reduce_zero_label_loveda_style():
    enc = get_encoding("loveda")
    out = enc.decode(np.array([[0, 1, 7], [2, 0, 3]], np.uint8))
    assert out.tolist() == [[255, 0, 6], [1, 255, 2]]
    with pytest.raises(DataError, match=r"\[8\]"):
        enc.decode(np.array([[8]], np.uint8), "m.png")


def test_configurable_ignore_index_and_plain_index():
    enc = get_encoding(None, classes=["a", "b", "c"], ignore_index=100)
    assert enc.decode(np.array([[0, 2, 100]])).tolist() == [[0, 2, 100]]
    with pytest.raises(DataError, match="outside the 3 classes"):
        enc.decode(np.array([[3]]))
    with pytest.raises(ConfigError):
        get_encoding(None, classes=["a", "b"], ignore_index=1)  # collides with a class
    with pytest.raises(ConfigError, match="unknown mask preset"):
        get_encoding("nope")


def test_rgb_colour_table_isprs():
    enc = get_encoding("isprs_rgb")
    rgb = np.array([[[255, 0, 0, 0]], [[255, 0, 255, 0]], [[255, 255, 255, 0]]], np.uint8)  # (3, 1, 4)
    # white impervious, blue building, cyan low vegetation, black boundary -> ignore
    assert enc.decode(rgb).tolist() == [[0, 1, 2, 255]]
    bad = np.array([[[1]], [[2]], [[3]]], np.uint8)
    with pytest.raises(DataError, match=r"\(1, 2, 3\)"):
        enc.decode(bad, "mask.png")
    with pytest.raises(DataError, match="one band"):
        get_encoding("isprs").decode(rgb)
    near = np.array([[[252]], [[255]], [[3]]], np.uint8)  # a lossy "car" yellow
    assert get_encoding({"preset": "isprs_rgb", "colour_tolerance": 4}).decode(near).tolist() == [[4]]


def test_palette_png_keeps_indices(tmp_path):
    img = Image.fromarray(np.array([[0, 1], [2, 3]], np.uint8), mode="P")
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9] + [0] * 756)
    img.save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png")[0].tolist() == [[0, 1], [2, 3]]


def test_folder_pairs_and_errors(tmp_path):
    root = write_segmentation_folder(tmp_path / "d", n=3, size=32)
    pairs = find_pairs(root)
    assert [p[0].stem for p in pairs] == ["scene_000", "scene_001", "scene_002"]
    (root / "masks" / "scene_001.png").unlink()
    with pytest.raises(DataError, match="no mask"):
        find_pairs(root)
    with pytest.raises(DataError, match="masks"):
        find_pairs(tmp_path / "empty", masks="masks")


def test_multiband_geotiff_dataset_and_crops(tmp_path):
    root = write_segmentation_folder(tmp_path / "ms", n=2, size=40, bands=6, fmt="tif")
    ds = SegmentationDataset(find_pairs(root), get_encoding(None, ["bg", "bd", "rd", "wt"]), crop_size=48, augment=True)
    s = ds[0]
    assert s["image"].shape == (6, 48, 48) and s["mask"].shape == (48, 48)
    assert (s["mask"] == 255).any()  # padding beyond the 40-px image is ignored, not class 0


def test_crop_and_flips_keep_image_and_mask_aligned():
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 5, (30, 40))
    img = np.stack([mask, mask * 2]).astype(np.float32)
    for _ in range(5):
        i, m = random_crop([img, mask], 16, rng, [0, 255])
        i, m = augment_flips([i, m], rng)
        assert (i[0] == m).all() and (i[1] == 2 * m).all()


def test_colorize_palette_and_ignore():
    out = colorize(np.array([[0, 1, 255]]), [[1, 2, 3], [4, 5, 6]])
    assert out.tolist() == [[[1, 2, 3], [4, 5, 6], [0, 0, 0]]]


# --- change layouts -------------------------------------------------------------------------------
def test_change_folder_and_label_values(tmp_path):
    root = write_change_folder(tmp_path / "cd", n=2, size=32)
    items = find_change_items(root)
    assert len(items) == 2 and set(np.unique(read_binary_label(items[0].label))) <= {0, 1}
    s = ChangeDataset(items, crop_size=24, augment=True)[1]
    assert s["image"].shape == (2, 3, 24, 24) and s["mask"].dtype.is_floating_point is False
    (root / "B" / "pair_001.png").unlink()
    with pytest.raises(DataError, match="lack a B image"):
        find_change_items(root)
    with pytest.raises(DataError, match="unknown change-detection layout"):
        find_change_items(tmp_path)


def test_sparse_labels_and_spatial_split():
    c = np.zeros((4, 6), np.uint8)
    u = np.zeros((4, 6), np.uint8)
    c[0, 0] = c[3, 5] = 255
    u[1, 1] = u[2, 4] = 255
    lab = sparse_label(c, u)
    assert (lab == 1).sum() == 2 and (lab == 0).sum() == 2 and (lab == 255).sum() == 20
    tr, va = split_label(lab, 0.5, axis=1)
    assert tr[0, 0] == 1 and tr[3, 5] == 255 and va[3, 5] == 1 and va[0, 0] == 255


# --- real data (skipped without ../shared) -----------------------------------------------------------
@pytest.mark.parametrize("name,preset,classes_present", [
    ("loveda", "loveda", {0, 1, 2, 3, 6}),          # 0.png: values {1,2,3,4,7} minus one
    ("vaihingen", "isprs", {0, 1, 2, 3, 4, 255}),   # 0 = eroded boundaries -> ignore
])
def test_real_index_masks(name, preset, classes_present):
    root = shared_path("data", "seg", name)
    ds = SegmentationDataset(find_pairs(root)[:1], get_encoding(preset))
    assert set(np.unique(ds[0]["mask"].numpy())) == classes_present


def test_real_isaid_rgb_masks():
    root = shared_path("data", "seg", "isaid")
    pairs = dict((p[0].stem, p) for p in find_pairs(root))
    s = SegmentationDataset([pairs["P0003"]], get_encoding("isaid"))[0]
    names = PRESETS["isaid"]["classes"]
    assert {names[i] for i in np.unique(s["mask"].numpy())} == {"background", "storage_tank", "large_vehicle", "small_vehicle"}
    assert s["image"].shape == (3, 1023, 1147)


def test_real_change_layouts():
    levir = find_change_items(shared_path("data", "change", "levir_256"))
    assert len(levir) == 8
    lab = read_binary_label(next(i.label for i in levir if i.name == "train_386_0512_0768"))
    assert lab.sum() == 0  # the all-unchanged crop
    (scene,) = find_change_items(shared_path("data", "change", "landsat_ms", "taizhou"))
    assert (scene.a.name, scene.b.name) == ("2000TM", "2003TM")
    assert (scene.label == 1).sum() == 4227 and (scene.label == 0).sum() == 17163
    s = ChangeDataset([scene])[0]
    assert s["image"].shape == (2, 6, 400, 400)


# --- synthetic generators --------------------------------------------------------------------------
def test_synthetic_segmentation_is_deterministic_and_multiband():
    a, m = make_segmentation_sample(48, bands=7, seed=3)
    b, n = make_segmentation_sample(48, bands=7, seed=3)
    assert a.shape == (7, 48, 48) and (a == b).all() and (m == n).all() and len(np.unique(m)) >= 3


def test_synthetic_change_labels_objects_not_nuisance():
    a, b, lab = make_change_pair(64, 3, seed=1)
    assert 0.01 < lab.mean() < 0.5
    # unchanged pixels still differ (illumination, season, noise), so raw differences are not the label
    assert np.abs(a.astype(float) - b)[:, lab == 0].mean() > 5
    a0, b0, lab0 = make_change_pair(64, 3, seed=1, num_removed=0, num_added=0)
    assert lab0.sum() == 0


def test_spatial_holdout_regions_partition_labels(tmp_path):
    from rsvision.data.segmentation import SegmentationDataModule, SegmentDataConfig as DataConfig

    root = write_segmentation_folder(tmp_path / "d", n=1, size=40)
    dm = SegmentationDataModule(DataConfig(root=str(root), classes=["a", "b", "c", "d"], split="spatial",
                                           val_fraction=0.25, img_size=32))
    dm.setup()
    tr, va = dm.train_ds.load(0)[1], dm.val_ds.load(0)[1]
    assert (tr[30:] == 255).all() and (va[:30] == 255).all()
    assert ((tr != 255) | (va != 255)).all()  # every pixel labelled on exactly one side
