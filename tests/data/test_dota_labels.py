"""DOTA labelTxt / Task1 / DIOR-R / HRSC readers and writers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rsvision.data import dota
from rsvision.errors import DataError
from tests.conftest import shared_path

GOOD = "imagesource:GoogleEarth\r\ngsd:null\r\n1 2 11 2 11 7 1 7 plane 0\r\n1.5 2 11 2 11 7 1 7 ship\r\n"


def test_read_headers_crlf_float_and_missing_difficult(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes(GOOD.encode())
    ann = dota.read_label_txt(p)
    assert ann.imagesource == "GoogleEarth" and ann.gsd is None
    assert ann.classes == ["plane", "ship"]
    assert ann.difficult.tolist() == [0, 0]
    assert ann.polys.shape == (2, 8) and ann.polys.dtype == np.float64
    assert ann.polys[1, 0] == 1.5
    assert ann.errors == []
    assert ann.labels(dota.DOTA1_0_CLASSES).tolist() == [0, 6]
    (tmp_path / "b.txt").write_text("gsd:0.5\n0 0 4 0 4 4 0 4 small-vehicle 1\n")
    assert dota.read_label_txt(tmp_path / "b.txt").gsd == 0.5


BAD_LINES = [
    ("1 2 11 2 11 7 1 plane 0", "non-numeric"),  # a coordinate missing: "plane" read as y4
    ("1 2 11 2 11 7 plane", "fields"),
    ("1 2 11 2 11 7 1 7 plane 0 extra", "fields"),
    ("1 2 11 x 11 7 1 7 plane 0", "non-numeric"),
    ("1 2 11 2 11 7 1 7 plane hard", "difficult"),
    ("1 2 11 2 11 7 1 7 spaceship 0", "unknown class"),
    ("1 2 11 2 21 2 1 2 plane 0", "degenerate"),  # collinear
    ("1 2 nan 2 11 7 1 7 plane 0", "non-finite"),
]


@pytest.mark.parametrize("line,why", BAD_LINES)
def test_bad_lines_skip_or_raise_with_file_and_line(tmp_path, line, why):
    p = tmp_path / "bad.txt"
    p.write_text("gsd:1\n0 0 4 0 4 4 0 4 plane 0\n" + line + "\n0 0 8 0 8 4 0 4 ship 1\n")
    ann = dota.read_label_txt(p, classes=dota.DOTA1_0_CLASSES)
    assert ann.classes == ["plane", "ship"]  # never a crash, the good lines survive
    assert len(ann.errors) == 1 and f"{p}:3:" in ann.errors[0] and why in ann.errors[0]
    with pytest.raises(DataError) as exc:
        dota.read_label_txt(p, classes=dota.DOTA1_0_CLASSES, on_error="raise")
    assert exc.value.line == 3 and str(p) in str(exc.value)
    with pytest.raises(DataError):
        dota.read_label_txt(p, classes=dota.DOTA1_0_CLASSES, strict=True)


def test_missing_file_and_bad_flag(tmp_path):
    with pytest.raises(DataError):
        dota.read_label_txt(tmp_path / "nope.txt")
    (tmp_path / "a.txt").write_text("")
    with pytest.raises(ValueError):
        dota.read_label_txt(tmp_path / "a.txt", on_error="ignore")
    assert len(dota.read_label_txt(tmp_path / "a.txt")) == 0


def test_write_read_roundtrip(tmp_path):
    polys = np.array([[0, 0, 4, 0, 4, 4, 0, 4], [10.25, 3, 20, 3, 20, 9.5, 10.25, 9.5]])
    p = dota.write_label_txt(tmp_path / "x" / "a.txt", polys, ["plane", "ship"], [0, 1], imagesource="GF2", gsd=0.8)
    ann = dota.read_label_txt(p)
    assert np.array_equal(ann.polys, polys) and ann.classes == ["plane", "ship"] and ann.difficult.tolist() == [0, 1]
    assert ann.imagesource == "GF2" and ann.gsd == 0.8
    with pytest.raises(ValueError):
        dota.write_label_txt(tmp_path / "b.txt", polys, ["plane"])


def test_class_lists():
    assert len(dota.class_names("dota1.0")) == 15 and dota.class_names("DOTA-v1.0")[0] == "plane"
    assert dota.class_names("v1.5")[-1] == "container-crane" and len(dota.class_names("dota2.0")) == 18
    assert dota.class_names("dota2.0")[-2:] == ("airport", "helipad")
    assert len(dota.class_names("dior")) == 20 and dota.class_names("hrsc") == ("ship",)
    with pytest.raises(ValueError):
        dota.class_names("coco")


def test_task1_io(tmp_path):
    dota.append_task1(tmp_path, "P1", np.array([[0, 0, 4, 0, 4, 4, 0, 4.0]]), np.array([0.5], np.float32), ["plane"])
    dota.append_task1(tmp_path, "P2", np.array([[1, 1, 4, 1, 4, 4, 1, 4.0]] * 2), [0.9, 0.25], ["plane", "ship"])
    got = dota.read_task1_dir(tmp_path)
    assert [d.image for d in got["plane"]] == ["P1", "P2"] and got["ship"][0].score == 0.25
    assert got["plane"][0].score == 0.5 and got["plane"][1].poly[0] == 1.0
    assert (tmp_path / "Task1_plane.txt").read_text().splitlines()[0] == "P1 0.5 0.00 0.00 4.00 0.00 4.00 4.00 0.00 4.00"
    dota.write_task1(tmp_path / "o", got, classes=["harbor"])
    assert (tmp_path / "o" / "Task1_harbor.txt").read_text() == ""
    (tmp_path / "Task1_ship.txt").write_text("P1 0.5 1 2 3\n")
    with pytest.raises(DataError) as exc:
        dota.read_task1_dir(tmp_path)
    assert exc.value.line == 1


def test_dior_xml(tmp_path):
    ann = dota.read_dior_xml(shared_path("data", "dior_r", "Annotations", "Oriented Bounding Boxes", "00001.xml"))
    assert ann.classes == ["golffield"]
    assert ann.polys.tolist() == [[133, 237, 684, 237, 684, 672, 133, 672]]
    xml = """<annotation><object><name>Expressway-Service-area</name><difficult>1</difficult><robndbox>
    <x_left_top>1</x_left_top><y_left_top>1</y_left_top><x_right_top>9</x_right_top><y_right_top>1</y_right_top>
    <x_right_bottom>9</x_right_bottom><y_right_bottom>5</y_right_bottom><x_left_bottom>1</x_left_bottom>
    <y_left_bottom>5</y_left_bottom></robndbox></object><object><name>ship</name></object></annotation>"""
    (tmp_path / "a.xml").write_text(xml)
    ann = dota.read_dior_xml(tmp_path / "a.xml", classes=dota.DIOR_CLASSES)
    assert ann.classes == ["expressway-service-area"] and ann.difficult.tolist() == [1]
    assert len(ann.errors) == 1 and "object 2" in ann.errors[0]
    (tmp_path / "b.xml").write_text("<annotation><object>")
    with pytest.raises(DataError):
        dota.read_dior_xml(tmp_path / "b.xml")


def test_hrsc_xml(tmp_path):
    xml = """<HRSC_Image><HRSC_Objects>
    <HRSC_Object><Class_ID>100000005</Class_ID><difficult>0</difficult><mbox_cx>50</mbox_cx><mbox_cy>40</mbox_cy>
    <mbox_w>60</mbox_w><mbox_h>20</mbox_h><mbox_ang>0.5</mbox_ang></HRSC_Object>
    <HRSC_Object><Class_ID>100000007</Class_ID><difficult>1</difficult><mbox_cx>5</mbox_cx><mbox_cy>4</mbox_cy>
    <mbox_w>6</mbox_w><mbox_h>0</mbox_h><mbox_ang>0</mbox_ang></HRSC_Object>
    </HRSC_Objects></HRSC_Image>"""
    (tmp_path / "h.xml").write_text(xml)
    ann = dota.read_hrsc_xml(tmp_path / "h.xml")
    assert ann.classes == ["ship"] and len(ann.errors) == 1  # zero-height box reported
    import torch

    from rsvision.ops import obb2poly, poly2obb

    expected = obb2poly(torch.tensor([[50.0, 40, 60, 20, 0.5]], dtype=torch.float64)).numpy()
    assert np.allclose(ann.polys, expected)
    assert np.allclose(poly2obb(torch.from_numpy(ann.polys)).numpy(), [[50, 40, 60, 20, 0.5]])
    assert dota.read_hrsc_xml(tmp_path / "h.xml", classwise=True).classes == ["100000005"]
    assert math.isclose(dota.polygon_area(ann.polys)[0], 1200.0)


def test_real_dota_labels():
    root = shared_path("data", "dota", "labelTxt")
    total = 0
    for p in sorted(root.glob("*.txt")):
        ann = dota.read_label_txt(p, classes=dota.DOTA1_0_CLASSES, on_error="raise")
        assert ann.imagesource == "GoogleEarth"
        total += len(ann)
    assert total >= 952
    ann = dota.read_label_txt(root / "P0168.txt")
    assert ann.gsd == pytest.approx(2.68220901489e-06)
