"""Fault injection: bad inputs x commands, bad options, reused and shared output folders, kill -9.

Every case asserts the exit code (0 for an input rsvision handles, 2 for one the user must fix),
that the message names the file or option, and that the output folder holds what it held before
plus the good results: no partial files, no temporary files, no lock left behind.
Checkpoints are tiny untrained models saved the way training saves them (no training here).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.transform import from_origin
from rsvision.cli import main
from rsvision.outputs import LOCK_NAME, claim_dir
DET_MODEL = {"type": "OrientedRCNN", "backbone": "lsknet_t", "fpn_channels": 16, "fc_channels": 32,
             "backbone_drop_rate": 0.0, "backbone_drop_path_rate": 0.0,
             "rpn": {"nms_pre": 50, "max_per_img": 20}, "rcnn": {"max_per_img": 10}}
INST_MODEL = {"type": "MaskRCNN", "backbone": "lsknet_t", "backbone_drop_path_rate": 0.0,
              "backbone_kwargs": {"embed_dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]},
              "decoder": {"fpn_channels": 16, "representation_size": 32, "mask_channels": 16, "mask_layers": 1}}


class Result:
    def __init__(self, exit_code: int, output: str):
        self.exit_code, self.output, self.exception = exit_code, output, None


def run(args) -> Result:
    """The ``rsvision`` command as a user runs it (``main``: its error handling and exit codes)."""
    import contextlib
    import io

    buf = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return Result(code, buf.getvalue())


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # rich wraps at the terminal width: keep paths on one line


def _save(task, path: Path) -> str:
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, path)
    return str(path)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    from rsvision.tasks.change import ChangeTask
    from rsvision.tasks.classification import ClassificationTask
    from rsvision.tasks.detection import DetectionTask
    from rsvision.tasks.instance import InstanceTask
    from rsvision.tasks.segmentation import SegmentationTask

    d = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    rgb = dict(mean=[120.0, 120.0, 120.0], std=[50.0, 50.0, 50.0], dtype="uint8")
    dense = {"backbone": "test_convnext", "decoder": "upernet", "channels": 16, "in_chans": 3}
    return {
        "classify": _save(ClassificationTask(model={"name": "test_resnet"},
                                             data=dict(classes=["a", "b"], in_chans=3, img_size=32, **rgb)),
                          d / "classify.ckpt"),
        "segment": _save(SegmentationTask(model=dense, data=dict(classes=["x", "y"], img_size=64, **rgb)),
                         d / "segment.ckpt"),
        "change": _save(ChangeTask(model={**dense, "fusion": "diff"},
                                   data=dict(classes=["unchanged", "changed"], img_size=64, **rgb)),
                        d / "change.ckpt"),
        "detect": _save(DetectionTask(model=DET_MODEL, data=dict(class_names=["ship", "car"], img_size=64, **rgb)),
                        d / "detect.ckpt"),
        "instance": _save(InstanceTask(model=INST_MODEL, data=dict(classes=["ship", "car"], img_size=64, **rgb)),
                          d / "instance.ckpt"),
    }


# --- the bad inputs, generated --------------------------------------------------------------------
def _geotiff(path, arr, nodata=None, dtype=None):
    arr = np.asarray(arr)
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0],
                       dtype=dtype or arr.dtype, crs="EPSG:32632", transform=from_origin(500000, 5000000, 1, 1),
                       nodata=nodata) as ds:
        ds.write(arr)
    return path


def _scene(seed=0, size=48):
    return (np.random.default_rng(seed).random((3, size, size)) * 255).astype(np.uint8)


def _huge_png(path: Path, side: int = 65000) -> Path:
    """A 1-row PNG whose header claims side x side pixels (a decompression bomb in 100 bytes)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


def _truncate(src: Path, dst: Path) -> Path:
    b = src.read_bytes()
    dst.write_bytes(b[: len(b) // 2])
    return dst


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    good = d / "good.png"
    Image.fromarray(_scene().transpose(1, 2, 0)).save(good)
    Image.fromarray(_scene(1).transpose(1, 2, 0)).save(d / "good.jpg", quality=95)
    _geotiff(d / "good.tif", _scene(2))
    nan = _scene(3).astype(np.float32) / 255
    nan[:, :10, :10] = np.nan
    bad = {
        "truncated.png": _truncate(good, d / "truncated.png"),
        "truncated.jpg": _truncate(d / "good.jpg", d / "truncated.jpg"),
        "truncated.tif": _truncate(d / "good.tif", d / "truncated.tif"),
        "empty.png": d / "empty.png",
        "empty.tif": d / "empty.tif",
        "huge.png": _huge_png(d / "huge.png"),
        "five_bands.tif": _geotiff(d / "five_bands.tif", np.zeros((5, 40, 40), np.uint8)),
        "complex.tif": _geotiff(d / "complex.tif", np.zeros((3, 20, 20), np.complex64)),
        "all_nodata.tif": _geotiff(d / "all_nodata.tif", np.zeros((3, 40, 40), np.uint8), nodata=0),
        "all_nan.tif": _geotiff(d / "all_nan.tif", np.full((3, 40, 40), np.nan, np.float32)),
        "missing.png": d / "missing.png",
        "not_an_image.png": d / "not_an_image.png",
    }
    (d / "empty.png").write_bytes(b"")
    (d / "empty.tif").write_bytes(b"")
    (d / "not_an_image.png").write_text("hello")
    with rasterio.open(d / "sparse_huge.tif", "w", driver="GTiff", width=100_000, height=100_000, count=3,
                       dtype="uint8", tiled=True, sparse_ok=True, nodata=0) as ds:
        pass
    bad["sparse_huge.tif"] = d / "sparse_huge.tif"
    handled = {  # inputs rsvision must take, with a prediction
        "nan_partial.tif": _geotiff(d / "nan_partial.tif", nan),
        "uint16.tif": _geotiff(d / "uint16.tif", _scene(2).astype(np.uint16) * 257),
        "one_pixel.png": d / "one_pixel.png",
        "tiny_5x3.tif": _geotiff(d / "tiny_5x3.tif", _scene(4)[:, :3, :5]),
    }
    Image.fromarray(np.full((1, 1, 3), 128, np.uint8)).save(d / "one_pixel.png")
    return {"dir": d, "good": good, "bad": bad, "handled": handled}


def _state(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def _predict(task, ckpts, files, out, *extra, partner=None):
    """``<task> predict``; change detection takes pairs: each file is date A, ``partner`` (default: the
    file itself) date B."""
    files = [str(f) for f in files]
    if task == "change":
        files = [x for f in files for x in (f, str(partner or f))]
    return run([task, "predict", "--checkpoint", ckpts[task], *files, "--out", str(out), *extra])


TASKS = ["classify", "segment", "change", "detect", "instance"]
BAD = ["truncated.png", "truncated.jpg", "truncated.tif", "empty.png", "empty.tif", "huge.png", "five_bands.tif",
       "complex.tif", "all_nodata.tif", "all_nan.tif", "missing.png", "not_an_image.png", "sparse_huge.tif"]
HANDLED = ["nan_partial.tif", "uint16.tif", "one_pixel.png", "tiny_5x3.tif"]


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("bad", BAD)
def test_bad_input_is_a_clear_error_and_nothing_is_written(task, bad, ckpts, inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier results")
    path = inputs["bad"][bad]
    r = _predict(task, ckpts, [inputs["good"], path], out, "--exist-ok", partner=inputs["good"])
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert path.name in r.output, r.output  # the message names the file
    assert "Traceback" not in r.output
    # earlier results untouched; at most the good input's outputs added; nothing of the bad one,
    # no temporary file, no lock left behind
    names = _state(out)
    assert (out / "keep.txt").read_text() == "earlier results"
    assert not any(n.startswith(path.stem) or ".tmp" in n or n == LOCK_NAME for n in names), names
    assert names <= {"keep.txt"} | {n for n in names if n.startswith("good")}, names


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", HANDLED)
def test_handled_inputs_predict(task, name, ckpts, inputs, tmp_path):
    out = tmp_path / "out"
    r = _predict(task, ckpts, [inputs["handled"][name]], out)
    assert r.exit_code == 0, (r.output, r.exception)
    files = _state(out)
    assert files and not any(".tmp" in f or f == LOCK_NAME for f in files), files


def test_nan_pixels_never_reach_the_model(ckpts, inputs, tmp_path):
    """NaN pixels read as the band means: the mask is valid outside them, nodata (255) on them."""
    r = _predict("segment", ckpts, [inputs["handled"]["nan_partial.tif"]], tmp_path / "o")
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "o" / "nan_partial_mask.tif") as m:
        mask = m.read(1)
    assert (mask[:10, :10] == 255).all() and (mask[10:, 10:] != 255).all()


def test_uint16_and_float_versions_of_a_scene_agree_with_uint8(ckpts, tmp_path):
    """The checkpoint records its training dtype (uint8): uint16 (x257) and float (/255) copies of
    the same scene are rescaled to it and give the same mask."""
    scene = _scene(7, 64)
    versions = {"u8": scene, "u16": scene.astype(np.uint16) * 257, "f32": scene.astype(np.float32) / 255}
    masks = {}
    for k, arr in versions.items():
        src = _geotiff(tmp_path / f"{k}.tif", arr)
        r = _predict("segment", ckpts, [src], tmp_path / k)
        assert r.exit_code == 0, r.output
        with rasterio.open(tmp_path / k / f"{k}_mask.tif") as m:
            masks[k] = m.read(1)
    assert np.array_equal(masks["u8"], masks["u16"]) and np.array_equal(masks["u8"], masks["f32"])


# --- output folders ---------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_reused_out_is_refused_without_exist_ok(task, ckpts, inputs, tmp_path):
    out = tmp_path / "out"
    assert _predict(task, ckpts, [inputs["good"]], out).exit_code == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    r = _predict(task, ckpts, [inputs["good"]], out)
    assert r.exit_code == 2 and "--exist-ok" in r.output and str(out) in r.output
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # untouched
    assert _predict(task, ckpts, [inputs["good"]], out, "--exist-ok").exit_code == 0


def test_out_that_is_a_file_and_json_that_is_a_folder(ckpts, inputs, tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    r = _predict("segment", ckpts, [inputs["good"]], f)
    assert r.exit_code == 2 and "is a file" in r.output and f.read_text() == "x"
    folder = tmp_path / "folder"
    folder.mkdir()
    seg = tmp_path / "segdata"
    (seg / "images").mkdir(parents=True)
    (seg / "masks").mkdir()
    Image.fromarray(_scene().transpose(1, 2, 0)).save(seg / "images" / "a.png")
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(seg / "masks" / "a.png")
    r = run(["segment", "eval", "--checkpoint", ckpts["segment"], "--data", str(seg), "--json", str(folder)])
    assert r.exit_code == 2 and "--json" in r.output and "is a folder" in r.output


def test_same_stem_inputs_get_distinct_outputs(ckpts, inputs, tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.fromarray(_scene(ord(sub)).transpose(1, 2, 0)).save(tmp_path / sub / "x.png")
    out = tmp_path / "out"
    r = _predict("segment", ckpts, [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"], out)
    assert r.exit_code == 0, r.output
    assert {"a__x_mask.png", "b__x_mask.png"} <= _state(out), _state(out)


def test_a_second_command_into_a_locked_folder_stops(ckpts, inputs, tmp_path):
    out = tmp_path / "out"
    with claim_dir(out):  # another rsvision command is writing here
        r = _predict("detect", ckpts, [inputs["good"]], out, "--exist-ok")
    assert r.exit_code == 2 and "another rsvision command" in r.output
    assert _state(out) == set()


def _cli(*args, wait_for: Path | None = None) -> list[str]:
    """``rsvision ARGS`` in a fresh interpreter; with ``wait_for``, imported first and started only
    once that file exists (so two processes really overlap, whatever the import time)."""
    # the CLI imports the task layer lazily: import it before waiting, or the first run can finish first
    wait = ("import time, pathlib, rsvision.tasks, rsvision.tasks.segmentation, rsvision.tasks.change\n"
            f"while not pathlib.Path({str(wait_for)!r}).exists(): time.sleep(0.01)\n") if wait_for else ""
    code = f"import sys\nfrom rsvision.cli import main\n{wait}main(sys.argv[1:])\n"
    return [sys.executable, "-c", code, *[str(a) for a in args]]


def _scenes(tmp_path, n, size=256):
    paths = []
    for i in range(n):
        paths.append(_geotiff(tmp_path / f"s{i}.tif", _scene(i, size)))
    return paths


def test_two_concurrent_predicts_into_one_folder(ckpts, tmp_path):
    """Two real processes: the second stops with a clear message while the first writes; the first's
    results are complete."""
    # enough work (windows at stride 16) that the first is still writing when the second checks, even under load
    scenes, out = _scenes(tmp_path, 6, size=384), tmp_path / "out"
    args = ["segment", "predict", "--checkpoint", ckpts["segment"], "--window", "64", "--overlap", "48", "--out", out]
    second = subprocess.Popen(_cli(*args, scenes[0], "--exist-ok", wait_for=out / LOCK_NAME),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = subprocess.run(_cli(*args, *scenes), capture_output=True, text=True, timeout=300)
    err = second.communicate(timeout=300)[1]
    assert first.returncode == 0, first.stderr
    assert second.returncode == 2 and "another rsvision command" in err, err
    assert {f"s{i}_mask.tif" for i in range(6)} <= _state(out) and LOCK_NAME not in _state(out)


def test_kill_9_while_writing_leaves_no_half_file_and_a_rerun_completes(ckpts, tmp_path):
    scenes, out = _scenes(tmp_path, 8), tmp_path / "out"
    args = ["segment", "predict", "--checkpoint", ckpts["segment"], *scenes, "--out", out, "--window", "64",
            "--overlap", "32"]
    proc = subprocess.Popen(_cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(out.glob("s1_*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / LOCK_NAME).exists()  # killed while writing
    for f in out.glob("s*_mask.tif"):  # whatever is there is whole
        with rasterio.open(f) as m:
            m.read(1)
    r = subprocess.run(_cli(*args, "--exist-ok"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr  # the stale lock is taken over
    names = _state(out)
    assert {f"s{i}_mask.tif" for i in range(8)} <= names
    assert not any(".tmp" in n for n in names) and LOCK_NAME not in names, names


# --- training run directories --------------------------------------------------------------------
@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory):
    from rsvision.data.synthetic.scenes import make_scene_dataset

    d = tmp_path_factory.mktemp("scenes")
    make_scene_dataset(d, num_classes=2, per_class=10, size=24, seed=0)
    return d


TRAIN = ["--model", "test_resnet", "--img-size", "16", "--batch-size", "4", "--set", "trainer.progress=none",
         "--set", "trainer.threads=1", "--set", "trainer.log_every_n_steps=1"]


def test_train_refuses_a_used_run_dir_and_a_resume_without_checkpoint(scenes_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    r = run(["classify", "train", "--data", scenes_dir, "--out", run_dir, *TRAIN])
    assert r.exit_code == 2 and "--resume" in r.output and str(run_dir) in r.output
    r = run(["classify", "train", "--data", scenes_dir, "--out", run_dir, "--resume", *TRAIN])
    assert r.exit_code == 2 and "last.ckpt" in r.output
    assert _state(run_dir) == {"notes.txt"}


def test_evil_last_ckpt_under_resume_is_refused_and_the_run_dir_kept(scenes_dir, tmp_path):
    import pickle

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    flag = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {flag}",))

    (run_dir / "last.ckpt").write_bytes(pickle.dumps(Evil()))
    (run_dir / "config.yaml").write_text("the earlier run's config\n")
    r = run(["classify", "train", "--data", scenes_dir, "--out", run_dir, "--resume", "--epochs", "2", *TRAIN])
    assert r.exit_code == 2 and "last.ckpt" in r.output, r.output
    assert not flag.exists()  # weights_only: the pickle never ran
    assert (run_dir / "config.yaml").read_text() == "the earlier run's config\n"  # still describes its checkpoint


def test_kill_9_during_training_then_resume(scenes_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = ["classify", "train", "--data", scenes_dir, "--out", run_dir, "--epochs", "40", *TRAIN]
    proc = subprocess.Popen(_cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not (run_dir / "last.ckpt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # well inside a later epoch, maybe inside a checkpoint write
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run_dir / LOCK_NAME).exists() and (run_dir / "last.ckpt").exists()
    epoch = torch.load(run_dir / "last.ckpt", weights_only=True)["epoch"]  # whole: written atomically
    r = subprocess.run(_cli(*args[:-len(TRAIN)], "--resume", "--epochs", str(epoch + 3), *TRAIN),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert torch.load(run_dir / "last.ckpt", weights_only=True)["epoch"] == epoch + 2
    names = _state(run_dir)
    assert LOCK_NAME not in names and not any(".tmp" in n for n in names) and "config.yaml" in names


# --- bad options: a clear message naming the option, exit 2, before any work ---------------------------
@pytest.mark.parametrize("args, needle", [
    (["classify", "train", "--batch-size", "0"], "--batch-size"),
    (["classify", "train", "--img-size", "-5"], "--img-size"),
    (["classify", "train", "--epochs", "0"], "--epochs"),
    (["detect", "train", "--epochs", "-1"], "--epochs"),
    (["segment", "train", "--precision", "7"], "precision"),
    (["change", "train", "--seed", "-3"], "--seed"),
    (["detect", "predict", "--checkpoint", "{detect}", "{good}", "--window", "0"], "--window"),
    (["segment", "predict", "--checkpoint", "{segment}", "{good}", "--overlap", "-1"], "--overlap"),
    (["classify", "predict", "--checkpoint", "{classify}", "{good}", "--top-k", "0"], "--top-k"),
    (["segment", "predict", "--checkpoint", "{change}", "{good}"], "change checkpoint"),
    (["change", "predict", "--checkpoint", "{segment}", "{good}", "{good}"], "segment checkpoint"),
    (["classify", "eval", "--checkpoint", "{classify}", "--data", "{cls}", "--split", "test",
      "--split-file", "{dir}/nope.csv"], "nope.csv"),
    (["detect", "predict", "--checkpoint", "{dir}/nope.ckpt", "{good}"], "nope.ckpt"),
])
def test_bad_options(args, needle, ckpts, inputs, tmp_path):
    cls = tmp_path / "cls"
    for c in ("a", "b"):
        (cls / c).mkdir(parents=True)
        Image.fromarray(_scene().transpose(1, 2, 0)).save(cls / c / "x.png")
    fill = {**ckpts, "good": str(inputs["good"]), "dir": str(inputs["dir"]), "cls": str(cls)}
    args = [a.format(**fill) for a in args]
    if args[1] == "train":
        args += ["--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "run")]
    if args[1] == "predict":
        args += ["--out", str(tmp_path / "pred")]
    r = run(args)
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert needle in r.output, r.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "pred").exists()


def test_train_config_values_are_checked(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("trainer:\n  max_epochs: 2.7\n")
    r = run(["classify", "train", "--config", cfg, "--data", tmp_path])
    assert r.exit_code == 2 and "max_epochs" in r.output and "c.yaml" in r.output


def test_device_without_cuda_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = run(["segment", "train", "--data", tmp_path, "--device", "cuda", "--out", tmp_path / "r"])
    assert r.exit_code == 2 and "CUDA is not available" in r.output
    assert not (tmp_path / "r").exists()


def test_a_run_that_fails_before_writing_leaves_no_new_folder(tmp_path):
    def fail_in(folder, write=False):
        with pytest.raises(RuntimeError), claim_dir(folder):
            if write:
                (folder / "partial.txt").write_text("x")
            raise RuntimeError("bad option found after the folder was claimed")

    fail_in(tmp_path / "new" / "run")
    assert not (tmp_path / "new" / "run").exists()
    (tmp_path / "mine").mkdir()
    fail_in(tmp_path / "mine")  # the user's own empty folder stays
    assert (tmp_path / "mine").is_dir()
    fail_in(tmp_path / "half", write=True)  # what a failed run wrote stays (resume, diagnosis)
    assert (tmp_path / "half" / "partial.txt").exists()
    with claim_dir(tmp_path / "ok"):
        pass
    assert (tmp_path / "ok").is_dir()


def test_a_lock_held_by_a_zombie_or_a_reused_pid_is_taken_over(tmp_path):
    """A killed run's processes can stay zombies until reaped, and a dead holder's pid can belong to
    another process later: neither is writing, so neither keeps the folder locked."""
    import json
    import socket

    from rsvision.outputs import _pid_alive, _proc_stat

    if _proc_stat(os.getpid()) is None:
        pytest.skip("no /proc")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    for _ in range(200):  # exited but not waited for: a zombie
        if _proc_stat(child.pid)[0] == "Z":
            break
        time.sleep(0.05)
    try:
        assert not _pid_alive(child.pid)
        (tmp_path / "a").mkdir()
        (tmp_path / "a" / LOCK_NAME).write_text(json.dumps({"pid": child.pid, "host": socket.gethostname()}))
        with claim_dir(tmp_path / "a", exist_ok=True):
            assert json.loads((tmp_path / "a" / LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        child.wait()
    me = _proc_stat(os.getpid())[1]
    assert _pid_alive(os.getpid(), me) and not _pid_alive(os.getpid(), str(int(me) + 1))
    (tmp_path / "b").mkdir()  # this very pid, recorded with another start time: a previous owner of the pid
    (tmp_path / "b" / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                        "started": str(int(me) + 1)}))
    with claim_dir(tmp_path / "b", exist_ok=True):
        pass
    (tmp_path / "c").mkdir()  # a live holder still stops a second command
    (tmp_path / "c" / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                        "started": me}))
    with pytest.raises(Exception, match="another rsvision command"), claim_dir(tmp_path / "c", exist_ok=True):
        pass


def test_an_empty_lock_left_by_a_kill_between_create_and_write_is_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text("")
    with claim_dir(tmp_path, exist_ok=True):
        assert (tmp_path / LOCK_NAME).read_text().startswith("{")
    assert not (tmp_path / LOCK_NAME).exists()
