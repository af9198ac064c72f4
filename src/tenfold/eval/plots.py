"""The figures: the needle heatmap in the style of gkamradt's notebook, and the topic-retrieval line plot."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap  # noqa: E402

# The official red -> yellow -> green colormap (LLMTest_NeedleInAHaystack viz notebook).
NEEDLE_CMAP = LinearSegmentedColormap.from_list("custom_cmap", ["#F0496E", "#EBB839", "#0CD79F"])


# How the model's lengths are drawn on a heatmap: label, colour, dash pattern.
LENGTH_MARKS = {"native_length": ("native length", "#1f4fd1", (0, (5, 3))),
                "training_length": ("training length", "#111111", (0, (1, 2)))}


def length_marks(xs: list[int], lengths: dict[str, int | None]) -> list[tuple[int, str, str, tuple]]:
    """(x position, label, colour, dashes) of each known length: between the last column within it and the
    first beyond it; none for a length shorter than every column."""
    marks = []
    for key, (label, color, dashes) in LENGTH_MARKS.items():
        value = lengths.get(key)
        inside = sum(x <= value for x in xs) if value is not None else 0
        if inside:
            marks.append((inside, f"{label} {value:,}", color, dashes))
    return marks


def heatmap(cells: list[dict], path: str | Path, title: str, vmin: float = 0.0, vmax: float = 1.0,
            lengths: dict[str, int | None] | None = None, x_key: str = "length", y_key: str = "depth") -> Path:
    """Mean score per (depth, length) cell: depth down the side, length along the bottom; for each of the
    model's `lengths` that is known ({"native_length": 8192, "training_length": 81920}), a dashed line after
    the last length within it, labelled with what it is and its value."""
    xs = sorted({c[x_key] for c in cells})
    ys = sorted({c[y_key] for c in cells})
    grid = np.full((len(ys), len(xs)), np.nan)
    for j, y in enumerate(ys):
        for i, x in enumerate(xs):
            scores = [c["score"] for c in cells if c[x_key] == x and c[y_key] == y]
            if scores:
                grid[j, i] = float(np.mean(scores))
    fig, ax = plt.subplots(figsize=(17.5, 8))
    mesh = ax.pcolormesh(grid, cmap=NEEDLE_CMAP, vmin=vmin, vmax=vmax, edgecolors="white", linewidth=0.5)
    fig.colorbar(mesh, ax=ax, label="Score")
    ax.set_xticks(np.arange(len(xs)) + 0.5, [f"{x // 1000}K" if x >= 1000 and x % 1000 == 0 else str(x) for x in xs],
                  rotation=45)
    ax.set_yticks(np.arange(len(ys)) + 0.5, [f"{y:g}" for y in ys], rotation=0)
    ax.invert_yaxis()  # depth 0 (needle at the start) on top, as in the official plots
    ax.set_xlabel("Token Limit")
    ax.set_ylabel("Depth Percent")
    ax.set_title(title)
    marks = length_marks(xs, lengths or {})
    for position, label, color, dashes in marks:
        ax.axvline(position, color=color, linestyle=dashes, linewidth=2.5, label=label)
    if marks:
        ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.12), frameon=False, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def line_plot(points: dict[str, dict[float, float]], path: str | Path, title: str, xlabel: str,
              ylabel: str = "Accuracy") -> Path:
    """One line per series (e.g. per model): y against x, markers on every point."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, series in points.items():
        xs = sorted(series)
        ax.plot(xs, [series[x] for x in xs], marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
