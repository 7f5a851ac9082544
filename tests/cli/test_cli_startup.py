"""``rsvision --help`` stays light: the CLI imports no heavy library until a command runs.

Checked by module names in a fresh interpreter, not by timing (timings belong in benchmarks/).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "timm", "lightning", "rasterio", "torchvision", "matplotlib", "geopandas", "dask")


def _loaded_after(code: str) -> set[str]:
    probe = code + "\nimport sys\nprint(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_cli_help_imports_nothing_heavy():
    loaded = _loaded_after(
        "from rsvision.cli import app\n"
        "import typer.testing\n"
        "r = typer.testing.CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "for g in ('detect', 'segment', 'change', 'instance', 'classify', 'dota', 'models', 'demo'):\n"
        "    r = typer.testing.CliRunner().invoke(app, [g, '--help'])\n"
        "    assert r.exit_code == 0, (g, r.output)\n")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_import_rsvision_registers_models_in_either_order():
    for code in ("import rsvision, timm", "import timm, rsvision", "import rsvision\nfrom timm.models import create_model"):
        out = subprocess.run([sys.executable, "-c", code + "\nimport timm\nprint(timm.is_model('lsknet_t'), timm.is_model('haksnet_s'))"],
                             capture_output=True, text=True, check=True).stdout.split()
        assert out == ["True", "True"], (code, out)


def test_import_rsvision_alone_is_light():
    assert not _loaded_after("import rsvision") & set(HEAVY)


def test_library_messages_on_stdout_and_lightning_quiet_unless_verbose(capsys):
    """One logger for what a user reads (stdout, ``warning: ...``); Lightning's INFO notices need -v."""
    import logging

    from typer.testing import CliRunner

    from rsvision.cli import app

    chatter = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    runner = CliRunner()
    try:
        r = runner.invoke(app, ["weights", "list"])
        assert r.exit_code == 0, r.output
        assert not chatter.isEnabledFor(logging.INFO)
        capsys.readouterr()
        logging.getLogger("rsvision.tasks.common").warning("time budget: %d s left", 12)
        logging.getLogger("rsvision.data").info("dropped %d images", 3)
        logging.getLogger("rsvision.data").debug("not shown without -v")
        text = capsys.readouterr().out
        assert text == "warning: time budget: 12 s left\ndropped 3 images\n", text
        r = runner.invoke(app, ["--verbose", "weights", "list"])
        assert r.exit_code == 0 and chatter.isEnabledFor(logging.INFO)
        assert logging.getLogger("rsvision").isEnabledFor(logging.DEBUG)
    finally:
        runner.invoke(app, ["weights", "list"])  # leave the default levels for the tests that follow


def test_demo_writes_into_the_working_folder_and_never_over_an_earlier_demo(tmp_path, monkeypatch):
    from rsvision.cli.demo import demo_dir

    monkeypatch.chdir(tmp_path)
    assert demo_dir(None) == Path("rsvision-demo")
    Path("rsvision-demo").mkdir()
    assert demo_dir(None) == Path("rsvision-demo")  # empty: reused
    (Path("rsvision-demo") / "run").mkdir()
    assert demo_dir(None) == Path("rsvision-demo-2")
    assert demo_dir(tmp_path / "mine") == tmp_path / "mine"
