"""A study on one self-contained HTML page: the optimisation history, each parameter
against the metric, every trial's learning curve with where pruning stopped it, what
pruning and the static check saved, and the trials as a table."""

from __future__ import annotations

import base64
import io
from html import escape
from typing import Any

STATE_COLOURS = {"complete": "#1f77b4", "pruned": "#ff7f0e", "failed": "#d62728", "running": "#7f7f7f"}


def _png(figure: Any, plt: Any) -> str:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=90, format="png")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _history(summary: dict[str, Any], plt: Any) -> str:
    """Each trial's value (a pruned one's at the epoch it stopped) and the best so far."""
    figure, axis = plt.subplots(figsize=(7, 3.6))
    maximize = summary["direction"] == "maximize"
    best, best_line = None, []
    trained = [row for row in summary["trials"] if row["state"] != "infeasible"]
    for row in trained:
        value = row["value"] if row["value"] is not None else row["last"]
        if value is not None:
            axis.scatter(row["number"], value, color=STATE_COLOURS.get(row["state"], "#7f7f7f"), s=22, zorder=3)
        if row["state"] == "complete" and row["value"] is not None and (best is None or (row["value"] > best if maximize else row["value"] < best)):
            best = row["value"]
        best_line.append(best)
    numbers = [row["number"] for row in trained]
    axis.step(numbers, [b if b is not None else float("nan") for b in best_line], where="post", color="black", lw=1.2, label="best so far")
    for state, colour in STATE_COLOURS.items():
        if any(row["state"] == state for row in trained):
            axis.scatter([], [], color=colour, label=state)
    axis.set(xlabel="trial", ylabel=summary["metric"], title="optimisation history")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return _png(figure, plt)


def _parameters(summary: dict[str, Any], plt: Any) -> str:
    """The metric against each parameter (choices as categories)."""
    rows = [row for row in summary["trials"] if row["state"] in ("complete", "pruned") and (row["value"] if row["value"] is not None else row["last"]) is not None]
    keys = list(dict.fromkeys(key for row in summary["trials"] for key in row["params"]))
    if not keys:
        return ""
    columns = min(3, len(keys))
    lines = -(-len(keys) // columns)
    figure, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.2 * lines), squeeze=False)
    for index, key in enumerate(keys):
        axis = axes[index // columns][index % columns]
        points = [(row["params"][key], row["value"] if row["value"] is not None else row["last"], row["state"]) for row in rows if key in row["params"]]
        if points and not all(isinstance(p[0], (int, float)) and not isinstance(p[0], bool) for p in points):
            labels = sorted({str(p[0]) for p in points})
            points = [(labels.index(str(x)), y, s) for x, y, s in points]
            axis.set_xticks(range(len(labels)), labels)
        for x, y, state in points:
            axis.scatter(x, y, color=STATE_COLOURS.get(state, "#7f7f7f"), s=18)
        numeric = [p[0] for p in points]
        if numeric and min(numeric) > 0 and max(numeric) / min(numeric) > 50:
            axis.set_xscale("log")
        axis.set(xlabel=key, ylabel=summary["metric"])
        axis.grid(alpha=0.3)
    for index in range(len(keys), lines * columns):
        axes[index // columns][index % columns].axis("off")
    return _png(figure, plt)


def _curves(summary: dict[str, Any], plt: Any) -> str:
    """Every trained trial's metric per epoch: pruned ones end where the pruner stopped them."""
    figure, axis = plt.subplots(figsize=(7, 3.6))
    for row in summary["trials"]:
        if row["curve"]:
            axis.plot(range(1, len(row["curve"]) + 1), row["curve"], "-o", ms=2.5, lw=1, color=STATE_COLOURS.get(row["state"], "#7f7f7f"), alpha=0.7)
    axis.set(xlabel="epoch", ylabel=summary["metric"], title="learning curves (orange: pruned)")
    axis.grid(alpha=0.3)
    axis.xaxis.get_major_locator().set_params(integer=True)
    return _png(figure, plt)


def page(summary: dict[str, Any]) -> str:
    from cnnspec.harness.plots import _pyplot

    plt = _pyplot()
    counts, epochs, best = summary["counts"], summary["epochs"], summary["best"]
    saved = epochs["without_pruning"] - epochs["trained"]
    facts = [
        ("spec", summary["spec"]), ("metric", f"{summary['metric']} ({summary['direction']})"),
        ("sampler / pruner", f"{summary['sampler']} / {summary['pruner']}"),
        ("trials", ", ".join(f"{n} {state}" for state, n in counts.items() if n)),
        ("epochs trained", f"{epochs['trained']} of {epochs['without_pruning']} without pruning ({epochs['configurations']} configurations)"
                           + (f": {epochs['without_pruning'] / max(epochs['trained'], 1):.1f}x fewer" if saved > 0 else "")
                           + (f"; {epochs['promotions']} stopped trials promoted later, continued from their checkpoints" if epochs["promotions"] else "")),
        ("rejected before training", f"{counts['infeasible']} infeasible samples (over the budget or not building), checked in {summary['static_check_seconds']:.2f} s"),
        ("best", "none yet" if best is None else f"trial {best['number']}: {summary['metric']} {best['value']:.4f} with "
                                                  + ", ".join(f"{k}={v}" for k, v in best["params"].items())),
    ]
    table = "".join(
        "<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in (
            row["number"], row["state"], "" if row["value"] is None else f"{row['value']:.4f}",
            "" if row["last"] is None else f"{row['last']:.4f}", row["epochs"],
            "" if row["seconds"] is None else f"{row['seconds']:.1f}",
            ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["params"].items()),
            _why(row),
            row["run"] or "")) + "</tr>"
        for row in summary["trials"])
    figures = [_history(summary, plt), _curves(summary, plt), _parameters(summary, plt)]
    images = "".join(f'<img src="{uri}" alt="figure">' for uri in figures if uri)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cnnspec tune: {escape(summary['spec'])}</title>
<style>body{{font:14px system-ui,sans-serif;margin:24px;max-width:1200px}}table{{border-collapse:collapse;margin:12px 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}}img{{max-width:100%;margin:8px 0;display:block}}
dt{{font-weight:600}}dd{{margin:0 0 6px 0}}</style></head><body>
<h1>Study of {escape(summary['spec'])}</h1>
<dl>{''.join(f'<dt>{escape(k)}</dt><dd>{escape(str(v))}</dd>' for k, v in facts)}</dl>
{images}
<h2>Trials</h2>
<table><tr><th>trial</th><th>state</th><th>value</th><th>last reported</th><th>epochs</th><th>seconds</th><th>parameters</th><th>why it stopped</th><th>run</th></tr>
{table}</table>
</body></html>
"""


def _why(row: dict[str, Any]) -> str:
    """Why a trial stopped, and the promotion that continued it or that it is."""
    said = [row["reason"] or ""]
    if row.get("continues") is not None:
        said.append(f"continues trial {row['continues']} (promoted)")
    if row.get("continued_by") is not None:
        said.append(f"promoted later: trial {row['continued_by']} continues it")
    return "; ".join(part for part in said if part)
