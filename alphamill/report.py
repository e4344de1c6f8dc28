"""A self-contained HTML report of an experiment: tables plus two charts.

The charts are rendered with matplotlib to PNG and embedded as base64, so the report is a
single file that opens anywhere (no JavaScript, no network).
"""

from __future__ import annotations

import base64
import html
import io
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd


def _png(series: dict[str, pd.Series], title: str, ylabel: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3.4), dpi=100)
    for label, s in series.items():
        if s is not None and len(s):
            ax.plot(pd.to_datetime(s.index), s.to_numpy(), label=label, linewidth=1.0)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.axhline(0.0, color="black", linewidth=0.6)
    if len(series) > 1:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _table(df: pd.DataFrame | None) -> str:
    if df is None or df.empty:
        return "<p><em>none</em></p>"
    return df.to_html(float_format=lambda x: f"{x:.4f}", border=0, classes="tbl")


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em}
.tbl{border-collapse:collapse;font-size:.85em}.tbl td,.tbl th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}
img{max-width:100%}.meta{color:#666;font-size:.85em}
"""


def write_html_report(
    path: str | os.PathLike,
    *,
    title: str,
    summary: pd.DataFrame,
    windows: pd.DataFrame,
    daily_ic: pd.DataFrame,
    backtest_summary: pd.DataFrame | None = None,
    backtest_caption: str | None = None,
    excess_return: pd.DataFrame | None = None,
    notes: dict[str, str] | None = None,
    selection: pd.DataFrame | None = None,
    selection_notes: list[str] | None = None,
) -> Path:
    """Write the report atomically (temp file + rename) and return its path.

    ``daily_ic`` has columns ``IC`` and ``Rank IC`` indexed by date; ``excess_return``
    has daily excess returns (columns: with/without cost) whose cumulative sums are drawn;
    ``backtest_caption`` says how the backtest traded and annualised (shown with its chart and
    table). ``selection`` is the ranking of several signals (deflated Sharpe ratio, PBO, paired IC
    test) with ``selection_notes`` the sentences that go with it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ic_chart = _png(
        {c: daily_ic[c].rolling(20, min_periods=1).mean() for c in daily_ic.columns},
        "Daily IC (20-day moving average)",
        "IC",
    )
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p class='meta'>generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}</p>",
    ]
    for k, v in (notes or {}).items():
        parts.append(f"<p class='meta'><b>{html.escape(k)}</b>: {html.escape(str(v))}</p>")
    caption = f"<p class='meta'>{html.escape(backtest_caption)}</p>" if backtest_caption else ""
    parts += ["<h2>Merged signal</h2>", _table(summary)]
    if selection is not None:
        parts += ["<h2>Selection among variants</h2>", _table(selection)]
        parts += [f"<p class='meta'>{html.escape(line)}</p>" for line in selection_notes or []]
    parts += ["<h2>Windows</h2>", _table(windows)]
    parts += ["<h2>Daily IC</h2>", f"<img alt='daily IC' src='data:image/png;base64,{ic_chart}'>"]
    if excess_return is not None and not excess_return.empty:
        cum = {c: excess_return[c].cumsum() for c in excess_return.columns}
        chart = _png(cum, "Cumulative excess return (top-k dropout)", "cumulative return")
        parts += ["<h2>Cumulative excess return</h2>", caption,
                  f"<img alt='excess return' src='data:image/png;base64,{chart}'>"]
    if backtest_summary is not None:
        parts += ["<h2>Backtest summary</h2>", caption, _table(backtest_summary)]
    parts.append("</body></html>")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".report-", suffix=".html")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a report is meant to be shared
    os.replace(tmp, path)
    return path
