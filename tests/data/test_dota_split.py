"""``dota split``: known windows on synthetic images, object rule, padding, band handling, CLI, real data."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from rsvision.data import dota
from rsvision.data.tiling import Window, split_windows
from tests.conftest import shared_path


def _image(path, h, w, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    if mode == "RGB":
        arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    elif mode == "L":
        arr = rng.integers(0, 255, (h, w), dtype=np.uint8)
    else:
        arr = rng.integers(0, 255, (h, w, 4), dtype=np.uint8)
    Image.fromarray(arr, mode).save(path)
    return arr


def _box(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def test_split_windows_known_layout():
    # 300 x 220 image, 128 windows, gap 32 (step 96): x 0, 96, 172 (last shifted back); y 0, 92
    wins = split_windows(220, 300, [128], [32])
    assert [(w.x0, w.y0) for w in wins] == [(0, 0), (0, 92), (96, 0), (96, 92), (172, 0), (172, 92)]
    assert all(w.width == w.height == 128 for w in wins)
    # an image smaller than the window: one window at 0, kept although it covers < img_rate_thr
    assert split_windows(80, 100, [128], [32]) == [Window(0, 0, 128, 128)]
    # multi-size: windows of every size; the rate filter drops a mostly empty big window
    sizes, gaps = dota.window_sizes([128], [32], [0.5, 1.0])
    assert (sizes, gaps) == ([256, 128], [64, 32])  # window = size / rate original pixels
    wins = split_windows(220, 300, sizes, gaps)
    assert sum(w.width == 256 for w in wins) == 2 and sum(w.width == 128 for w in wins) == 6
    with pytest.raises(ValueError):
        dota.window_sizes([128], [200], [1.0])


def test_split_image_patches_and_objects(tmp_path):
    img = tmp_path / "src" / "scene.png"
    img.parent.mkdir()
    arr = _image(img, 220, 300)
    polys = np.array([_box(10, 10, 40, 40), _box(80, 10, 120, 40), _box(250, 150, 299, 219)], dtype=np.float64)
    ann_path = dota.write_label_txt(tmp_path / "src" / "scene.txt", polys, ["plane", "ship", "harbor"], [0, 1, 0])
    out = tmp_path / "out"
    cfg = dota.SplitConfig(sizes=[128], gaps=[32], iof_thr=0.5)
    infos = dota.split_image(img, ann_path, out, cfg)
    names = sorted(p.stem for p in (out / "images").glob("*.png"))
    assert names == sorted(f"scene__128__{x}___{y}" for x in (0, 96, 172) for y in (0, 92))
    assert sorted(p.stem for p in (out / "annfiles").glob("*.txt")) == names
    assert len(infos) == 6
    patch = np.asarray(Image.open(out / "images" / "scene__128__96___92.png"))
    assert patch.shape == (128, 128, 3) and np.array_equal(patch, arr[92:220, 96:224])

    def rows(name):
        return [line.split() for line in (out / "annfiles" / f"{name}.txt").read_text().splitlines()]

    r = rows("scene__128__0___0")
    assert [x[8:] for x in r] == [["plane", "0"], ["ship", "1"]]  # both wholly inside: own difficulty
    assert r[0][:8] == ["10.0", "10.0", "40.0", "10.0", "40.0", "40.0", "10.0", "40.0"]
    r = rows("scene__128__96___0")  # ship: x 96..120 of 80..120 = 60% >= 0.5 -> kept, truncated -> 2
    assert [x[8:] for x in r] == [["ship", "2"]]
    assert r[0][:2] == ["-16.0", "10.0"]  # full polygon, translated (not clipped)
    assert rows("scene__128__172___92")[0][8:] == ["harbor", "0"]
    # default iof 0.7 drops the 60% piece
    dota.split_image(img, ann_path, tmp_path / "out7", dota.SplitConfig(sizes=[128], gaps=[32]))
    assert (tmp_path / "out7" / "annfiles" / "scene__128__96___0.txt").read_text() == ""


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_padding_gray_and_rgba(tmp_path, mode):
    img = tmp_path / "small.png"
    arr = _image(img, 80, 100, mode)
    dota.split_image(img, None, tmp_path / "o", dota.SplitConfig(sizes=[128], gaps=[32]))
    patch = np.asarray(Image.open(tmp_path / "o" / "images" / "small__128__0___0.png"))
    assert patch.shape == (128, 128, 3)
    rgb = np.repeat(arr[..., None], 3, -1) if mode == "L" else arr[..., :3]
    assert np.array_equal(patch[:80, :100], rgb)
    assert (patch[100:, 110:] == [124, 116, 104]).all()  # MMRotate's BGR (104, 116, 124)
    dota.split_image(img, None, tmp_path / "np", dota.SplitConfig(sizes=[128], gaps=[32], padding=False))
    assert Image.open(tmp_path / "np" / "images" / "small__128__0___0.png").size == (100, 80)


def test_split_dataset_and_cli_multiscale(tmp_path):
    from rsvision.cli import app

    src = tmp_path / "images"
    src.mkdir()
    _image(src / "a.png", 220, 300)
    _image(src / "b.png", 150, 140, seed=1)
    (src / "broken.png").write_bytes(b"not a png")
    ann = tmp_path / "labelTxt"
    dota.write_label_txt(ann / "a.txt", np.array([_box(10, 10, 40, 40)], float), ["plane"])
    res = CliRunner().invoke(app, ["dota", "split", "--img-dir", str(src), "--ann-dir", str(ann), "--out",
                                   str(tmp_path / "out"), "--sizes", "128", "--gaps", "32", "--rates", "0.5", "1.0",
                                   "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    names = {p.stem for p in (tmp_path / "out" / "images").iterdir()}
    assert "a__256__0___0" in names and "a__128__172___92" in names and "b__128__0___0" in names
    import json

    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["images"] == 2 and "broken.png" in summary["failed"] and summary["patches"] == len(names)
    bad = CliRunner().invoke(app, ["dota", "split", "--img-dir", str(src), "--out", str(tmp_path / "o2"),
                                   "--sizes", "x"])
    assert bad.exit_code != 0


def test_real_dota_split(tmp_path):
    img_dir = shared_path("data", "dota", "images")
    ann_dir = shared_path("data", "dota", "labelTxt")
    ann = dota.read_label_txt(ann_dir / "P1888.txt")
    infos = dota.split_image(img_dir / "P1888.png", ann, tmp_path, dota.SplitConfig(sizes=[512], gaps=[128]))
    # 712 x 557: x 0, 200 ; y 0, 45
    assert sorted((i["x_start"], i["y_start"]) for i in infos) == [(0, 0), (0, 45), (200, 0), (200, 45)]
    # every object lies wholly in some window -> it is kept there with its own difficulty
    kept = set()
    for i in infos:
        for line in (tmp_path / "annfiles" / f"{i['id']}.txt").read_text().splitlines():
            f = line.split()
            x, y = i["x_start"], i["y_start"]
            kept.add(tuple(round(float(v) + (x if k % 2 == 0 else y), 3) for k, v in enumerate(f[:8])))
    assert {tuple(round(v, 3) for v in p) for p in ann.polys} <= kept
