"""Screenshots of the Prefect UI with headless Chromium: a finished grid-search flow run, its
table and summary artifacts, the deployment (schedule, concurrency) and its run form.

    source scripts/env.sh                   # PREFECT_API_URL of the server from scripts/up.sh
    python scripts/screenshots.py           # the latest completed grid-search run
    python scripts/screenshots.py --flow-run <id> --out docs/screenshots

Chromium comes from Debian (`apt-get install chromium`). Each page is loaded in a fresh,
empty profile and given a virtual-time budget so the JavaScript app renders before the shot;
the same page's rendered DOM is checked for the expected text (the table's column names,
the summary's heading), so an empty page or a spinner fails instead of being saved.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 300_000
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-quic", "--hide-scrollbars",
]


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("error: no Chromium found; install it (Debian: apt-get install -y chromium)")


def chromium(browser: str, url: str, *action: str, size: str, budget_ms: int) -> str:
    """Run headless Chromium on ``url`` in a new, empty profile; returns its stdout."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        done = subprocess.run(
            [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
             f"--virtual-time-budget={budget_ms}", *action, url],
            capture_output=True, text=True, timeout=180,
        )
    if done.returncode != 0:
        raise RuntimeError(f"chromium failed on {url}: {done.stderr[-2000:]}")
    return done.stdout


def shrink(path: Path) -> None:
    """Keep a PNG under MAX_BYTES: palette-quantize it if needed (UI shots have few colours)."""
    if path.stat().st_size <= MAX_BYTES:
        return
    from PIL import Image

    with Image.open(path) as image:
        image.convert("RGB").quantize(colors=128).save(path, optimize=True)


def shoot(browser: str, url: str, out: Path, expect: list[str], size: str = "1400,1000",
          budget_ms: int = 15000) -> Path:
    """Screenshot ``url`` to ``out`` after checking its rendered DOM shows ``expect``."""
    dom = chromium(browser, url, "--dump-dom", size=size, budget_ms=budget_ms)
    missing = [text for text in expect if text not in dom]
    if missing:
        raise RuntimeError(f"{url}: the rendered page lacks {missing} (not rendered yet? "
                           f"try a larger --budget)")
    chromium(browser, url, f"--screenshot={out}", size=size, budget_ms=budget_ms)
    shrink(out)
    print(f"{out.relative_to(PROJECT_ROOT) if out.is_relative_to(PROJECT_ROOT) else out}: "
          f"{out.stat().st_size // 1024} KB  <- {url}")
    return out


def find_run_and_artifacts(flow_run_id: str | None):
    """The flow run (given, or the latest completed grid-search run) and its artifacts."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        if flow_run_id:
            run = client.read_flow_run(flow_run_id)
        else:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["grid-search"])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.COMPLETED]))),
                sort=FlowRunSort.START_TIME_DESC, limit=1,
            )
            if not runs:
                sys.exit("error: no completed grid-search flow run on this server; run one "
                         "first (see docs/deployments.md)")
            run = runs[0]
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    return run, {artifact.key: artifact for artifact in artifacts}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flow-run", help="flow run id (default: latest completed grid-search)")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "screenshots")
    parser.add_argument("--budget", type=int, default=15000,
                        help="Chromium's virtual-time budget per page, ms (default: 15000)")
    args = parser.parse_args(argv)
    api_url = os.environ.get("PREFECT_API_URL")
    if not api_url:
        sys.exit("error: PREFECT_API_URL is not set; `source scripts/env.sh` first")
    ui = api_url.removesuffix("/").removesuffix("/api") + "/v2"  # the default (V2) UI
    browser = find_chromium()
    run, artifacts = find_run_and_artifacts(args.flow_run)
    table, summary = artifacts.get("grid-results"), artifacts.get("grid-results-summary")
    if table is None or summary is None:
        sys.exit(f"error: flow run {run.id} has no grid-results artifacts: {sorted(artifacts)}")
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    args.out.mkdir(parents=True, exist_ok=True)
    budget = args.budget
    shoot(browser, f"{ui}/runs/flow-run/{run.id}?tab=Artifacts", args.out / "flow-run.png",
          [run.name, "grid-results", "grid-results-summary", "grid-progress"], "1400,1000",
          budget)
    shoot(browser, f"{ui}/artifacts/artifact/{table.id}", args.out / "grid-results.png",
          ["val_accuracy", "test_accuracy", f"{rows[0]['test_accuracy']}"], "1400,640", budget)
    shoot(browser, f"{ui}/artifacts/artifact/{summary.id}", args.out / "grid-summary.png",
          ["Grid search", "best cell by validation accuracy"], "1400,640", budget)
    if run.deployment_id:
        deployment = f"{ui}/deployments/deployment/{run.deployment_id}"
        shoot(browser, deployment, args.out / "deployment.png",
              ["Schedules", "Concurrency Limit", run.name], "1400,900", budget)
        shoot(browser, f"{deployment}/run", args.out / "run-form.png",
              ["Parameters", "Dropout"], "1400,900", budget)


if __name__ == "__main__":
    main()
