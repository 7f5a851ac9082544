"""``rsvision --help`` stays light: the CLI imports no heavy library until a command runs.

Checked by module names in a fresh interpreter, not by timing (timings belong in benchmarks/).
"""
from __future__ import annotations

import subprocess
import sys

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
        "for g in ('detect', 'segment', 'change', 'classify', 'dota', 'models', 'demo'):\n"
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
