"""The README's TensorBoard screenshot (docs/tensorboard-sst2.png): committed SST-2 runs replayed with
``dflora log`` into a scratch folder, TensorBoard on 127.0.0.1, headless Chromium (Debian's, through
playwright as tests/test_browser.py drives it), the Time Series tab filtered to a few tags.

    .venv/bin/python benchmarks/tensorboard_screenshot.py [--root results/optimizers-sst2] [--out PNG]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TAGS = "train/loss|dev/best|test/accuracy|search/step_size"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float = 60.0) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"TensorBoard did not answer at {url}")


def shoot(url: str, out: Path, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1500, "height": 930})
        page.goto(url, wait_until="networkidle")
        page.wait_for_timeout(4000)
        smoothing = page.locator("input[type='number']").first  # raw curves: dev/best is a step function
        smoothing.fill("0")
        smoothing.press("Enter")
        page.get_by_text("Ignore outliers in chart scaling").click()  # every run's whole curve
        page.locator("button[aria-label='Close side pane']").first.click()
        page.get_by_role("combobox", name="Filter tags (regex)").fill(TAGS)
        page.keyboard.press("Escape")
        page.wait_for_timeout(5000)
        page.screenshot(path=str(out))
        browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(REPO / "results" / "optimizers-sst2"), help="committed runs to show")
    ap.add_argument("--out", default=str(REPO / "docs" / "tensorboard-sst2.png"))
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run([sys.executable, "-m", "dflora_core", "log", "--root", args.root, "--to", "tensorboard",
                        "--out", scratch], check=True)  # fmt: skip
        port = free_port()
        board = subprocess.Popen([str(Path(sys.executable).with_name("tensorboard")), "--logdir",
                                  f"{scratch}/tensorboard", "--host", "127.0.0.1", "--port", str(port)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            wait_for(f"http://127.0.0.1:{port}/data/runs")
            shoot(f"http://127.0.0.1:{port}/?darkMode=false#timeseries", Path(args.out), args.chromium)
        finally:
            board.terminate()
            board.wait()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
