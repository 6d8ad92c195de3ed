"""Figures as PNG files (matplotlib, Agg backend).

Every function takes plain tables (pandas) and a path, and returns the path: the report decides what to draw.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from mergeflow import paths  # noqa: E402
from mergeflow.io import atomic_path  # noqa: E402

REFERENCE_STYLE = {"zeroshot": ("zero-shot", "#555555", ":"), "individual": ("experts", "#000000", "--")}


def _palette(n: int) -> list:
    """``n`` distinct colours: tab20 first, then tab20b (more series than one palette has)."""
    cmaps = [plt.get_cmap("tab20"), plt.get_cmap("tab20b"), plt.get_cmap("tab20c")]
    return [cmaps[(i // 20) % 3](i % 20) for i in range(n)]


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _reference_lines(ax, references: dict[str, float], horizontal: bool = True) -> None:
    for name, value in references.items():
        label, colour, style = REFERENCE_STYLE.get(name, (name, "#888888", "-."))
        line = ax.axhline if horizontal else ax.axvline
        line(value * 100, color=colour, linestyle=style, linewidth=1, label=f"{label} {value * 100:.1f}")


def ranked_bars(summary: pd.DataFrame, references: dict[str, float], out: Path) -> Path:
    """Average accuracy per run, best first, one colour per run, zero-shot and experts as lines."""
    df = summary.sort_values("average")
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(df) + 1.4))
    colours = _palette(len(df))[::-1]
    for i, (label, value) in enumerate(zip(df["label"], df["average"], strict=True)):
        ax.barh(i, value * 100, color=colours[i], label=label)
        ax.text(value * 100 + 0.5, i, f"{value * 100:.1f}", va="center", fontsize=7)
    ax.set_yticks(range(len(df)), df["label"], fontsize=7)
    _reference_lines(ax, references, horizontal=False)
    ax.set_xlabel("average test accuracy over tasks (%)")
    ax.set_xlim(0, 105)
    ax.set_title("Merged models, ranked")
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, out)


def heatmap(acc: pd.DataFrame, out: Path) -> Path:
    """Run × task accuracy heat map (rows in the given order) with the values written in."""
    acc = acc * 100
    fig, ax = plt.subplots(figsize=(0.9 * acc.shape[1] + 3.5, 0.34 * acc.shape[0] + 1.6))
    im = ax.imshow(acc.values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(acc.shape[1]), acc.columns, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(acc.shape[0]), acc.index, fontsize=7)
    for i in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            ax.text(j, i, f"{acc.values[i, j]:.0f}", ha="center", va="center", fontsize=6,
                    color="white" if acc.values[i, j] < 60 else "black")
    fig.colorbar(im, ax=ax, label="test accuracy (%)")
    ax.set_title("Accuracy per task")
    return _save(fig, out)


def sensitivity(points: pd.DataFrame, references: dict[str, float], out: Path) -> Path:
    """Average accuracy against each swept hyper-parameter (the main run's value marked), with references."""
    groups = list(points.groupby(["method", "param"]))
    n = max(1, len(groups))
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n + 1.2, 3.2), squeeze=False)
    for i, (ax, ((method, param), df)) in enumerate(zip(axes[0], groups, strict=False)):
        df = df.sort_values("value")
        ax.plot(df["value"], df["average"] * 100, marker="o", color="#1f77b4", label="this parameter swept")
        main = df[df["main"]]
        ax.plot(main["value"], main["average"] * 100, marker="*", markersize=12, linestyle="none",
                color="#d62728", label="main run")
        _reference_lines(ax, references)
        ax.set_title(f"{method}: {param}", fontsize=9)
        ax.set_xlabel(param)
        if df["value"].min() > 0 and df["value"].max() / df["value"].min() >= 8:  # exemplar counts, λ decades
            ax.set_xscale("log", base=2)
        if i == 0:
            ax.set_ylabel("average test accuracy (%)")
        ax.set_ylim(0, 100)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.suptitle("Sensitivity to swept hyper-parameters", fontsize=10)
    return _save(fig, out)


def validation_curves(curves: dict[str, pd.DataFrame], out: Path) -> Path:
    """Every auto-chosen scale: validation normalised accuracy over the grid, the chosen value starred."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for colour, (label, df) in zip(_palette(len(curves)), curves.items(), strict=True):
        ax.plot(df["scale"], df["val_normalized"] * 100, marker=".", color=colour, label=label)
        best = df[df["chosen"]]
        ax.plot(best["scale"], best["val_normalized"] * 100, marker="*", markersize=11, linestyle="none",
                color=colour)
    ax.set_xlabel("scale (α, or λ for PCB and LOT)")
    ax.set_ylabel("normalised accuracy on validation (%)")
    ax.set_title("How each scale was chosen (★ = chosen)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, out)


def cat_energy(units: dict, out: Path) -> Path:
    """Per unit, the share of the positive eigenvalue mass that CAT's chosen basis captures (mean over tasks)."""
    names = list(units)
    values = [sum(v["energy"] for v in units[u].values()) / max(1, len(units[u])) for u in names]
    fig, ax = plt.subplots(figsize=(min(12, max(6, len(names) * 0.3)), 3.4))
    ax.bar(range(len(names)), values, color="#2ca02c")
    ax.set_xticks(range(len(names)), [n.replace("transformer.resblocks.", "L") for n in names], rotation=90,
                  fontsize=6)
    ax.set_ylabel("captured eigenvalue energy")
    ax.set_ylim(0, 1)
    ax.set_title("CAT: share of each unit's positive eigenvalue energy in its basis (mean over tasks)")
    return _save(fig, out)


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
