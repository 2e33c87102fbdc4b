"""The serve page's screenshot (docs/screenshots/serve.png): a digit drawn with the mouse on
the page of a model trained on the real MNIST, its class probabilities and its card.

    python scripts/serve_screenshot.py                       # trains the baseline first
    python scripts/serve_screenshot.py --model reports/baseline-20260101-120000-ab12
    python scripts/serve_screenshot.py --digit 7 --out /tmp/serve.png

Without --model it runs ``python flows/train.py --data MNIST`` (the baseline; the real MNIST
from --data, $MNIST_PATH or ../shared/data/mnist.npz; its trial is cached like any run's) with
its report in a temporary folder. Then it starts ``python flows/serve.py`` on a free port,
opens the page in headless Chromium from Debian (``apt-get install chromium
chromium-driver``) driven by Selenium (``pip install selenium``), draws the digit stroke by
stroke with the mouse, waits for the bars to settle, checks that the model predicts the digit
drawn (else it says so and saves nothing) and saves the page at 1280 x 800.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SIZE = (1280, 800)
MAX_BYTES = 300_000


def arc(cx, cy, r, start, end, steps=14):
    """Points of a circular arc (degrees, clockwise on the screen: y grows downwards)."""
    return [(cx + r * math.cos(math.radians(a)), cy + r * math.sin(math.radians(a)))
            for a in (start + (end - start) * k / steps for k in range(steps + 1))]


#: Each digit as strokes of points on the 280 x 280 canvas.
DIGITS = {
    "3": [arc(140, 92, 44, -160, 90) + arc(140, 184, 48, -90, 150)],
    "7": [[(80, 60), (200, 60), (185, 95), (160, 150), (135, 230)], [(115, 145), (190, 145)]],
    "2": [arc(140, 100, 48, -165, 30) + [(95, 225), (205, 225)]],
}


def mnist_path(given: str | None) -> Path:
    for candidate in (given, os.environ.get("MNIST_PATH"),
                      PROJECT_ROOT.parent / "shared" / "data" / "mnist.npz"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    sys.exit("error: the real MNIST not found: give --data PATH (or set MNIST_PATH)")


def train_baseline(data: Path, reports: Path) -> Path:
    print(f"Training the baseline on {data} (its report in {reports}) ...", flush=True)
    done = subprocess.run([sys.executable, "flows/train.py", "--data", str(data),
                           "--reports-dir", str(reports)], cwd=PROJECT_ROOT, text=True,
                          capture_output=True)
    if done.returncode != 0:
        sys.exit(f"error: flows/train.py failed: {done.stderr.strip()[-1000:]}")
    found = re.search(r"Report: (\S+)", done.stdout)
    if not found:
        sys.exit(f"error: no report folder in flows/train.py's output: {done.stdout[-1000:]}")
    return Path(found.group(1))


def start_server(model: Path) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "flows/serve.py", "--model", str(model)],
                               cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    found = re.search(r" at (http://\S+/)$", line.strip())
    if not found:
        process.kill()
        sys.exit(f"error: flows/serve.py did not start: {process.communicate()[1].strip()}")
    process.stdout.readline()
    return process, found.group(1)


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--hide-scrollbars", f"--window-size={SIZE[0]},{SIZE[1] + 200}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": SIZE[0], "height": SIZE[1], "deviceScaleFactor": 1,
                            "mobile": False})
    return driver


def draw(driver, strokes) -> None:
    """Each stroke with the mouse: pressed at its first point, moved through the others."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    canvas = driver.find_element(By.ID, "canvas")
    for points in strokes:
        actions = ActionChains(driver, duration=15)
        x, y = (round(v) for v in points[0])
        actions.move_to_element_with_offset(canvas, x - 140, y - 140).click_and_hold()
        for px, py in points[1:]:
            dx, dy = round(px) - x, round(py) - y
            actions.move_by_offset(dx, dy)
            x, y = x + dx, y + dy
        actions.release().perform()


def settle(driver, quiet: float = 1.0, timeout: float = 30) -> None:
    last, since, start = None, time.monotonic(), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() - start < timeout:
        now = driver.execute_script("return document.body.dataset.updates")
        if now != last:
            last, since = now, time.monotonic()
        time.sleep(0.1)


def shrink(path: Path) -> None:
    """Keep the PNG under MAX_BYTES (a palette of 256 colours is plenty for this page)."""
    from PIL import Image

    if path.stat().st_size > MAX_BYTES:
        Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    options.add_argument("--model", help="a model folder or report folder (default: train the "
                                         "baseline on the real MNIST first)")
    options.add_argument("--data", help="the real MNIST (default: $MNIST_PATH, else "
                                        "../shared/data/mnist.npz)")
    options.add_argument("--digit", default="3", choices=sorted(DIGITS))
    options.add_argument("--out", default=str(PROJECT_ROOT / "docs" / "screenshots" /
                                              "serve.png"))
    args = options.parse_args()
    with tempfile.TemporaryDirectory(prefix="serve-screenshot-") as scratch:
        model = Path(args.model) if args.model else train_baseline(
            mnist_path(args.data), Path(scratch) / "reports")
        process, url = start_server(model)
        try:
            driver = browser()
            try:
                driver.get(url)
                draw(driver, DIGITS[args.digit])
                settle(driver)
                predicted = driver.execute_script(
                    "return document.getElementById('predicted').dataset.name")
                if predicted != args.digit:
                    print(f"error: the model predicts {predicted!r} for the {args.digit} drawn; "
                          "nothing saved (try another --digit)", file=sys.stderr)
                    return 1
                out = Path(args.out)
                out.parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(out))
                shrink(out)
                print(f"Saved {out} ({out.stat().st_size:,} bytes): the model predicts "
                      f"{predicted} for the {args.digit} drawn")
            finally:
                driver.quit()
        finally:
            process.send_signal(signal.SIGINT)  # it answers "stopped"
            process.communicate(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
