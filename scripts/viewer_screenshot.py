"""Screenshot of ``rsvision view`` for the README: ``python scripts/viewer_screenshot.py DEMO_OUT docs/viewer.png``.

DEMO_OUT is the folder of ``rsvision demo --out DEMO_OUT``. The page is opened in headless Chromium
(Playwright; ``RSVISION_CHROMIUM`` or ``chromium`` on PATH), the score filter set to ``--score``, and the
picture saved as a 256-colour PNG (small enough for a README).
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import threading
import time

from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path")
    ap.add_argument("out")
    ap.add_argument("--score", type=float, default=0.3)
    ap.add_argument("--size", default="1280x720")
    args = ap.parse_args()

    import uvicorn
    from playwright.sync_api import sync_playwright

    from rsvision.cli.view import bind
    from rsvision.viz.viewer.app import create_app

    exe = os.environ.get("RSVISION_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise SystemExit("no Chromium found (apt-get install chromium, or set RSVISION_CHROMIUM)")
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(args.path, cache_dir=tempfile.mkdtemp()), log_level="error"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    w, h = (int(v) for v in args.size.split("x"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": w, "height": h})
        page.goto(f"http://127.0.0.1:{sock.getsockname()[1]}/")
        page.wait_for_function("window.__rsv && window.__rsv.ready", timeout=30000)
        slider = page.locator("input[aria-label='minimum score']").first
        if slider.count():
            n = page.evaluate("window.__rsv.requests")
            slider.evaluate(f"(e) => {{ e.value = {args.score}; e.dispatchEvent(new Event('input')); }}")
            page.wait_for_function(f"window.__rsv.requests > {n}")
        page.wait_for_timeout(800)
        shot = page.screenshot()
        browser.close()
    server.should_exit = True
    img = Image.open(io.BytesIO(shot)).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    img.save(args.out, optimize=True)
    print(f"{args.out}: {os.path.getsize(args.out) // 1024} KB")


if __name__ == "__main__":
    main()
