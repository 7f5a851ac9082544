"""The `rsvision` command line: a thin Typer layer over the library.

Each command group lives in its own module (``rsvision/cli/<group>.py``) exposing
``register(app: typer.Typer) -> None``; this file finds them (every module not starting with
``_``) and wires them together, so a new task family is one new file here, no edit.
"""
from __future__ import annotations

import importlib
import logging
import sys

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


_DEBUG = {"on": False}
# Lightning's INFO notices ("GPU available", "Loading `train_dataloader`", "`Trainer.fit` stopped") come from these
_LIGHTNING_CHATTER = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                      "lightning.fabric.utilities.seed", "lightning.pytorch.utilities.seed")


class _StdoutHandler(logging.Handler):
    """The library's messages (logger ``rsvision``) on stdout, where results go, as plain lines:
    ``text`` for information, ``warning: text`` above it. ``sys.stdout`` is looked up per record so
    redirected / captured output (pipes, Typer's CliRunner) gets them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            level = record.levelname.lower()
            sys.stdout.write(f"{msg}\n" if record.levelno <= logging.INFO else f"{level}: {msg}\n")
            sys.stdout.flush()
        except Exception:  # noqa: BLE001 - a logging failure must never end a run
            self.handleError(record)


def setup_logging(verbose: bool = False) -> None:
    """One logger for user-facing messages; Lightning's chatter only with ``--verbose``."""
    lib = logging.getLogger("rsvision")
    if not any(isinstance(h, _StdoutHandler) for h in lib.handlers):
        lib.addHandler(_StdoutHandler())
    lib.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in _LIGHTNING_CHATTER:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Show the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show the Python traceback of an error."),
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="Also show Lightning's own notices and the library's debug messages."),
) -> None:
    """rsvision command line."""
    import os

    setup_logging(verbose or os.environ.get("RSVISION_VERBOSE", "") not in ("", "0"))

    from rsvision.runtime import apply_env_malloc

    _DEBUG["on"] = debug or os.environ.get("RSVISION_DEBUG", "") not in ("", "0")

    apply_env_malloc()  # keep freed memory in the heap (RSVISION_MALLOC=system: glibc defaults)


for _name in _groups():
    importlib.import_module(f"rsvision.cli.{_name}").register(app)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: every error ends in one clear line on stderr, no traceback unless
    ``--debug`` (or ``RSVISION_DEBUG=1``). Exit codes: 2 for what the user can fix (bad input, option,
    file, checkpoint, or the disk / permissions), 1 for an internal error, 130 when interrupted."""
    from rich.console import Console

    from rsvision.errors import RSVisionError

    err = Console(stderr=True)
    try:
        app(args=argv, prog_name="rsvision")  # click reports bad options / usage itself (exit 2)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        err.print("[bold red]interrupted[/]")
        raise SystemExit(130)
    except Exception as exc:  # noqa: BLE001 - the one place every error is reported
        if _DEBUG["on"]:
            raise
        if isinstance(exc, RSVisionError):  # user errors
            err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
            raise SystemExit(2)
        if isinstance(exc, (OSError, MemoryError)):  # disk full, permissions, out of memory
            err.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}", highlight=False)
            raise SystemExit(2)
        err.print(f"[bold red]internal error:[/] {type(exc).__name__}: {exc}\n"
                  "rerun with --debug for the traceback, and please report it", highlight=False)
        raise SystemExit(1)
