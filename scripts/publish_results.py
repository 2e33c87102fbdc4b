"""Copy the figures of full-size runs into docs/results/ and print their tables beside the
notebook's printed numbers (the material of docs/results.md).

    python scripts/publish_results.py --baseline reports/baseline-… --grid reports/grid-… \
        --study reports/random-… [--repeats reports/random-…] [--tune reports/tune-…] \
        [--ensemble reports/ensemble-… --ensemble-name fashion_ensemble]

Each option names a run's report folder; what is given is copied and tabulated.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.search.best_of_n import NOTEBOOK_BEST_OF_N  # noqa: E402

OUT = ROOT / "docs" / "results"
#: The notebook's grid printout (test accuracy), dropout x units.
NOTEBOOK_GRID = {
    0.0: [0.915, 0.919, 0.919, 0.914, 0.915], 0.1: [0.918, 0.921, 0.921, 0.919, 0.915],
    0.3: [0.913, 0.918, 0.917, 0.919, 0.914], 0.5: [0.905, 0.916, 0.919, 0.919, 0.918],
    0.8: [0.881, 0.899, 0.909, 0.914, 0.918]}
UNITS = [16, 32, 64, 128, 256]


def copy(folder: Path, names: dict[str, str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for source, target in names.items():
        shutil.copyfile(folder / source, OUT / target)
        print(f"copied {folder / source} -> {OUT / target}")


def grid_table(folder: Path) -> str:
    trials = pd.read_parquet(folder / "trials.parquet")
    lines = ["| dropout | " + " | ".join(f"{u} units: ours / notebook" for u in UNITS) + " |",
             "|---|" + "---|" * len(UNITS)]
    for dropout, notebook in NOTEBOOK_GRID.items():
        cells = []
        for units, theirs in zip(UNITS, notebook, strict=True):
            row = trials[(trials["dropout"] == dropout) & (trials["units"] == units)]
            cells.append(f"{row['test_accuracy'].iloc[0]:.3f} / {theirs:.3f}")
        lines.append(f"| {dropout:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def study_table(folder: Path, label: str) -> str:
    table = pd.read_parquet(folder / "best_of_n.parquet")
    lines = [f"| N | {label}: max test accuracy (the notebook's measure) | {label}: test "
             "accuracy of the best-by-validation trial | notebook |", "|---|---|---|---|"]
    for row in table.itertuples():
        theirs = NOTEBOOK_BEST_OF_N.get(row.n)
        shown = f"{theirs[0]:.3f} ± {theirs[1]:.4f}" if theirs else "—"
        lines.append(f"| {row.n} | {row.max_test_mean:.4f} ± {row.max_test_std:.4f} | "
                     f"{row.val_selected_test_mean:.4f} ± {row.val_selected_test_std:.4f} | "
                     f"{shown} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("baseline", "grid", "study", "repeats", "tune", "ensemble"):
        parser.add_argument(f"--{name}", type=Path, help=f"the {name} run's report folder")
    parser.add_argument("--ensemble-name", default="ensemble",
                        help="the name of the ensemble's figure in docs/results/ (default: "
                             "ensemble, for ensemble.png)")
    args = parser.parse_args()
    if args.baseline:
        copy(args.baseline, {"history.png": "baseline_history.png",
                             "confusion_matrix.png": "baseline_confusion_matrix.png"})
        print((args.baseline / "evaluation.txt").read_text())
    if args.grid:
        copy(args.grid, {"heatmap_test_accuracy.png": "grid_heatmap_test_accuracy.png"})
        print(grid_table(args.grid))
    if args.study:
        copy(args.study, {"best_of_n.png": "best_of_n_pool.png",
                          "hyperparameters.png": "study_hyperparameters.png",
                          "param_importance.png": "study_param_importance.png",
                          "parallel_coordinates.png": "study_parallel_coordinates.png"})
        print(study_table(args.study, "pool"))
    if args.repeats:
        copy(args.repeats, {"best_of_n.png": "best_of_n_repeats.png"})
        print(study_table(args.repeats, "repeats"))
    if args.tune:
        copy(args.tune, {"history.png": "tune_history.png", "slice.png": "tune_slice.png"})
        print((args.tune / "report.md").read_text().split("## The search")[0])
    if args.ensemble:
        copy(args.ensemble, {"ensemble.png": f"{args.ensemble_name}.png"})
        card = (args.ensemble / "model" / "MODEL.md").read_text()
        section = card.split("### The ensemble against")[1].split("\n##")[0]
        print("### The ensemble against" + section)


if __name__ == "__main__":
    main()
