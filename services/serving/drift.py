"""Data drift: compare a sliding window of live inputs with the training data, per feature.

Method: at registration, each numeric feature's training values are cut into 10 bins at their
deciles (`reference_statistics`), stored in the model's MLmodel metadata (`drift_reference`),
so every version carries its own reference. The server keeps the last `window` rows it scored
and, every few seconds, computes the population stability index per feature:

    PSI = sum over bins of (live% - reference%) * ln(live% / reference%)

with empty bins smoothed to 1e-4. Rules of thumb: < 0.1 stable, 0.1-0.2 moderate, > 0.2 a
real shift (the default alert threshold).

Limits: PSI looks at one feature at a time (a change in correlations between features goes
unseen); it needs enough live rows (nothing is reported below `min_rows`); decile bins hide
shifts inside a bin and treat categorical codes as numbers; a window of N rows has a noise
floor of roughly 9/N (0.045 for 200 rows), so small windows raise false alarms; and it only
sees inputs, not whether predictions got worse (that needs labels).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

BINS = 10
EPSILON = 1e-4


def reference_statistics(frame: Any, bins: int = BINS) -> dict[str, Any]:
    """Decile edges and bin shares of each numeric column of a training DataFrame."""
    features = {}
    for column in frame.columns:
        values = np.asarray(frame[column], dtype=float)
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        # the stored (rounded) edges are the ones both sides bin with: a value on an edge lands alike
        edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]).round(8))
        counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
        features[str(column)] = {"edges": edges.tolist(), "shares": (counts / values.size).round(6).tolist()}
    return {"method": "psi-deciles", "rows": int(len(frame)), "features": features}


def psi(reference_shares: Sequence[float], live_counts: np.ndarray) -> float:
    expected = np.clip(np.asarray(reference_shares, dtype=float), EPSILON, None)
    actual = np.clip(live_counts / max(live_counts.sum(), 1), EPSILON, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


class DriftWindow:
    """The last `size` scored rows, in a ring buffer, and their PSI against the reference."""

    def __init__(
        self, reference: Mapping[str, Any], columns: Sequence[str], size: int = 1000, min_rows: int = 100
    ) -> None:
        self.columns = [c for c in columns if c in reference.get("features", {})]
        self.index = [list(columns).index(c) for c in self.columns]
        self.reference = reference["features"]
        self.buffer = np.zeros((size, len(self.columns)))
        self.size, self.min_rows, self.filled, self.position = size, min_rows, 0, 0
        self.pending: list[np.ndarray] = []
        self.pending_rows = 0

    def add(self, matrix: np.ndarray) -> None:
        """Queue scored rows; they enter the window in one go (at `scores`, or once a window's worth waits)."""
        self.pending.append(matrix)
        self.pending_rows += len(matrix)
        if self.pending_rows >= self.size:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        matrix = self.pending[0] if len(self.pending) == 1 else np.concatenate(self.pending)
        self.pending, self.pending_rows = [], 0
        rows = matrix[-self.size :, self.index]
        end = self.position + len(rows)
        if end <= self.size:
            self.buffer[self.position : end] = rows
        else:
            split = self.size - self.position
            self.buffer[self.position :] = rows[:split]
            self.buffer[: end - self.size] = rows[split:]
        self.position = end % self.size
        self.filled = min(self.size, self.filled + len(rows))

    def scores(self) -> dict[str, float]:
        """PSI per feature, or nothing while the window holds fewer than `min_rows` rows."""
        self._flush()
        if self.filled < self.min_rows:
            return {}
        window = self.buffer[: self.filled]
        result = {}
        for j, column in enumerate(self.columns):
            edges = self.reference[column]["edges"]
            counts = np.bincount(np.searchsorted(edges, window[:, j], side="right"), minlength=len(edges) + 1)
            result[column] = round(psi(self.reference[column]["shares"], counts), 6)
        return result
