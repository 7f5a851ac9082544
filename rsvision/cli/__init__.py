"""The `rsvision` command line: a thin Typer layer over the library.

Each command group lives in its own module (``rsvision/cli/<group>.py``) exposing
``register(app: typer.Typer) -> None``; this file finds them (every module not starting with
``_``) and wires them together, so a new task family is one new file here, no edit.
"""
from __future__ import annotations

import importlib

import typer

from rsvision import __version__

# Order of the known groups in ``--help``; any other module of this package follows alphabetically.
_ORDER = ("models", "demo", "classify", "detect", "segment", "change", "dota")


def _groups() -> list[str]:
    import pkgutil

    found = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    return sorted(found, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))

app = typer.Typer(
    name="rsvision",
    help="Remote-sensing image understanding: backbones, classification, rotated detection, "
    "segmentation and change detection.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"rsvision {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """rsvision command line."""
    from rsvision.runtime import apply_env_malloc

    apply_env_malloc()  # keep freed memory in the heap (RSVISION_MALLOC=system: glibc defaults)


for _name in _groups():
    importlib.import_module(f"rsvision.cli.{_name}").register(app)


def main() -> None:
    """Console-script entry point."""
    from rsvision.errors import RSVisionError

    try:
        app()
    except RSVisionError as exc:  # user errors: one clear line, no traceback
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]error:[/] {exc}")
        raise SystemExit(2)
