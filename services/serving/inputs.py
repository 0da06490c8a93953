"""Parse and validate a scoring request (MLflow's protocol) against the model's signature.

Accepted bodies, as `mlflow models serve` accepts them:
  {"dataframe_split": {"columns": [...], "data": [[...], ...]}}
  {"dataframe_records": [{"col": value, ...}, ...]}
  {"instances": [...]}  and  {"inputs": [...] | {"col": [values]}}
For a model whose inputs are all numeric columns, the rows become one float64 matrix in the
signature's column order (the fast path, which the batcher can stack); otherwise a pandas
DataFrame for the model's own pyfunc `predict`. Every problem is an `InputError` (HTTP 400)
naming what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

NUMERIC_TYPES = {"double", "float", "long", "integer"}
FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


class InputError(ValueError):
    """The request does not fit the protocol or the model's signature (HTTP 400)."""


@dataclass(frozen=True)
class Schema:
    """The input columns of a model: names and MLflow types, in signature order."""

    names: tuple[str, ...]
    types: tuple[str, ...]

    @property
    def numeric(self) -> bool:
        return bool(self.names) and all(t in NUMERIC_TYPES for t in self.types)

    @property
    def integer_columns(self) -> list[int]:
        return [i for i, t in enumerate(self.types) if t in ("long", "integer")]


def parse_rows(body: Any, schema: Schema) -> np.ndarray:
    """A (rows, columns) float64 matrix for a numeric schema."""
    if not isinstance(body, dict):
        raise InputError("the body must be a JSON object with one of: " + ", ".join(FORMATS))
    present = [key for key in FORMATS if key in body]
    if len(present) != 1:
        raise InputError(f"the body must have exactly one of {', '.join(FORMATS)}; got {', '.join(sorted(body)) or 'none'}")
    kind = present[0]
    payload = body[kind]
    if kind == "dataframe_split":
        matrix = _split(payload, schema)
    elif kind == "dataframe_records" or (kind in ("instances", "inputs") and isinstance(payload, list) and payload and isinstance(payload[0], dict)):
        matrix = _records(payload, schema, kind)
    elif kind == "inputs" and isinstance(payload, dict):
        matrix = _columns(payload, schema)
    else:
        matrix = _positional(payload, schema, kind)
    return _checked(matrix, schema)


def _split(payload: Any, schema: Schema) -> list:
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise InputError('dataframe_split needs {"columns": [...], "data": [[...], ...]}')
    columns = payload.get("columns")
    data = payload["data"]
    if columns is None:
        return _positional(data, schema, "dataframe_split.data")
    if not isinstance(columns, list):
        raise InputError("dataframe_split.columns must be a list of column names")
    position = {name: i for i, name in enumerate(columns)}
    missing = [name for name in schema.names if name not in position]
    if missing:
        raise InputError(f"missing columns: {', '.join(missing)} (the model expects {', '.join(schema.names)})")
    if list(columns) == list(schema.names):
        return data
    order = [position[name] for name in schema.names]
    try:
        return [[row[i] for i in order] for row in data]
    except (IndexError, TypeError):
        raise InputError(f"each row of dataframe_split.data must be a list of {len(columns)} values") from None


def _records(records: Any, schema: Schema, kind: str) -> list:
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise InputError(f"{kind} must be a list of objects, one per row")
    try:
        return [[record[name] for name in schema.names] for record in records]
    except KeyError as exc:
        raise InputError(f"a row of {kind} has no column {exc.args[0]!r} (the model expects {', '.join(schema.names)})") from None


def _columns(payload: dict, schema: Schema) -> list:
    missing = [name for name in schema.names if name not in payload]
    if missing:
        raise InputError(f"inputs is missing columns: {', '.join(missing)}")
    columns = [payload[name] if isinstance(payload[name], list) else [payload[name]] for name in schema.names]
    if len({len(c) for c in columns}) != 1:
        raise InputError("every column of inputs must have the same number of values")
    return [list(row) for row in zip(*columns)]


def _positional(rows: Any, schema: Schema, kind: str) -> list:
    if not isinstance(rows, list):
        raise InputError(f"{kind} must be a list of rows")
    return rows


def _checked(rows: Any, schema: Schema) -> np.ndarray:
    if not rows:
        raise InputError("no rows to score")
    try:
        raw = np.asarray(rows)
    except ValueError:
        raise InputError(f"every row must have {len(schema.names)} values") from None
    if raw.ndim != 2 or raw.shape[1] != len(schema.names):
        got = raw.shape[1] if raw.ndim == 2 else "uneven"
        raise InputError(f"every row must have {len(schema.names)} values ({', '.join(schema.names)}); got {got}")
    if raw.dtype.kind not in "iuf":
        raise InputError(_first_bad_value(rows, schema))
    matrix = raw.astype(np.float64, copy=False)
    if not np.isfinite(matrix).all():
        column = schema.names[int(np.argwhere(~np.isfinite(matrix))[0][1])]
        raise InputError(f"column {column!r} has a value that is not a finite number")
    for i in schema.integer_columns:
        if not np.array_equal(matrix[:, i], np.round(matrix[:, i])):
            raise InputError(f"column {schema.names[i]!r} must hold integers")
    return matrix


def _first_bad_value(rows: list, schema: Schema) -> str:
    """Name the first non-numeric value, from the rows as the client sent them."""
    for row in rows:
        for name, value in zip(schema.names, row):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                return f"column {name!r} must be numeric ({schema.types[schema.names.index(name)]}); got {value!r}"
    return "every value must be a number"


def to_frame(body: Any):
    """A pandas DataFrame for models served through their own pyfunc `predict` (the general path)."""
    import pandas as pd

    if not isinstance(body, dict):
        raise InputError("the body must be a JSON object with one of: " + ", ".join(FORMATS))
    present = [key for key in FORMATS if key in body]
    if len(present) != 1:
        raise InputError(f"the body must have exactly one of {', '.join(FORMATS)}")
    kind, payload = present[0], body[present[0]]
    try:
        if kind == "dataframe_split":
            return pd.DataFrame(data=payload["data"], columns=payload.get("columns"))
        if kind == "inputs" and isinstance(payload, dict):
            return pd.DataFrame(payload)
        return pd.DataFrame(payload)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{kind} is not a table: {exc}") from None
