"""The ensemble's figure: validation and test accuracy by the number of greedy picks, beside the
plain average of the top k trials by validation and the best single trial."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from tasks.reports.figures import common as figures


@figures.locked
def plot_ensemble_curve(curve: pd.DataFrame, single_val: float, single_test: float,
                        path: figures.PathLike, title: str = "") -> Path:
    """Two panels (validation, test): the greedy ensemble of the first k picks (a line with
    dots), the plain average of the top k by validation (dashed) and the best single trial (a
    horizontal line), k from 1 to K on a log axis when K > 30."""
    figures.require_columns(curve, ("k", "val_accuracy", "test_accuracy",
                                    "top_k_val_accuracy", "top_k_test_accuracy"),
                            "plot_ensemble_curve")
    k = curve["k"].to_numpy()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for ax, split, single in ((axes[0], "val", single_val), (axes[1], "test", single_test)):
        greedy = curve[f"{split}_accuracy"].to_numpy(np.float64)
        top = curve[f"top_k_{split}_accuracy"].to_numpy(np.float64)
        ax.plot(k, greedy, "o-", color="#1f77b4", markersize=3.5,
                label="greedy ensemble of the first k picks")
        ax.plot(k, top, "--", color="#ff7f0e", label="plain average of the top k by validation")
        ax.axhline(single, color="#555555", linewidth=1, label="best single trial by validation")
        best = int(np.argmax(greedy))
        ax.annotate(f"{greedy[-1]:.4f}", (k[-1], greedy[-1]), textcoords="offset points",
                    xytext=(0, 6), ha="right", fontsize=9, color="#1f77b4")
        if best != len(k) - 1 and split == "val":
            ax.plot([k[best]], [greedy[best]], "o", color="#1f77b4", markersize=6)
        values = np.concatenate([greedy, top, [single]])
        values = values[np.isfinite(values)]
        low, high = values.min(), values.max()
        pad = max(0.002, 0.08 * (high - low))
        ax.set_ylim(low - pad, high + 2 * pad)
        ax.set_title("validation (chose the picks)" if split == "val" else
                     "test (took no part in the choice)")
        ax.set_xlabel("k (greedy picks; top-k: trials averaged)")
        ax.set_ylabel(f"{'validation' if split == 'val' else 'test'} accuracy")
        if len(k) > 30:
            ax.set_xscale("log")
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, frameon=False, fontsize=9,
               bbox_to_anchor=(0.5, -0.04))
    fig.suptitle(title or "Ensemble selection: accuracy by the number of picks")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return figures.save(fig, path)
