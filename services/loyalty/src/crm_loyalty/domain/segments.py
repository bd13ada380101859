"""Value segments as plain data: RFM quintile scores and the named segment of each score.

Scores are 1 to 5 against four cut points per dimension (the 20th, 40th, 60th and 80th
percentiles of the population at the last full recompute): one more than the number of cut
points strictly below the value. Equal values so score alike, and a value shared by most of
the population (one order) scores low instead of landing in a high quintile by chance. The SQL
of the full recompute scores the same way (`store.rfm_recompute`).
"""

from __future__ import annotations

from collections.abc import Sequence

# The segment of each (recency, frequency) score, recency down the rows from 5 to 1 and
# frequency across from 1 to 5; monetary is scored and shown, but does not pick the name.
_GRID = (
    ("new", "potential-loyalist", "potential-loyalist", "champions", "champions"),  # R 5
    ("new", "potential-loyalist", "potential-loyalist", "loyal", "loyal"),  # R 4
    ("hibernating", "hibernating", "potential-loyalist", "loyal", "loyal"),  # R 3
    ("hibernating", "hibernating", "at-risk", "at-risk", "cannot-lose"),  # R 2
    ("lost", "lost", "at-risk", "at-risk", "cannot-lose"),  # R 1
)


def score(value: float, cuts: Sequence[float]) -> int:
    """1 to 5: one more than the cut points strictly below `value`."""
    return 1 + sum(1 for cut in cuts if cut < value)


def segment_of(recency: int, frequency: int) -> str:
    return _GRID[5 - recency][frequency - 1]


GRID: tuple[str, ...] = tuple(name for row in _GRID for name in row)
"""The grid row by row (recency 5 first), as the SQL scoring indexes it: (5 - R) * 5 + F."""
