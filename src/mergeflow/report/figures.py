"""Figures as PNG files (matplotlib, Agg backend): tasks, grouped bars, heat map, sensitivity, CAT energy."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from mergeflow import paths  # noqa: E402
from mergeflow.io import atomic_path  # noqa: E402


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def tasks_figure(cfg, per_task: int = 8, out: Path | None = None) -> Path:
    """A grid of the first prepared training images of every task, titled with their class names."""
    from mergeflow.data.prepared import classnames, load_prepared

    tasks = cfg.tasks
    fig, axes = plt.subplots(len(tasks), per_task, figsize=(per_task * 1.3, len(tasks) * 1.45), squeeze=False)
    for r, task in enumerate(tasks):
        images, labels = load_prepared(task, "train")
        names = classnames(task)
        for c in range(per_task):
            ax = axes[r][c]
            ax.imshow(images[c].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_title(names[int(labels[c])][:18], fontsize=6)
            ax.set_xticks([]), ax.set_yticks([])
        axes[r][0].set_ylabel(task, fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle("Tasks: prepared training samples with class names", fontsize=10)
    return _save(fig, out or paths.FIGURES / "tasks.png")


def grouped_bars(table: pd.DataFrame, out: Path) -> Path:
    """Per-task accuracy, one group per task, one bar per model."""
    acc = table.pivot(index="task", columns="model", values="accuracy")
    fig, ax = plt.subplots(figsize=(max(8, len(acc) * 1.6), 4.2))
    (acc * 100).plot.bar(ax=ax, width=0.85, legend=True)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.legend(fontsize=6, ncol=4, loc="lower left")
    ax.set_title("Accuracy per task")
    return _save(fig, out)


def heatmap(table: pd.DataFrame, out: Path) -> Path:
    """Method × task accuracy heat map with the values written in."""
    acc = table.pivot(index="model", columns="task", values="accuracy") * 100
    fig, ax = plt.subplots(figsize=(1.1 * acc.shape[1] + 3, 0.38 * acc.shape[0] + 1.5))
    im = ax.imshow(acc.values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(acc.shape[1]), acc.columns, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(acc.shape[0]), acc.index, fontsize=7)
    for i in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            ax.text(j, i, f"{acc.values[i, j]:.0f}", ha="center", va="center", fontsize=6,
                    color="white" if acc.values[i, j] < 60 else "black")
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    return _save(fig, out)


def sensitivity(points: pd.DataFrame, out: Path) -> Path:
    """Average accuracy against each swept hyper-parameter (the base value included)."""
    groups = list(points.groupby(["method", "param"]))
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(3.2 * max(1, len(groups)), 3), squeeze=False)
    for ax, ((method, param), df) in zip(axes[0], groups, strict=False):
        df = df.sort_values("value")
        ax.plot(df["value"], df["average"] * 100, marker="o")
        ax.set_title(f"{method}: {param}", fontsize=9)
        ax.set_xlabel(param)
        ax.set_ylabel("average accuracy (%)")
    return _save(fig, out)


def cat_energy(units: dict, out: Path) -> Path:
    """Per unit, the share of the positive eigenvalue mass that CAT's chosen basis captures (mean over tasks)."""
    names = list(units)
    values = [sum(v["energy"] for v in units[u].values()) / max(1, len(units[u])) for u in names]
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.35), 3.2))
    ax.bar(range(len(names)), values)
    ax.set_xticks(range(len(names)), [n.replace("transformer.resblocks.", "L") for n in names], rotation=90,
                  fontsize=6)
    ax.set_ylabel("captured energy")
    ax.set_title("CAT: eigenvalue energy captured per unit")
    return _save(fig, out)
