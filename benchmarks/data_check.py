"""A command's data start-up: the check before Prefect starts, then the run's data step.

    python benchmarks/data_check.py [--data PATH ...] [--rows 70000] [--images 10000]
                                    [--repeats 3]

Each command line checks the data before Prefect starts (``check_data``: bad data fails in
one line), and its run's data step prepares it (``prepare_data``). Before, the data step read
and validated it all again; now it takes what the check read when the data is unchanged.
Both are timed side by side in this process, alternating, on each source: the given files
(default: ``$MNIST_PATH`` if set), a Parquet table of ``--rows`` rows x 784 pixel columns and
a folder of ``--images`` 28 x 28 PNGs in 10 classes (both written to a temporary folder).
The processed files are written once beforehand, so both paths reuse them, as a second run
does. Prints, per source, the median seconds of each path and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.data import prepare as prepare_module  # noqa: E402
from tasks.data.prepare import check_data, prepare_data  # noqa: E402


def parquet_table(path: Path, rows: int) -> Path:
    import pandas as pd

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.integers(0, 256, (rows, 784), dtype=np.uint8),
                         columns=[f"p{i}" for i in range(784)])
    frame.insert(0, "label", rng.integers(0, 10, rows))
    frame.to_parquet(path)
    return path


def png_folder(folder: Path, images: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(images):
        label = i % 10
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
        Image.fromarray(pixels, "L").save(folder / str(label) / f"{i:06d}.png")
    return folder


def startup(data: Path, data_dir: Path, reread: bool) -> float:
    """Seconds for the check and the data step; ``reread``: the data step reads the data
    again (what it did before)."""
    started = time.perf_counter()
    check_data(data)
    if reread:
        prepare_module._CHECKED.clear()
    prepare_data(data, None, data_dir)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="*", default=[p for p in [os.environ.get(
        "MNIST_PATH")] if p], help="data files or folders to time (default: $MNIST_PATH)")
    parser.add_argument("--rows", type=int, default=70_000,
                        help="rows of the generated Parquet table (0: none; default 70000)")
    parser.add_argument("--images", type=int, default=10_000,
                        help="PNGs of the generated image folder (0: none; default 10000)")
    parser.add_argument("--repeats", type=int, default=3, help="timings of each (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="data-check-") as temporary:
        folder = Path(temporary)
        sources = [Path(p) for p in args.data]
        if args.rows:
            sources.append(parquet_table(folder / f"table-{args.rows}.parquet", args.rows))
        if args.images:
            sources.append(png_folder(folder / f"images-{args.images}", args.images))
        print(f"{'source':<40} {'read twice':>11} {'read once':>10} {'ratio':>6}")
        for source in sources:
            data_dir = folder / "data"
            prepare_data(source, None, data_dir)  # the processed files, once
            times: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(args.repeats):
                for reread in (True, False):
                    times[reread].append(startup(source, data_dir, reread))
            before, after = (statistics.median(times[r]) for r in (True, False))
            print(f"{source.name:<40} {before:>9.2f} s {after:>8.2f} s {before / after:>5.2f}x",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
