"""``rsvision pretrain ssl|mtp``: self-supervised and multi-task pretraining (thin layers over rsvision.tasks).

``pretrain mtp`` (multi-task pretraining, rsvision.tasks.mtp) is the second command of the same ``app``.
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

app.command("mtp")(train_command(
    "rsvision.tasks.mtp:MTPConfig",
    "Multi-task pretraining (MTP): one encoder trained by semantic segmentation and rotated detection on "
    "multi-task data (SAMRS, or DOTA / DIOR-R / iSAID converted) into a run directory (best/last.ckpt, "
    "encoder.pth, config.yaml, metrics.csv).", presets=("tiny", "small", "published")))
