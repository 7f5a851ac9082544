"""``rsvision export``: a checkpoint's network as ONNX, checked against PyTorch (rsvision.tasks.export)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rsvision.cli._common import CheckpointOpt, ExistOkOpt, console


def register(root: typer.Typer) -> None:
    root.command("export")(export)


def export(
    checkpoint: CheckpointOpt,
    out: Annotated[Path, typer.Option("--out", help="ONNX file to write (detect: also NAME_roi_head.onnx).")],
    img_size: Annotated[Optional[int], typer.Option(
        "--img-size", min=64, help="Example size (default: segment / change the sliding window, else the training size).")] = None,
    opset: Annotated[int, typer.Option("--opset", min=11, help="ONNX opset.")] = 17,
    check: Annotated[bool, typer.Option(
        "--check/--no-check", help="Compare with PyTorch in onnxruntime on two inputs (fails on a mismatch).")] = True,
    exist_ok: ExistOkOpt = False,
) -> None:
    """Export a classify / detect / segment / change checkpoint to ONNX. Graphs take raw pixels (the
    checkpoint's normalisation is inside); detection stops before proposal selection and rotated NMS."""
    from rsvision.errors import ConfigError
    from rsvision.tasks import load_task
    from rsvision.tasks.export import export_onnx

    targets = [out, out.with_name(f"{out.stem}_roi_head.onnx")]
    task = load_task(checkpoint, "cpu")
    clash = [str(p) for p in targets[: 2 if task.name == "detect" else 1] if p.exists()]
    if clash and not exist_ok:
        raise ConfigError(f"{', '.join(clash)} exists; pass --exist-ok to replace it")
    res = export_onnx(task, out, img_size=img_size, opset=opset, check=check)
    for f in res["files"]:
        name = Path(f).name
        diff = res["max_abs_diff"].get(name)
        checked = f"onnxruntime = PyTorch within {diff:.2g}" if diff is not None else "not checked"
        console.print(f"wrote [bold]{f}[/] ({', '.join(res['inputs'][name])} -> {', '.join(res['outputs'][name])}; "
                      f"{checked})", soft_wrap=True)
