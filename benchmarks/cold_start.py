"""Cold starts: a new user's first command, N times in a row, each with a new PREFECT_HOME.

    python benchmarks/cold_start.py [--data PATH] [--runs 10]

Each run is ``python flows/grid.py --dropout 0 --units 16 --epochs 1 --train-samples 2000``
from the project root with an empty Prefect home (database created and migrated by the
temporary server: ~21 s on the project's 2-core machine, past Prefect's default start-up
timeout of 20 s, which the project's command lines raise to 120 s: PREFECT_SETTINGS in
tasks.cli). Prints each run's exit status and wall time; the last line is
``cold starts: <ok> of <runs> succeeded``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ["flows/grid.py", "--dropout", "0", "--units", "16", "--epochs", "1",
           "--train-samples", "2000"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("MNIST_PATH"),
                        help="Keras-format mnist.npz (default: $MNIST_PATH)")
    parser.add_argument("--runs", type=int, default=10, help="cold starts (default: 10)")
    args = parser.parse_args()
    ok = 0
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(prefix="cold-start-") as home:
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith(("PREFECT_", "PIPELINE_"))}  # nothing carried over
            env.update(PREFECT_HOME=f"{home}/prefect", PIPELINE_DATA_DIR=f"{home}/data",
                       PIPELINE_REPORTS_DIR=f"{home}/reports")
            started = time.perf_counter()
            done = subprocess.run([sys.executable, *COMMAND, "--data", args.data], cwd=ROOT,
                                  env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - started
        ok += done.returncode == 0
        last = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or [""])[-1]
        print(f"run {run:2d}: exit {done.returncode}  {seconds:5.1f} s  {last[:100]}",
              flush=True)
    print(f"cold starts: {ok} of {args.runs} succeeded")
    return 0 if ok == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
