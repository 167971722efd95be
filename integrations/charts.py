"""Alert charts: an anomaly's series drawn as a PNG with matplotlib's Agg backend (headless, no
display, no GUI toolkit), for the chart a `usage_spike` or `invoice_jump` alert carries.

Usage is a line of the last 60 days with the expected value and its band shaded and the
anomalous days marked; invoices are bars of the last 12 with the expected total marked and the
jump in red. Rendering is CPU-bound (tens of milliseconds) and thread-safe here: each call makes
its own `Figure` (the object-oriented API, never `pyplot`'s global state).
"""

from __future__ import annotations

import io
from decimal import Decimal

import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot; we never do, but a library might

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bot.domain.anomalies import AlertKind, Anomaly

#: Pixels: wide and short, like a Slack image preview.
WIDTH, HEIGHT, DPI = 900, 320, 100
ACTUAL = "#1f5fa8"
EXPECTED = "#6b7280"
BAND = "#cbd5e1"
ANOMALY = "#d62828"


def _f(value: Decimal | None) -> float:
    # Floats only for drawing pixels; the figures shown as text stay Decimal elsewhere.
    return float(value) if value is not None else float("nan")


class MatplotlibCharts:
    """`ChartRenderer` with matplotlib (Agg)."""

    def render(self, anomaly: Anomaly) -> bytes | None:
        """The PNG of `anomaly`'s series, or None when it has fewer than two points."""
        points = list(anomaly.series)
        if len(points) < 2:
            return None
        fig = Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        xs = list(range(len(points)))
        labels = [p.day.strftime("%b %-d") for p in points]
        actual = [_f(p.actual) for p in points]
        expected = [_f(p.expected) for p in points]
        low = [_f(p.low if p.low is not None else p.expected) for p in points]
        high = [_f(p.high if p.high is not None else p.expected) for p in points]
        marked = [i for i, p in enumerate(points) if p.anomalous]
        if anomaly.kind is AlertKind.INVOICE_JUMP:
            colors = [ANOMALY if i in marked else ACTUAL for i in xs]
            ax.bar(xs, actual, color=colors, width=0.6, label="invoice total")
            ax.plot(xs, expected, color=EXPECTED, marker="_", markersize=18, linestyle="none",
                    label="expected")  # fmt: skip
            ax.fill_between(xs, low, high, color=BAND, alpha=0.5, step="mid", label="expected band")
            step = 1
        else:
            ax.fill_between(xs, low, high, color=BAND, alpha=0.6, label="expected band")
            ax.plot(xs, expected, color=EXPECTED, linestyle="--", linewidth=1, label="expected")
            ax.plot(xs, actual, color=ACTUAL, linewidth=1.6, label="actual")
            ax.scatter([xs[i] for i in marked], [actual[i] for i in marked], color=ANOMALY,
                       zorder=5, s=36, label="anomaly")  # fmt: skip
            step = max(1, len(points) // 8)
        ax.set_xticks(xs[::step])
        ax.set_xticklabels(labels[::step], fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        unit = anomaly.currency.upper()
        ax.set_ylabel(unit, fontsize=8)
        title = f"{anomaly.account_id} · {anomaly.kind.value} · {anomaly.period.isoformat()}"
        ax.set_title(title, fontsize=10, loc="left")
        ax.grid(axis="y", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
        ax.legend(fontsize=7, loc="upper left", frameon=False)
        ax.set_ylim(bottom=0)
        fig.tight_layout()
        out = io.BytesIO()
        fig.savefig(out, format="png")
        return out.getvalue()
