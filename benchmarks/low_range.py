"""Integer images of a narrow range: the old rule (every uint8 image / 255) against the new
one (/ 255 only for the 8-bit range, a training maximum of at least 128; else standardized).

    python benchmarks/low_range.py --data digits.npz [--units 32 64] [--epochs 40]
                                   [--seeds 0 1 2] [--test-size 360]

``--data``: a Keras-layout npz of uint8 images of a low range, e.g. the 8 x 8 digits in 0..16
that scikit-learn ships (``--make-digits digits.npz`` writes them from an installed
scikit-learn: 1437 training images, 360 test images, the last 180 of them validation).
Both rules train the same configs on the same rows with the same seeds, in this process;
prints the test accuracy of each (mean over the seeds) side by side.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tasks.config import SplitSpec, TrialConfig  # noqa: E402
from tasks.data.prepare import _parts, as_features, prepare  # noqa: E402
from tasks.data.readers import read_data  # noqa: E402
from tasks.data.splits import Splits  # noqa: E402
from tasks.engine.train import train_model  # noqa: E402


def make_digits(path: Path) -> Path:
    """scikit-learn's 8 x 8 digits (0..16) as a Keras-layout npz of uint8."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images.astype(np.uint8)
    y = digits.target.astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    np.savez(path, x_train=x[:1437], y_train=y[:1437], x_test=x[1437:], y_test=y[1437:])
    return path


def both_rules(path: Path, test_size: float | None) -> dict[str, Splits]:
    """The processed splits under the new rule, and the same rows / 255 (the old rule)."""
    prepared = prepare(read_data(path), SplitSpec(test_size=test_size))
    parts, normalization = _parts(prepared)
    source = {"train": prepared.raw.x_train, "test": prepared.raw.x_test}
    classes = len(prepared.class_names)
    new = Splits(*parts["train"], *parts["validation"], *parts["test"], classes=classes)
    old = {split: (as_features(source[part][index], "pixels"), parts[split][1])
           for split, (part, index) in prepared.rows.items()}
    print(f"new rule: {normalization['kind']}: {normalization['reason']}")
    return {"old (/255)": Splits(*old["train"], *old["validation"], *old["test"],
                                 classes=classes),
            f"new ({normalization['kind']})": new}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path)
    parser.add_argument("--make-digits", type=Path, help="write scikit-learn's digits here")
    parser.add_argument("--units", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--test-size", type=float, default=180)
    args = parser.parse_args(argv)
    if args.make_digits:
        print(f"wrote {make_digits(args.make_digits)}")
        if args.data is None:
            return
    rules = both_rules(args.data, args.test_size)
    print(f"| units | {' | '.join(rules)} |")
    print("|---|" + "---|" * len(rules))
    for units in args.units:
        cells = []
        for splits in rules.values():
            scores = [train_model(TrialConfig(units=units, dropout=0.0, epochs=args.epochs,
                                              batch_size=args.batch_size, seed=seed),
                                  splits).metrics["test_accuracy"] for seed in args.seeds]
            cells.append(f"{statistics.mean(scores):.4f} (seeds {min(scores):.3f}–"
                         f"{max(scores):.3f})")
        print(f"| {units} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
