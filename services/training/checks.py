"""Data checks before training: the frame must fit the model's signature, without nulls, in range.

Built with pandera (README: Training, data versions and retraining, for why pandera): one
`DataFrameSchema` per run, from the columns and types of the current champion's signature (or
the task's declared features), the task's plausible ranges, and no nulls anywhere. Validation
is lazy, so one run reports every problem at once; a failure raises `DataCheckError`, whose
report names each column, the check and the rows (0-based data rows of the file) that broke it.
The runner stops there: nothing is trained and nothing is registered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pandas as pd
import pandera.pandas as pa

PANDAS_TYPES = {
    "double": ("float64", True),
    "float": ("float64", True),
    "long": ("int64", False),
    "integer": ("int64", False),
    "boolean": ("bool", False),
    "string": ("str", False),
    "datetime": ("datetime64[ns]", True),
}
"""MLflow signature type -> (pandas dtype, coerce). Numbers read as integers are valid doubles;
an integer column holding fractions or nulls is reported rather than truncated."""
MAX_ROWS_SHOWN = 10


@dataclass(frozen=True)
class Failure:
    column: str
    check: str
    rows: tuple[int, ...]
    """Offending data rows (0-based, header excluded); empty when the whole column fails."""
    values: tuple[Any, ...]

    def line(self) -> str:
        if not self.rows:
            found = f" (found {self.values[0]})" if self.values and self.check.startswith("dtype") else ""
            return f"column {self.column}: {self.check}{found}"
        shown = ", ".join(
            f"{row} ({value!r})" for row, value in list(zip(self.rows, self.values, strict=True))[:MAX_ROWS_SHOWN]
        )
        more = f" and {len(self.rows) - MAX_ROWS_SHOWN} more" if len(self.rows) > MAX_ROWS_SHOWN else ""
        return f"column {self.column}: {self.check} fails at rows {shown}{more}"


class DataCheckError(ValueError):
    """The training frame failed its checks; `failures` has one entry per column and check."""

    def __init__(self, failures: Sequence[Failure], rows: int) -> None:
        self.failures = tuple(failures)
        columns = sorted({f.column for f in failures})
        super().__init__(
            f"data checks failed on {rows} rows: {len(failures)} problem(s) in column(s) {', '.join(columns)}\n  "
            + "\n  ".join(f.line() for f in failures)
        )

    @property
    def report(self) -> str:
        return str(self)


def frame_schema(
    columns: Mapping[str, str | None], target: str, ranges: Mapping[str, tuple[float | None, float | None]]
) -> pa.DataFrameSchema:
    """Columns (name -> MLflow type, or None for "any type") and the target, none nullable, each in its range."""
    ranged_only = [(name, None) for name in ranges if name not in columns and name != target]  # required all the same
    spec = {}
    for name, kind in [*columns.items(), *ranged_only, (target, None)]:
        if kind is not None and kind not in PANDAS_TYPES:
            raise ValueError(
                f"column {name}: signature type {kind!r} has no data check; known: {', '.join(PANDAS_TYPES)}"
            )
        dtype, coerce = PANDAS_TYPES[kind] if kind else (None, False)
        low, high = ranges.get(name, (None, None))
        checks = [_range(low, high)] if low is not None or high is not None else []
        spec[name] = pa.Column(dtype, checks=checks, nullable=False, coerce=coerce, required=True)
    return pa.DataFrameSchema(spec, strict=False)


def _range(low: float | None, high: float | None) -> pa.Check:
    """Values within [low, high]. Values that are not numbers or are null pass here: the type and
    null checks report them, and a wrong type in one row must not hide range failures in others."""
    name = f"in_range({'-inf' if low is None else low}, {'inf' if high is None else high})"

    def within(series: pd.Series) -> pd.Series:
        numbers = pd.to_numeric(series, errors="coerce")
        inside = numbers.between(-float("inf") if low is None else low, float("inf") if high is None else high)
        return inside | numbers.isna()

    return pa.Check(within, name=name)


def check_frame(frame: pd.DataFrame, schema: pa.DataFrameSchema) -> pd.DataFrame:
    """The validated frame (coerced to the signature's types), or `DataCheckError` naming every problem."""
    try:
        return schema.validate(frame.reset_index(drop=True), lazy=True)
    except pa.errors.SchemaErrors as exc:
        raise DataCheckError(_failures(exc.failure_cases), rows=len(frame)) from None


def _failures(cases: pd.DataFrame) -> list[Failure]:
    columns = cases["column"].fillna("").astype(str)
    type_checks = cases["check"].astype(str).str.startswith(("dtype", "coerce_dtype"))
    type_failed = set(columns[type_checks])
    coerced = set(columns[cases["check"].astype(str).str.startswith("coerce_dtype")])
    failures: list[Failure] = []
    for (column, check), group in cases.groupby([columns, cases["check"].astype(str)], sort=False):
        if check == "column_in_dataframe":
            failures.extend(Failure(str(value), "missing from the data", (), ()) for value in group["failure_case"])
            continue
        rows = [
            (int(i), v)
            for i, v in zip(group["index"], group["failure_case"], strict=True)
            if i is not None and not pd.isna(i)
        ]
        if check.startswith("dtype") and column in coerced:
            continue  # the same values as the failed coercion
        if not rows and column in type_failed and not check.startswith(("dtype", "coerce_dtype")):
            continue  # a range check that could not compare values of the wrong type: the type failure says it
        values = tuple(v for _, v in rows) or tuple(group["failure_case"])[:1]
        failures.append(Failure(column, check, tuple(r for r, _ in rows), values))
    return failures
