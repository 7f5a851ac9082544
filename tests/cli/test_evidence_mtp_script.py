"""benchmarks/evidence_mtp.py: equal budgets per arm, the held-out image kept out, the table's mean ± std.

Pure-Python checks of the script's plan (no training, no torch): the runs themselves are the benchmark.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("evidence_mtp", ROOT / "benchmarks" / "evidence_mtp.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _opt(cmd: list[str], name: str) -> list[str]:
    return [cmd[i + 1] for i, c in enumerate(cmd) if c == name]


def test_arms_differ_only_in_pretrained_weights(tmp_path):
    E = _script()
    assert E.HELDOUT not in E.DOTA_PRETRAIN and E.HELDOUT not in E.DET_TRAIN
    for task in E.TASKS:
        cmds = {arm: E.finetune_cmd(task, arm, 1, tmp_path) for arm in E.ARMS}
        assert not _opt(cmds["scratch"], "--pretrained")
        for arm in ("seg", "mtp"):
            assert _opt(cmds[arm], "--pretrained") == [str(tmp_path / "runs" / f"pretrain_{arm}" / "encoder.pth")]
            i = cmds[arm].index("--pretrained")
            assert cmds[arm][:i] + cmds[arm][i + 2:] == cmds["scratch"]  # same budget, data, seed
        assert f"trainer.extra.max_steps={E.BUDGET[task]['steps']}" in _opt(cmds["scratch"], "--set")
        assert _opt(cmds["scratch"], "--seed") == ["1"]


def test_every_arm_and_task_runs_the_chosen_encoder(tmp_path):
    E = _script()
    for enc in E.ENCODERS:
        for task in E.TASKS:
            for arm in E.ARMS:
                assert _opt(E.finetune_cmd(task, arm, 0, tmp_path, enc), "--model") == [enc]


def test_table_and_collect(tmp_path):
    E = _script()
    for seed, v in ((0, 0.5), (1, 0.7)):
        name = f"classify_mtp_s{seed}"
        (tmp_path / "eval").mkdir(exist_ok=True)
        (tmp_path / "eval" / f"{name}.json").write_text(json.dumps({"overall_accuracy": v}))
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "train.done").write_text(json.dumps({"seconds": 1.0, "resumed": False}))
    (tmp_path / "eval" / "classify_seg_s0.json").write_text(json.dumps({"overall_accuracy": 0.25}))  # no train.done
    pre, rows = E.collect(tmp_path, [0, 1], ["classify"])
    assert pre == {} and [(r["arm"], r["seed"], r["value"]) for r in rows] == [("mtp", 0, 0.5), ("mtp", 1, 0.7)]
    line = next(x for x in E.table(rows).splitlines() if x.startswith("| RSSCN7"))
    assert line == "| RSSCN7 OA | - | - | 0.600 ± 0.141 (2 seeds) |"
