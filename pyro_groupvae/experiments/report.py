"""Report formatting for the recipes: markdown tables and figure links, and saving figures into a run folder.

Metric code (:mod:`pyro_groupvae.evaluation`) returns numbers; the recipes turn them into the markdown sections of
``report.md`` with these helpers.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..plots import save_figure

__all__ = ["md_table", "fmt", "figure", "FigureWriter", "flatten_metrics", "run_report"]


def fmt(v, spec=".3f"):
    """A number for a table cell (``nan`` for NaN, ``str(v)`` for non-numbers)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return format(v, spec)


def md_table(header, rows):
    """Markdown table lines: ``header`` a list of column names, ``rows`` lists of cell strings."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return lines


def figure(name, alt=None):
    """Markdown image link to ``figures/<name>`` (relative to the report)."""
    return f"![{alt or Path(name).stem}](figures/{name})"


class FigureWriter:
    """Saves figures as PNGs into ``folder`` and returns their markdown links."""

    def __init__(self, folder):
        self.folder = Path(folder)

    def __call__(self, fig, name, alt=None):
        """Save ``fig`` as ``folder/name`` (closing it); return the markdown link."""
        save_figure(fig, self.folder / name)
        return figure(name, alt)


def flatten_metrics(metrics, prefix=""):
    """Scalar entries of a nested metrics dict, as ``(dotted.name, value)`` pairs."""
    rows = []
    for k, v in metrics.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            rows += flatten_metrics(v, name + ".")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            rows.append((name, v))
    return rows


def _short(v):
    return fmt(v, ".4g") if isinstance(v, float) else str(v)


def run_report(name, run_dir, config, history, metrics, sections):
    """The markdown of a run's ``report.md``: header (run folder, dataset, epochs, seed, ELBO, final training ELBO),
    the table of every scalar metric (curves left out), then the recipe's ``sections`` (lines; consecutive table
    rows stay together, anything else gets a blank line before it)."""
    lines = [f"# {name} run report", "", f"Run folder: `{run_dir}`; dataset `{config.get('dataset')}`, "
             f"{config.get('epochs')} epochs, seed {config.get('seed')}, ELBO `{config.get('elbo')}`.", ""]
    if history:
        last = history[-1]
        lines += [f"Final training ELBO per observation: {_short(last['train_elbo'])} "
                  f"(validation: {_short(last.get('val_elbo', float('nan')))}).", ""]
    lines += ["## Metrics", ""]
    lines += md_table(["metric", "value"], [[k, _short(v)] for k, v in flatten_metrics(metrics)
                                            if ".curves." not in f".{k}."])
    lines.append("")
    prev = ""
    for sec in sections:
        if not (sec.startswith("|") and prev.startswith("|")) and lines[-1] != "":
            lines.append("")
        lines.append(sec)
        prev = sec
    return "\n".join(lines)
