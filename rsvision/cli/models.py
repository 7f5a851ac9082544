"""`rsvision models`: the registered backbones with parameters and GMACs."""
from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table


def register(app: typer.Typer) -> None:
    app.command("models")(models)


def models(
    size: int = typer.Option(1024, "--size", help="Input size (square) at which GMACs are counted."),
    in_chans: int = typer.Option(3, "--in-chans", help="Input bands."),
    num_classes: int = typer.Option(0, "--num-classes", help="Add a linear head of this many classes (0: backbone only)."),
    bench: bool = typer.Option(False, "--bench", help="Also measure images/s, plain and fast (see optimize_for_inference)."),
    device: str = typer.Option("cpu", "--device", help="Device for --bench."),
) -> None:
    """List rsvision's backbones: parameters and GMACs at --size."""
    import timm

    from rsvision.models.backbones import BACKBONES
    from rsvision.models.complexity import count_macs, count_params

    console = Console()
    table = Table(title=f"rsvision backbones (GMACs at {in_chans}x{size}x{size})")
    for col in ("model", "params", "GMACs", "stage channels", "strides"):
        table.add_column(col, justify="right" if col in ("params", "GMACs") else "left")
    rows = []
    for name in BACKBONES:
        m = timm.create_model(name, num_classes=num_classes, in_chans=in_chans)
        rows.append((name, m))
        table.add_row(
            name,
            f"{count_params(m):,}",
            f"{count_macs(m, size, in_chans) / 1e9:.2f}",
            str(m.embed_dims),
            "4, 8, 16, 32",
        )
    console.print(table)
    if bench:
        try:
            from rsvision.models.fast import benchmark_table
        except ImportError:
            console.print("[yellow]--bench needs rsvision.models.fast (not available in this build)[/]")
            raise typer.Exit(1)
        console.print(benchmark_table([n for n, _ in rows], size=size, device=device, in_chans=in_chans))
        if device == "cpu":
            from rsvision.runtime import allocator_mode

            console.print(f"[dim]allocator: {allocator_mode()} (RSVISION_MALLOC=keep|system, see README)[/]")
