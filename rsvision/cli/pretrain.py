"""``rsvision pretrain ssl``: self-supervised pretraining (thin layer over rsvision.tasks.ssl).

Other pretraining recipes (e.g. ``pretrain mtp``) add their command to the same ``app``.
"""
from __future__ import annotations

import typer

from rsvision.cli._common import train_command

app = typer.Typer(help="Pretrain encoders whose checkpoints every task loads with --pretrained.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="pretrain")


app.command("ssl")(train_command(
    "rsvision.tasks.ssl:SSLConfig",
    "Self-supervised SkySense V2 pretraining on S1 / S2 data (multi-crop contrast + QSACL, EMA teacher, MoE "
    "balance loss) into a run directory (best/last.ckpt, encoder.pth, config.yaml, metrics.csv)."))
