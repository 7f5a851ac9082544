"""One flag vocabulary for every task (README "Command line"): walk the Typer app and check that every
``<task> train|eval|predict`` accepts the shared options, spelled the same way."""
from __future__ import annotations

import pytest
import typer.main

from rsvision.cli import app

TASKS = ("classify", "detect", "segment", "change", "instance")

#: verb -> options every task's command must accept (README "Command line").
VOCABULARY = {
    "train": {"--config", "--data", "--model", "--img-size", "--epochs", "--batch-size", "--out", "--resume",
              "--pretrained", "--device", "--precision", "--seed", "--max-time", "--set"},
    "eval": {"--checkpoint", "--data", "--split", "--split-file", "--json", "--tta", "--no-tta", "--device",
             "--fast", "--no-fast"},
    "predict": {"--checkpoint", "--out", "--tta", "--no-tta", "--device", "--exist-ok", "--fast", "--no-fast"},
}
#: where scores exist / where a picture is drawn
EXTRA = {("detect", "predict"): {"--score-thr", "--rgb", "--classes", "--max-det", "--labels", "--no-labels"},
         ("classify", "predict"): {"--score-thr", "--top-k"},
         ("segment", "predict"): {"--rgb"}, ("change", "predict"): {"--rgb"},
         ("instance", "predict"): {"--score-thr", "--rgb", "--classes", "--max-det", "--labels", "--no-labels"}}


def _commands():
    root = typer.main.get_command(app)
    for task in TASKS:
        group = root.commands[task]
        for verb in VOCABULARY:
            yield task, verb, group.commands[verb]


def _options(cmd) -> dict[str, object]:
    out = {}
    for p in cmd.params:
        for o in (*p.opts, *getattr(p, "secondary_opts", ())):
            out[o] = p
    return out


@pytest.mark.parametrize("task,verb,cmd", list(_commands()), ids=lambda x: x if isinstance(x, str) else "")
def test_every_command_speaks_the_vocabulary(task, verb, cmd):
    opts = _options(cmd)
    missing = (VOCABULARY[verb] | EXTRA.get((task, verb), set())) - set(opts)
    assert not missing, f"rsvision {task} {verb} lacks {sorted(missing)}"


def test_shared_options_have_one_meaning():
    """The same flag has the same help text and default in every command that has it."""
    seen: dict[str, tuple] = {}
    for task, verb, cmd in _commands():
        for p in cmd.params:
            name = p.opts[0]
            if name in ("--checkpoint", "--data", "--out", "--batch-size", "--window", "--overlap", "--top-k",
                        "--score-thr", "--json"):
                continue  # meaning depends on the verb (train data vs eval data, run dir vs output dir)
            key = (verb if name in ("--split",) else "", name)
            sig = (p.help, p.default if not callable(p.default) else None)
            if key in seen:
                assert seen[key][1] == sig, f"{name} differs: {seen[key][0]} vs rsvision {task} {verb}"
            else:
                seen[key] = (f"rsvision {task} {verb}", sig)


def test_predict_out_has_one_default():
    defaults = {(t, str(_options(c)["--out"].default)) for t, v, c in _commands() if v == "predict"}
    assert {d for _, d in defaults} == {"predictions"}, defaults
