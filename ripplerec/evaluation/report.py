"""Writing a prequential result: JSON, a markdown table and a PNG plot of rolling NDCG@k."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ripplerec.evaluation.prequential import SEGMENTS, PrequentialResult

__all__ = ["markdown_table", "write_report", "rolling_mean"]


def rolling_mean(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to ``window`` values.

    >>> rolling_mean([1.0, 0.0, 1.0, 1.0], 2)
    [1.0, 0.5, 0.5, 1.0]
    """
    if not values:
        return []
    sums = np.cumsum(np.asarray(values, dtype=np.float64))
    out = []
    for i in range(len(values)):
        lo = i - window
        total = sums[i] - (sums[lo] if lo >= 0 else 0.0)
        out.append(float(total / min(i + 1, window)))
    return out


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def markdown_table(result: PrequentialResult) -> str:
    """One row per model: HR@k and NDCG@k overall, on cold-start items and users, and events/s."""
    k = result.config.k
    header = ["model"]
    for segment in SEGMENTS:
        label = segment.replace("_", " ")
        header += [f"HR@{k} {label}", f"NDCG@{k} {label}"]
    header += ["events/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for model in result.models:
        cells = [model.name]
        for segment in SEGMENTS:
            metrics = model.metrics[segment]
            cells += [_fmt(metrics[f"hr@{k}"]), _fmt(metrics[f"ndcg@{k}"])]
        cells.append(f"{model.events_per_s:,.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    counts = ", ".join(f"{segment.replace('_', ' ')} {n:,}" for segment, n in result.segments.items())
    lines.append("")
    lines.append(
        f"{result.dataset}: {result.events:,} events learned, {result.evaluated:,} evaluated "
        f"(every {result.config.every}; {counts}); learning batches of {result.config.batch_size}; "
        f"wall time {result.wall_s:,.0f} s."
    )
    return "\n".join(lines) + "\n"


def write_report(result: PrequentialResult, directory: str | Path) -> dict[str, Path]:
    """Write ``result.json``, ``results.md`` and ``rolling_ndcg.png`` into ``directory``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "result.json", "markdown": folder / "results.md", "plot": folder / "rolling_ndcg.png"}
    paths["json"].write_text(json.dumps(result.to_dict(), indent=1))
    paths["markdown"].write_text(markdown_table(result))
    figure, axes = plt.subplots(figsize=(10, 5))
    window = result.config.rolling_window
    for model in result.models:
        axes.plot(result.event_positions, rolling_mean(model.ndcg_trace, window), label=model.name, linewidth=1.2)
    axes.set_xlabel("event index in the stream")
    axes.set_ylabel(f"NDCG@{result.config.k} (rolling mean of {window} evaluated events)")
    axes.set_title(f"Prequential NDCG@{result.config.k} on {result.dataset}")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(paths["plot"], dpi=120)
    plt.close(figure)
    return paths
