"""``rsvision view PATH``: the results on a local web map (:mod:`rsvision.viz.viewer`).

fastapi, uvicorn and rio-tiler are imported only when the command runs, so ``rsvision --help`` stays
light. The server binds to 127.0.0.1 unless ``--host`` says otherwise, serves only files under PATH and
never writes there.
"""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Optional

import typer

from rsvision.cli._common import console
from rsvision.errors import ConfigError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(root: typer.Typer) -> None:
    root.command("view")(view)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (0: any free port), or a ConfigError naming the option."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); "
                          "choose another --port (0: any free one)") from None
    sock.listen(128)
    return sock


def serve(path: str | Path, host: str = "127.0.0.1", port: int = 8765, open_browser: bool = True,
          basemap: Optional[str] = None) -> None:
    """Build the app for ``path`` and serve it until interrupted (Ctrl-C)."""
    import threading
    import webbrowser

    import uvicorn

    from rsvision.viz.viewer.app import create_app

    if basemap is not None and not all(k in basemap for k in ("{z}", "{x}", "{y}")):
        raise ConfigError(f"--basemap must be a tile URL with {{z}}, {{x}} and {{y}}, got {basemap!r}")
    app = create_app(path, basemap=basemap)
    cat = app.state.catalog
    sock = bind(host, port)
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    console.print(f"rsvision view: {cat.root if cat.single is None else cat.single} -> [bold]{url}[/] "
                  f"({len(cat.views)} scene view(s), {len(cat.runs)} run(s), {len(cat.evals)} eval(s)); Ctrl-C stops")
    if host not in LOOPBACK:
        console.print(f"[yellow]warning:[/] listening on {host}: anyone who can reach this port can read the files "
                      "under PATH")
    if open_browser:
        threading.Timer(0.8, webbrowser.open, [url]).start()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])


def view(
    path: Annotated[Path, typer.Argument(help="A prediction or batch-predict output folder, a run directory, an "
                                              "eval JSON, or a folder holding any of these.")],
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: any free port).", min=0, max=65535)] = 8765,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (default loopback only).")] = "127.0.0.1",
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Do not open a browser.")] = False,
    basemap: Annotated[Optional[str], typer.Option(
        "--basemap", help="Tile URL ({z}/{x}/{y}) drawn under georeferenced scenes (default: none, fully offline).")] = None,
) -> None:
    """Show scenes, detections, masks, training curves and eval metrics on a local web map."""
    serve(path, host, port, not no_browser, basemap)
