"""The ensemble against the best single model, from searches already done: the figures of
docs/results.md#ensembles.

    python benchmarks/ensemble.py reports/random-...                  # one search's pool
    python benchmarks/ensemble.py reports/random-... reports/tune-... --picks 5 10 25 50

For each K of ``--picks``: the greedy ensemble of K picks with replacement on validation
(:func:`tasks.ensemble.choose.choose_ensemble`; greedy, so one selection of the largest K
gives every smaller one) and the plain average of the top K trials by validation, with
validation and test accuracy, beside the best single trial by validation; then the seconds
the members' probabilities took, cold (computed from the weights, into a scratch copy of
the trials' folders: the real caches are neither read nor written) and warm (read from that
copy), and the pool. Nothing trains. The data is each report's own (its model/model.json).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from flows.ensemble import report_trials  # noqa: E402
from tasks.data.prepare import prepare_data  # noqa: E402
from tasks.data.splits import load_splits  # noqa: E402
from tasks.ensemble.choose import choose_ensemble  # noqa: E402
from tasks.export.refit import read_report_model  # noqa: E402
from tasks.run_options import RunOptions  # noqa: E402


def scratch_copies(results, folder: Path):
    """The results with their weights copied under ``folder`` (one folder per trial, as the
    real ones), so the cache files land there."""
    copied = []
    for result in results:
        if result.status != "completed" or not result.weights_path or not Path(
                result.weights_path).is_file():
            copied.append(result)
            continue
        target = folder / result.trial_key / Path(result.weights_path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result.weights_path, target)
        copied.append(result.model_copy(update={"weights_path": str(target)}))
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", help="search report folders of the same data")
    parser.add_argument("--picks", nargs="+", type=int, default=[5, 10, 25],
                        help="the K values (default: 5 10 25)")
    args = parser.parse_args(argv)
    results = [r for folder in args.reports for r in report_trials(folder)]
    chosen = [read_report_model(folder) for folder in args.reports]
    run = chosen[0].run_options(RunOptions())
    data, _ = prepare_data(run.data, run.split(), run.data_dir, run.label)
    for report in chosen:
        report.check_data(data)
    splits = load_splits(data)
    k = max(args.picks)
    best_key = chosen[0].trial_key if len(chosen) == 1 else None
    with tempfile.TemporaryDirectory() as scratch:
        copies = scratch_copies(results, Path(scratch))
        started = time.perf_counter()
        cold = choose_ensemble(copies, data, k, best_key=best_key, splits=splits)
        cold_seconds = time.perf_counter() - started
        started = time.perf_counter()
        warm = choose_ensemble(copies, data, k, best_key=best_key, splits=splits)
        warm_seconds = time.perf_counter() - started
    assert warm.curve.equals(cold.curve)
    single = cold.best_single
    print(f"data {data.fingerprint}: {', '.join(args.reports)}")
    print(f"pool: {cold.pool.line()}")
    print(f"best single by validation: {single.config.label()} "
          f"({single.trial_key}): val {single.val_accuracy:.4f}, test {single.test_accuracy:.4f}")
    print()
    print("| K | members | greedy val | greedy test | top-K val | top-K test |")
    print("|---|---|---|---|---|---|")
    print(f"| 1 (best single) | 1 | {single.val_accuracy:.4f} | {single.test_accuracy:.4f} | | |")
    for picks in sorted(set(args.picks)):
        row = cold.at(picks)
        print(f"| {picks} | {int(row['members'])} | {row['val_accuracy']:.4f} | "
              f"{row['test_accuracy']:.4f} | {row['top_k_val_accuracy']:.4f} | "
              f"{row['top_k_test_accuracy']:.4f} |")
    print()
    print(f"selection of K={k} with the members' probabilities: cold {cold_seconds:.1f} s "
          f"({cold.computed} computed from weights), warm {warm_seconds:.1f} s "
          f"({warm.read} read from the cache); {len(cold.pool.trials)} candidates, "
          f"{len(splits.y_val)} validation and {len(splits.y_test)} test rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
