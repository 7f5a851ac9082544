"""`rsvision weights list | get NAME [--to DIR]`: the published checkpoints by name (rsvision.weights).

Imports nothing heavy (the registry is plain data; downloads use urllib), so ``--help`` stays fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Published checkpoints by name: list them, fetch them into the cache "
                       "(use them with --pretrained NAME).", no_args_is_help=True)
console = Console()


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="weights")


@app.command("list")
def list_(
    verify: bool = typer.Option(False, "--verify", help="Hash the cached files too (slow for large files)."),
) -> None:
    """Every published checkpoint rsvision knows: name, task, architecture, licence, URL, hash, cached."""
    from rsvision import weights as W

    t = Table(title=f"published weights (cache: {W.cache_dir()})")
    for col in ("name", "task", "architecture", "licence", "download", "sha256", "cached"):
        t.add_column(col, overflow="fold")
    for e in W.entries():
        sha = "yes" if e.sha256 else (f"prefix {e.sha256_prefix}" if e.sha256_prefix else "no")
        cached = W.cached_path(e).is_file() and (not verify or W.is_cached(e))
        t.add_row(e.name, e.task, e.architecture, e.licence, e.url or "manual", sha, "yes" if cached else "-")
    console.print(t)
    console.print("[dim]`rsvision weights get NAME` downloads one (or prints the manual steps); "
                  "`--pretrained NAME` uses it. LSKNet / HAKSNet weights: non-commercial use only.[/]")


@app.command("get")
def get(
    name: str = typer.Argument(..., help="A name from `rsvision weights list`."),
    to: Optional[Path] = typer.Option(None, "--to", help="Folder to put the file in (default: the cache)."),
    force: bool = typer.Option(False, "--force", help="Download again even when a good copy is there."),
) -> None:
    """Download NAME (resumable, hash-checked) and print its path; without a direct URL, print where
    to get it and the exact path to put it at. Exit 2 when the file could not be obtained."""
    from rsvision import weights as W

    try:
        entry = W.get_entry(name)
    except W.WeightsError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    console.print(f"[bold]{entry.name}[/] ({entry.task}, {entry.architecture}) from {entry.source}\n"
                  f"licence: {entry.licence}" + (f"\n{entry.notes}" if entry.notes else ""), highlight=False,
                  soft_wrap=True)  # paths and URLs stay on one line (copy-paste)
    try:
        path = W.fetch(entry, to=to, console=console, force=force)
    except W.WeightsError as exc:
        console.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    console.print(f"ready: {path}", markup=False, highlight=False, soft_wrap=True)
