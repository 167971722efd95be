"""A one-line Unicode sparkline (`▁▂▃▄▅▆▇█`), so the shell and a message whose chart failed to
upload still show the shape of a series.

Pure: imports only the standard library.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

BARS = "▁▂▃▄▅▆▇█"
#: Longest sparkline drawn; longer series are folded into this many buckets.
MAX_WIDTH = 60


def sparkline(values: Sequence[Decimal], *, width: int = MAX_WIDTH) -> str:
    """`values` as one line of at most `width` (≤ 60) bars, lowest value `▁`, highest `█`.

    A longer series is folded into `width` buckets, each drawn as its largest value so a one-day
    spike never disappears. A flat series is drawn at mid height (`▄`), an empty one as `""`.
    """
    width = max(1, min(width, MAX_WIDTH))
    points = list(values)
    if not points:
        return ""
    if len(points) > width:
        points = _fold(points, width)
    low, high = min(points), max(points)
    if high == low:
        return BARS[3] * len(points)
    top = len(BARS) - 1
    span = high - low
    return "".join(BARS[int((v - low) * top / span + Decimal("0.5"))] for v in points)


def _fold(points: list[Decimal], width: int) -> list[Decimal]:
    """`width` buckets of consecutive points, each the bucket's maximum."""
    size = len(points)
    return [max(points[i * size // width : (i + 1) * size // width]) for i in range(width)]
