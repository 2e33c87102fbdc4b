"""Screenshots of optuna-dashboard on a real study, with headless Chromium.

    python scripts/dashboard_screenshot.py                      # the study 'tune'
    python scripts/dashboard_screenshot.py --study grid-2026…   # any run in the storage
    python scripts/dashboard_screenshot.py --study random-2026… --prefix optuna-study

Starts ``optuna-dashboard`` on the project's Optuna storage (``$PIPELINE_OPTUNA_STORAGE``,
else ``sqlite:///data/optuna.db``) on a free local port, shoots the study's history page and
its analytics page (parameter importance, parallel coordinates) into ``docs/screenshots/``,
and stops the dashboard. As with ``scripts/screenshots.py``, each page's rendered DOM is
checked for the study's name first, so a page that did not render fails instead of being
saved.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(PROJECT_ROOT), str(Path(__file__).resolve().parent)]

from screenshots import find_chromium, shoot  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"optuna-dashboard did not answer at {url}") from None
            time.sleep(0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="tune", help="study name (default: tune)")
    parser.add_argument("--storage", help="Optuna storage URL (default: the project's)")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "screenshots")
    parser.add_argument("--prefix", default="optuna",
                        help="file names: PREFIX-history.png, PREFIX-analytics.png "
                             "(default: optuna)")
    parser.add_argument("--budget", type=int, default=20000,
                        help="Chromium's virtual-time budget per page, ms (default: 20000)")
    args = parser.parse_args(argv)

    import optuna

    from tasks.reports.optuna_export import storage_url

    url = storage_url(args.storage)
    summaries = {s.study_name: s for s in optuna.get_all_study_summaries(url)}
    if args.study not in summaries:
        sys.exit(f"error: no study {args.study!r} in {url}; studies: {sorted(summaries)}")
    study_id = summaries[args.study]._study_id
    browser = find_chromium()
    port = free_port()
    dashboard = subprocess.Popen(["optuna-dashboard", url, "--host", "127.0.0.1", "--port",
                                  str(port)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/api/studies")
        args.out.mkdir(parents=True, exist_ok=True)
        page = f"{base}/dashboard/studies/{study_id}"
        shoot(browser, page, args.out / f"{args.prefix}-history.png", [args.study], "1400,1000",
              args.budget)
        shoot(browser, f"{page}/analytics", args.out / f"{args.prefix}-analytics.png", [args.study],
              "1400,1400", args.budget)
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=10)


if __name__ == "__main__":
    main()
