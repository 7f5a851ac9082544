"""S1 / S2 readers on the real BigEarthNet v1.0, reBEN and SSL4EO-S12 samples in ../shared/data/multimodal."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F

from rsvision.data.multimodal import (
    BEN19_CLASSES, MultimodalDataConfig, MultimodalDataModule, MultimodalDataset, read_dataset, stack_bands,
)
from rsvision.data.transforms import ResizePolicy, SceneTransform
from rsvision.errors import ConfigError, DataError
from tests.conftest import shared_path


def _index():
    root = shared_path("data", "multimodal")
    with open(root / "index.csv", newline="") as f:
        return root, {r["pair_id"]: r for r in csv.DictReader(f)}


def _raw(path):
    with rasterio.open(path) as src:
        return src.read(1).astype(np.float32)


@pytest.mark.parametrize("folder,n", [("bigearthnet_v1_configilm", 30), ("reben_configilm", 24)])
def test_readers_match_the_index(folder, n):
    root, index = _index()
    samples = read_dataset(root / folder)
    assert len(samples) == n
    assert sorted({s.split for s in samples}) == ["test", "train", "val"]
    assert all(sum(s.split == k for s in samples) == n // 3 for k in ("train", "val", "test"))
    for s in samples:
        row = index[s.id]
        assert {"validation": "val"}.get(row["split"], row["split"]) == s.split
        assert [BEN19_CLASSES[i] for i in s.labels] == sorted(row["labels_19"].split("|"), key=BEN19_CLASSES.index)
        assert s.files["VV"] == str(root / row["s1_dir"] / f"{row['s1_prefix']}_VV.tif")
        assert s.files["B8A"] == str(root / row["s2_dir"] / f"{row['s2_prefix']}_B8A.tif")
        assert len(s.files) == 14


def test_bands_stack_on_the_10m_grid():
    root, _ = _index()
    s = read_dataset(root / "reben_configilm")[0]
    bands = ["B02", "B08", "B05", "B11", "B01", "VV", "VH"]
    x = stack_bands(s.files, bands)
    assert x.shape == (7, 120, 120) and x.dtype == np.float32
    for i in (0, 1, 5, 6):  # already on the grid: unchanged values (S2 DN, S1 dB)
        np.testing.assert_array_equal(x[i], _raw(s.files[bands[i]]))
    # 20 m and 60 m bands: GDAL's bilinear upsampling agrees with pixel-centre bilinear interpolation
    for i, factor in ((2, 2), (3, 2), (4, 6)):
        low = torch.from_numpy(_raw(s.files[bands[i]]))[None, None]
        ref = F.interpolate(low, scale_factor=factor, mode="bilinear", align_corners=False)[0, 0].numpy()
        m = factor  # GDAL clamps differently at the outer half pixel
        np.testing.assert_allclose(x[i][m:-m, m:-m], ref[m:-m, m:-m], rtol=1e-4, atol=0.05)


def test_ssl4eo_s1_warped_onto_the_s2_grid():
    root, _ = _index()
    samples = read_dataset(root / "ssl4eo_s12")
    assert [s.id for s in samples] == ["0000200_s0", "0000200_s1"] and all(s.labels is None for s in samples)
    x = stack_bands(samples[0].files, ["B02", "B05", "VV", "VH"])
    # S1 is offset by ~4 pixels from S2: the uncovered border is cropped, never filled with zeros
    assert 250 <= x.shape[1] < 264 and 250 <= x.shape[2] < 264 and np.isfinite(x).all()
    vv = _raw(samples[0].files["VV"])
    assert vv.min() - 0.5 <= x[2].min() and x[2].max() <= vv.max() + 0.5 and x[2].max() < 5  # dB, not zero fill
    with rasterio.open(samples[0].files["B02"]) as b2, rasterio.open(samples[0].files["VV"]) as s1:
        # the stacked VV at an S2 pixel centre ~ the S1 value at the same coordinate (bilinear vs nearest)
        r, c = 130, 130
        lon, lat = b2.xy(r, c)
        sr, sc = s1.index(lon, lat)
        assert abs(x[2, r, c] - vv[sr, sc]) < 3.0


def test_datamodule_statistics_labels_and_checkpoint_keys():
    root, index = _index()
    dm = MultimodalDataModule(MultimodalDataConfig(root=str(root / "reben_configilm")))
    dm.setup()
    train = read_dataset(root / "reben_configilm")
    train = [s for s in train if s.split == "train"]
    vv = np.stack([_raw(s.files["VV"]) for s in train])
    b02 = np.stack([_raw(s.files["B02"]) for s in train])
    assert dm.stats["s1"][0][0] == pytest.approx(vv.mean(dtype=np.float64), rel=1e-6)
    assert dm.stats["s1"][1][0] == pytest.approx(vv.std(dtype=np.float64), rel=1e-5)
    assert dm.stats["s2"][0][0] == pytest.approx(b02.mean(dtype=np.float64), rel=1e-6)
    h = dm.hparams_data()
    assert h["bands"][:2] == ["s2:B02", "s2:B03"] and h["bands"][-2:] == ["s1:VV", "s1:VH"]
    assert len(h["mean"]) == len(h["std"]) == len(h["bands"]) == 12 and h["classes"] == list(BEN19_CLASSES)
    batch = next(iter(dm.loader("test")))
    assert batch["image"]["s2"].shape == (8, 10, 120, 120) and batch["image"]["s1"].shape == (8, 2, 120, 120)
    for j, i in enumerate(batch["index"].tolist()):
        s = dm.datasets["test"].samples[i]
        names = {BEN19_CLASSES[k] for k in torch.nonzero(batch["label"][j]).flatten().tolist()}
        assert names == set(index[s.id]["labels_19"].split("|"))
    norm = torch.cat([dm.datasets["train"][i]["image"]["s1"] for i in range(8)], 1)
    assert norm.mean((1, 2)).abs().max() < 1e-4 and (norm.std((1, 2)) - 1).abs().max() < 1e-3


def test_modalities_move_together_under_augmentation():
    root, _ = _index()
    samples = read_dataset(root / "bigearthnet_v1_configilm")[:2]
    tf = SceneTransform(ResizePolicy(96, None, None), train=True)
    ds = MultimodalDataset(samples, {"a": ["B02", "VV"], "b": ["B02", "VV"]}, transform=tf)
    torch.manual_seed(0)
    for _ in range(4):
        item = ds[0]
        assert item["image"]["a"].shape == (2, 96, 96)
        torch.testing.assert_close(item["image"]["a"], item["image"]["b"], rtol=0, atol=0)


def test_bad_inputs_are_named(tmp_path):
    root, _ = _index()
    s = read_dataset(root / "bigearthnet_v1_configilm")[0]
    with pytest.raises(DataError, match="B10"):
        stack_bands(s.files, ["B02", "B10"])
    with pytest.raises(DataError, match="not a BigEarthNet"):
        read_dataset(tmp_path)
    with pytest.raises(ConfigError, match="unknown bands"):
        MultimodalDataModule(MultimodalDataConfig(root=str(root / "reben_configilm"),
                                                  modalities={"s2": ["B02", "B13"]})).setup()
    broken = dict(s.files, B03=str(tmp_path / "missing_B03.tif"))
    with pytest.raises(DataError, match="missing_B03.tif"):
        stack_bands(broken, ["B02", "B03"])


def test_index_csv_reads_both_sources_and_split_files_replace_splits(tmp_path):
    from rsvision.data.multimodal import detect_format
    from rsvision.data.pair_inputs import write_pair_split_file

    root, index = _index()
    assert detect_format(root) == "index"
    samples = read_dataset(root)
    parts = read_dataset(root / "bigearthnet_v1_configilm") + read_dataset(root / "reben_configilm")
    assert len(samples) == 54 and [s.id for s in samples] == list(index)
    assert {s.id: (s.split, s.labels, dict(s.files)) for s in samples} == \
        {s.id: (s.split, s.labels, dict(s.files)) for s in parts}
    assert {k: sum(s.split == k for s in samples) for k in ("train", "val", "test")} == {"train": 18, "val": 18, "test": 18}
    f = write_pair_split_file(tmp_path / "split.csv", {s.id: "val" if s.split == "test" else "train" for s in samples[:40]})
    again = read_dataset(root, split_file=f)
    assert [s.id for s in again] == [s.id for s in samples[:40]]  # unlisted pairs are dropped
    assert [s.split for s in again] == ["val" if s.split == "test" else "train" for s in samples[:40]]
    (tmp_path / "bad.csv").write_text("split,path\ntrain,no_such_pair\n")
    with pytest.raises(DataError, match="no_such_pair"):
        read_dataset(root, split_file=tmp_path / "bad.csv")


def _band(path, arr, size=None, res=10.0, dtype=None):
    from rasterio.transform import from_origin

    h, w = arr.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=1, dtype=dtype or arr.dtype,
                       crs="EPSG:32634", transform=from_origin(500000, 6000000, res, res)) as dst:
        dst.write(arr.astype(dtype or arr.dtype), 1)
    return str(path)


def test_the_band_at_fault_is_named(tmp_path):
    """NaN inside one band, a band covering part of the grid, complex pixels: the error names that band's
    file (it named the reference band B02 for the first two, and read complex pixels as their real part)."""
    rng = np.random.default_rng(0)
    good = rng.integers(1, 3000, (120, 120)).astype(np.uint16)
    files = {"B02": _band(tmp_path / "B02.tif", good), "B03": _band(tmp_path / "B03.tif", good)}
    assert stack_bands(files, ["B02", "B03"]).shape == (2, 120, 120)
    edge = good.astype(np.float32)
    edge[:, :3] = np.nan  # a border without data is cropped, as for SSL4EO's offset S1
    assert stack_bands(dict(files, B03=_band(tmp_path / "edge.tif", edge)), ["B02", "B03"]).shape == (2, 120, 117)
    holed = good.astype(np.float32)
    holed[50:60, 50:60] = np.nan
    cases = {
        "holed.tif": (_band(tmp_path / "holed.tif", holed), "100 of 14,400 pixels"),
        "part.tif": (_band(tmp_path / "part.tif", good[:37, :37]), "13,031 of 14,400 pixels"),
        "cplx.tif": (_band(tmp_path / "cplx.tif", good, dtype="complex64"), "complex64 is not supported"),
    }
    for name, (path, needle) in cases.items():
        with pytest.raises(DataError, match=needle) as err:
            stack_bands(dict(files, B03=path), ["B02", "B03"])
        assert err.value.path is not None and str(err.value.path).endswith(name), err.value
