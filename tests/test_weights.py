"""Published weights (rsvision.weights, `rsvision weights`): downloads against a server on 127.0.0.1 only.

The handler serves files from memory, honours ``Range: bytes=N-`` (206 + Content-Range), records every
request's Range header, and can be told to close the connection after N bytes of a body.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import os
import threading
from pathlib import Path

import pytest
import typer.testing

from rsvision import weights as W
from rsvision.errors import CheckpointError

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes: more than one read chunk
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Server:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.ranges: list[str | None] = []
        self.drop_after: int | None = None  # close the next body after this many bytes (then reset)
        self.ignore_range = False  # answer 200 + the whole file, as servers without Range support do
        state = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                if self.path.startswith("/redirect/"):  # like Hugging Face's resolve/ URLs (302 to a CDN)
                    self.send_response(302)
                    self.send_header("Location", self.path[len("/redirect"):])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = state.files.get(self.path.lstrip("/"))
                rng = self.headers.get("Range")
                state.ranges.append(rng)
                if state.ignore_range:
                    rng = None
                if data is None:
                    self.send_error(404)
                    return
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(data) and rng:
                    self.send_error(416)
                    return
                body = data[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if state.drop_after is not None:
                    n, state.drop_after = state.drop_after, None
                    self.wfile.write(body[:n])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        if not self.thread.is_alive():
            return
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    s.files["w.pth"] = PAYLOAD
    yield s
    s.stop()


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("RSVISION_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RSVISION_WEIGHTS_MIRROR", raising=False)
    return tmp_path / "home" / "weights"


def _entry(server, **kw) -> W.WeightsEntry:
    base = dict(name="test_net.local", architecture="lsknet_t", task="backbone-imagenet", source=server.base,
                file_name="w.pth", licence="test", url=f"{server.base}/w.pth", sha256=SHA)
    return W.WeightsEntry(**{**base, **kw})


@pytest.fixture
def entry(server, monkeypatch):
    e = _entry(server)
    monkeypatch.setattr(W, "REGISTRY", [*W.REGISTRY, e])
    return e


def test_registry_is_sane():
    names = [e.name for e in W.REGISTRY]
    assert len(names) == len(set(names))
    for e in W.REGISTRY:
        assert e.url or e.manual, e.name  # every entry can be obtained somehow
        assert e.sha256 is None or len(e.sha256) == 64
        if e.sha256_prefix:  # OpenMMLab names end in -<first 8 hex of sha256>.pth
            assert e.file_name.endswith(f"-{e.sha256_prefix}.pth") and e.url.endswith(e.file_name)
    assert {"lsknet_t.in1k", "lsknet_s.in1k", "lsknet_t.orcnn_dota", "lsknet_s.orcnn_dota", "haksnet_t.in1k",
            "haksnet_s.in1k", "vit_b_rvsa.mtp", "vit_l_rvsa.mtp"} <= set(names)


def test_full_download_checks_the_hash(server, home, entry):
    p = W.fetch(entry.name)
    assert p == home / "w.pth" and p.read_bytes() == PAYLOAD
    assert server.ranges == [None]
    assert not list(home.glob("*.part"))


def test_interrupted_download_resumes_with_range(server, home, entry):
    server.drop_after = 300_000
    with pytest.raises(W.WeightsError, match="interrupted.*run the command again"):
        W.fetch(entry, retries=0)
    part = home / "w.pth.part"
    assert part.stat().st_size == 300_000 and not (home / "w.pth").exists()
    p = W.fetch(entry, retries=0)
    assert server.ranges == [None, "bytes=300000-"]
    assert p.read_bytes() == PAYLOAD and not part.exists()


def test_resume_through_a_redirect_and_without_range_support(server, home, monkeypatch):
    e = _entry(server, url=f"{server.base}/redirect/w.pth")
    monkeypatch.setattr(W, "REGISTRY", [e])
    server.drop_after = 200_000
    with pytest.raises(W.WeightsError, match="interrupted"):
        W.fetch(e, retries=0)
    assert W.fetch(e, retries=0).read_bytes() == PAYLOAD
    assert server.ranges == [None, "bytes=200000-"]  # the Range header survives the redirect
    (home / "w.pth").unlink()
    server.drop_after, server.ignore_range = 100_000, True
    with pytest.raises(W.WeightsError, match="interrupted"):
        W.fetch(e, retries=0)
    assert W.fetch(e, retries=0).read_bytes() == PAYLOAD  # a 200 answer to a Range request: start over


def test_readme_table_names_exist():
    import re

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Published weights", 1)[1].split("\n## ", 1)[0]
    names = set(re.findall(r"`([a-z_0-9]+\.[a-z_0-9]+)`", section))
    assert names and names <= {e.name for e in W.REGISTRY}, names - {e.name for e in W.REGISTRY}


def test_interruption_retried_within_one_call(server, home, entry):
    server.drop_after = 123_457
    assert W.fetch(entry, retries=2).read_bytes() == PAYLOAD
    assert server.ranges == [None, "bytes=123457-"]


def test_hash_mismatch_refused_and_deleted(server, home, monkeypatch):
    bad = _entry(server, sha256="0" * 64)
    monkeypatch.setattr(W, "REGISTRY", [bad])
    with pytest.raises(W.WeightsError, match="refused and deleted: sha256"):
        W.fetch(bad)
    assert not (home / "w.pth").exists() and not (home / "w.pth.part").exists()


def test_hash_prefix_checked(server, home):
    ok = _entry(server, sha256=None, sha256_prefix=SHA[:8])
    assert W.fetch(ok).read_bytes() == PAYLOAD
    wrong = _entry(server, sha256=None, sha256_prefix="deadbeef", file_name="w.pth")
    (home / "w.pth").unlink()
    with pytest.raises(W.WeightsError, match="published prefix"):
        W.fetch(wrong)
    assert not (home / "w.pth").exists() and not (home / "w.pth.part").exists()


def test_corrupt_cached_file_is_replaced(server, home, entry):
    home.mkdir(parents=True)
    (home / "w.pth").write_bytes(b"garbage")
    assert W.fetch(entry).read_bytes() == PAYLOAD and len(server.ranges) == 1


def test_offline_use_of_the_cache(server, home, entry, monkeypatch):
    W.fetch(entry)
    server.stop()
    assert W.fetch(entry) == home / "w.pth"
    assert W.resolve_pretrained(entry.name) == home / "w.pth"
    nohash = _entry(server, name="nohash.local", sha256=None, url="http://127.0.0.1:9/never")
    monkeypatch.setattr(W, "REGISTRY", [nohash])
    assert W.fetch(nohash) == home / "w.pth"  # no hash known: the file's presence is enough, no request


def test_download_into_to_dir_and_mirror(server, home, tmp_path, monkeypatch):
    e = _entry(server, url=None, manual="ask a colleague")
    monkeypatch.setattr(W, "REGISTRY", [e])
    with pytest.raises(W.WeightsError, match="no direct download URL"):
        W.fetch(e)
    monkeypatch.setenv("RSVISION_WEIGHTS_MIRROR", server.base + "/")
    p = W.fetch(e, to=tmp_path / "mine")
    assert p == tmp_path / "mine" / "w.pth" and p.read_bytes() == PAYLOAD


def test_unknown_name_and_missing_path(entry, home):
    with pytest.raises(W.WeightsError, match="did you mean lsknet_t.in1k"):
        W.get_entry("lsknet_t.in1")
    with pytest.raises(CheckpointError, match="checkpoint file not found.*weights list"):
        W.resolve_pretrained("no/such/file.pth")


def test_existing_path_returned_as_is(tmp_path, home):
    f = tmp_path / "lsknet_t.in1k"  # a file wins over a registry name
    f.write_bytes(b"x")
    assert W.resolve_pretrained(str(f)) == f


def test_manual_steps_name_page_and_destination(home):
    e = W.get_entry("haksnet_t.in1k")
    text = W.manual_steps(e)
    assert "pan.baidu.com" in text and "qc4r" in text and str(home / e.file_name) in text
    with pytest.raises(W.WeightsError, match="qc4r"):
        W.resolve_pretrained("haksnet_t.in1k")


# --- CLI -------------------------------------------------------------------------------------------
runner = typer.testing.CliRunner()


def _cli(*args):
    from rsvision.cli import app

    return runner.invoke(app, list(args), env={"COLUMNS": "250"})


def test_cli_list_and_get(server, home, entry, tmp_path):
    r = _cli("weights", "list")
    assert r.exit_code == 0, r.output
    assert "lsknet_t.in1k" in r.output and "manual" in r.output and "test_net.local" in r.output
    r = _cli("weights", "get", entry.name, "--to", str(tmp_path / "d"))
    assert r.exit_code == 0, r.output
    assert (tmp_path / "d" / "w.pth").read_bytes() == PAYLOAD
    assert f"ready: {tmp_path / 'd' / 'w.pth'}" in r.output
    assert "test_net.local (MiB): 1/1 (100%" in r.output  # plain progress lines when not on a terminal
    r = _cli("weights", "get", "lsknet_x.in1k")
    assert r.exit_code == 2 and "lsknet_t.in1k" in r.output
    r = _cli("weights", "get", "haksnet_s.in1k")
    assert r.exit_code == 2 and "gq7n" in r.output and "haksnet_s_in1k.pth" in r.output


def test_pretrained_name_through_load_checkpoint(server, home, monkeypatch, tmp_path):
    """``--pretrained NAME`` ends in rsvision.models.load_checkpoint: a registry name is fetched and loaded."""
    torch = pytest.importorskip("torch")
    from rsvision.models import load_checkpoint

    net = torch.nn.Linear(3, 2)
    want = {k: torch.randn_like(v) for k, v in net.state_dict().items()}
    torch.save(want, tmp_path / "lin.pth")
    server.files["lin.pth"] = (tmp_path / "lin.pth").read_bytes()
    e = _entry(server, name="lin.local", file_name="lin.pth", url=f"{server.base}/lin.pth",
               sha256=hashlib.sha256(server.files["lin.pth"]).hexdigest())
    monkeypatch.setattr(W, "REGISTRY", [e])
    load_checkpoint(net, "lin.local")
    assert all(torch.equal(net.state_dict()[k], v) for k, v in want.items())
    assert (home / "lin.pth").is_file()


def test_pretrained_option_is_a_string():
    import typer.main

    from rsvision.cli import app

    from rsvision.cli._common import train_overrides

    train = typer.main.get_command(app).commands["classify"].commands["train"]
    opt = next(p for p in train.params if "--pretrained" in p.opts)
    assert "weights list" in opt.help
    assert train_overrides(pretrained="lsknet_t.in1k")["model.pretrained"] == "lsknet_t.in1k"


def test_weights_commands_import_nothing_heavy(tmp_path):
    import subprocess
    import sys

    from tests.cli.test_cli_startup import HEAVY

    code = ("import sys, typer.testing\nfrom rsvision.cli import app\n"
            "for args in (['weights', '--help'], ['weights', 'list'], ['weights', 'get', 'haksnet_t.in1k']):\n"
            "    r = typer.testing.CliRunner().invoke(app, args)\n"
            "    assert r.exit_code in (0, 2), (args, r.output)\n"
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    env = {**os.environ, "RSVISION_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert not set(out.split()) & set(HEAVY)


def test_train_pretrained_name_through_the_cli(server, home, monkeypatch, tmp_path):
    """``classify train --pretrained NAME``: the name is fetched from the (local) server into the cache and
    its weights are the start of training (lr 1e-12: the trained weights stay the served ones)."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from rsvision.data.synthetic.scenes import make_scene_dataset

    src = timm.create_model("test_resnet", num_classes=3)
    sd = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in src.state_dict().items()}
    torch.save(sd, tmp_path / "tr.pth")
    server.files["tr.pth"] = (tmp_path / "tr.pth").read_bytes()
    e = _entry(server, name="test_resnet.local", file_name="tr.pth", url=f"{server.base}/tr.pth",
               sha256=hashlib.sha256(server.files["tr.pth"]).hexdigest())
    monkeypatch.setattr(W, "REGISTRY", [e])
    make_scene_dataset(tmp_path / "data", num_classes=3, per_class=4, size=24)
    r = _cli("classify", "train", "--data", str(tmp_path / "data"), "--model", "test_resnet", "--img-size", "16",
             "--batch-size", "4", "--epochs", "1", "--out", str(tmp_path / "run"), "--pretrained", e.name,
             "--set", "optim.lr=1e-12", "--set", "trainer.progress=none", "--set", "trainer.threads=1")
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert (home / "tr.pth").is_file() and server.ranges == [None]
    ck = torch.load(tmp_path / "run" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    w = next(k for k in sd if k.endswith("conv1.weight"))
    assert torch.allclose(ck[f"model.{w}"], sd[w], atol=1e-6)
