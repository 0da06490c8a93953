"""Reading a JSON scoring request into typed columns, for models with a named column signature.

The plain cases of MLflow's four JSON formats are read here, fast:

  {"dataframe_split": {"columns": [...], "data": [[...], ...]}}
  {"dataframe_records": [{"col": value, ...}, ...]}     (also "instances" / "inputs" as a list of objects)
  {"inputs": {"col": [values], ...}}                    (or one value per column: one row)

`parse` returns the signature's columns as arrays of the signature's types, `None` when the
request is not a plain case (MLflow's own parsing then decides, with its exact semantics: e.g.
positional rows, a missing optional column, a numeric string, a null in a string column), or
raises `InputError` (HTTP 400) for what is wrong. Stricter than MLflow, which would answer
something silently: column names that are not strings or repeat, row objects where
`dataframe_split.data` takes lists, booleans in numeric columns, fractions or nulls in integer
columns, integers out of the column's range. Like MLflow: integers are taken for double columns,
a null in a double column is NaN (the model decides; see `paths.explain_failure`), columns not
in the signature are ignored.
"""

from __future__ import annotations

import functools
import itertools
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
NUMPY_TYPES = {"double": np.float64, "float": np.float32, "long": np.int64, "integer": np.int32, "boolean": np.bool_}
SIMPLE_TYPES = {*NUMPY_TYPES, "string"}
NUMERIC_TYPES = {"double", "float", "long", "integer"}
NULL = type(None)


class InputError(ValueError):
    """The request does not fit the protocol or the model's signature (HTTP 400)."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    """MLflow's type name: double, float, long, integer, boolean, string, or another (not read here)."""
    required: bool = True


@dataclass(frozen=True)
class Schema:
    """The input columns of a model, in signature order."""

    columns: tuple[Column, ...]

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @functools.cached_property
    def types(self) -> tuple[str, ...]:
        return tuple(c.type for c in self.columns)

    @functools.cached_property
    def simple(self) -> bool:
        """Every column has a type `parse` reads."""
        return bool(self.columns) and all(t in SIMPLE_TYPES for t in self.types)

    @functools.cached_property
    def numeric(self) -> bool:
        return bool(self.columns) and all(t in NUMERIC_TYPES for t in self.types)

    @functools.cached_property
    def doubles(self) -> bool:
        """Every column is a double: rows read as one float64 matrix are the columns as they are."""
        return bool(self.columns) and all(t == "double" for t in self.types)


class Table:
    """A request's rows: one array (or list of str) per signature column, and for all-double
    columns read in one go, the float64 matrix (rows x signature columns) they are views of."""

    def __init__(
        self,
        columns: dict[str, Any] | None,
        rows: int,
        params: dict | None = None,
        *,
        matrix: np.ndarray | None = None,
        names: tuple[str, ...] = (),
    ) -> None:
        self._columns, self.rows, self.params, self.matrix, self.names = columns, rows, params, matrix, names

    @property
    def columns(self) -> dict[str, Any]:
        if self._columns is None:
            assert self.matrix is not None
            self._columns = {name: self.matrix[:, j] for j, name in enumerate(self.names)}
        return self._columns


def check_structure(body: dict) -> None:
    """What every model's requests must get right, whatever the signature (400 otherwise)."""
    present = [key for key in FORMATS if key in body]
    if len(present) > 1:
        raise InputError(f"the body must have exactly one of {', '.join(FORMATS)}; got {', '.join(present)}")
    split = body.get("dataframe_split")
    if isinstance(split, dict):
        _split_columns(split)
        data = split.get("data")
        if isinstance(data, list) and any(not isinstance(row, list) for row in data):
            objects = any(isinstance(r, dict) for r in data)
            raise InputError(
                "dataframe_split.data must be a list of rows, each a list of values; got "
                + ("an object (use dataframe_records for rows as objects)" if objects else "a value that is not a list")
            )


def parse(body: dict, schema: Schema) -> Table | None:
    """The request's columns in the signature's types; None when MLflow's parsing must decide."""
    check_structure(body)
    present = [key for key in FORMATS if key in body]
    if not present or set(body) - {present[0], "params"}:
        return None  # e.g. MLflow's chat/completions inputs, or keys MLflow ignores
    kind, payload = present[0], body[present[0]]
    if kind == "dataframe_split" and schema.numeric:
        table = _numbers(payload, schema)
        if table is not None:
            table.params = body.get("params")
            return table
    if kind == "dataframe_split":
        raw = _split(payload, schema)
    elif kind == "inputs" and isinstance(payload, dict):
        raw = _column_dict(payload, schema)
    else:
        raw = _records(payload, schema, kind)
    if raw is None:
        return None
    values, rows = raw
    if rows == 0:
        raise InputError("no rows to score")
    columns, plain = {}, True
    for column in schema.columns:
        converted = _convert(values[column.name], column)
        plain = plain and converted is not None
        columns[column.name] = converted
    return Table(columns, rows, body.get("params")) if plain else None


def _numbers(payload: Any, schema: Schema) -> Table | None:
    """The common case at speed: dataframe_split rows holding only numbers (no booleans), for
    numeric columns; one array for all rows. None leaves every other case to the column-wise reading."""
    columns, data = payload.get("columns"), payload.get("data")
    if not isinstance(columns, list) or not isinstance(data, list) or not data or "index" in payload:
        return None
    kinds = set(map(type, itertools.chain.from_iterable(data)))
    integers = any(t in ("long", "integer") for t in schema.types)
    if not (kinds == {int} or (kinds <= {int, float} and not integers)):
        return None
    try:
        matrix = np.array(data, dtype=np.int64 if kinds == {int} else np.float64)
    except (ValueError, OverflowError):
        return None
    position = {name: i for i, name in enumerate(columns)}
    if matrix.ndim != 2 or matrix.shape[1] != len(columns) or any(name not in position for name in schema.names):
        return None
    if schema.doubles and matrix.dtype == np.float64:
        ordered = matrix if columns == list(schema.names) else matrix[:, [position[name] for name in schema.names]]
        return Table(None, len(data), matrix=ordered, names=schema.names)
    table = {}
    for column in schema.columns:
        values, dtype = matrix[:, position[column.name]], NUMPY_TYPES[column.type]
        if values.dtype != dtype:
            if column.type == "integer" and (values.min() < np.iinfo(dtype).min or values.max() > np.iinfo(dtype).max):
                return None
            values = values.astype(dtype)
        table[column.name] = values
    return Table(table, len(data))


def _split_columns(payload: dict) -> list[str] | None:
    columns = payload.get("columns")
    if columns is None:
        return None
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        bad = columns if not isinstance(columns, list) else next(c for c in columns if not isinstance(c, str))
        raise InputError(f"dataframe_split.columns must be a list of column names (strings); got {_json(bad)}")
    if len(set(columns)) != len(columns):
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        raise InputError(f"dataframe_split.columns names a column more than once: {', '.join(repeated)}")
    return columns


def _split(payload: Any, schema: Schema) -> tuple[dict, int] | None:
    if not isinstance(payload, dict) or "data" not in payload or set(payload) - {"columns", "data", "index"}:
        raise InputError('dataframe_split must be an object with "data" and optionally "columns" and "index"')
    columns, data = _split_columns(payload), payload["data"]
    if not isinstance(data, list):
        raise InputError("dataframe_split.data must be a list of rows")
    if columns is None or "index" in payload:
        return None  # positional rows, or an index the model may see: MLflow's parsing decides
    for i, row in enumerate(data):
        if len(row) != len(columns):
            raise InputError(f"row {i} of dataframe_split.data has {len(row)} values for {len(columns)} columns")
    missing = [c.name for c in schema.columns if c.name not in columns]
    if missing:
        _missing(missing, schema)
        return None
    transposed = list(zip(*data, strict=True))  # row lengths checked above
    position = {name: i for i, name in enumerate(columns)}
    return {name: list(transposed[position[name]]) if data else [] for name in schema.names}, len(data)


def _records(payload: Any, schema: Schema, kind: str) -> tuple[dict, int] | None:
    if not isinstance(payload, list):
        if kind == "dataframe_records":
            raise InputError("dataframe_records must be a list of objects, one per row")
        return None
    if not payload:
        raise InputError("no rows to score")
    objects = sum(isinstance(r, dict) for r in payload)
    if objects == 0 and kind != "dataframe_records":
        return None  # positional rows: MLflow's parsing decides
    if objects != len(payload):
        raise InputError(f"{kind} must be a list of objects, one per row; some rows are not objects")
    try:
        return {name: [record[name] for record in payload] for name in schema.names}, len(payload)
    except KeyError as exc:
        if any(c.name == exc.args[0] and c.required for c in schema.columns) and all(
            exc.args[0] not in r for r in payload
        ):
            raise InputError(f"missing columns: {exc.args[0]} (the model expects {', '.join(schema.names)})") from None
        return None  # a column missing in some rows only: MLflow fills it with nulls


def _column_dict(payload: dict, schema: Schema) -> tuple[dict, int] | None:
    missing = [c.name for c in schema.columns if c.name not in payload]
    if missing:
        _missing(missing, schema)
        return None
    values = [payload[name] for name in schema.names]
    if all(isinstance(v, list) for v in values):
        lengths = {len(v) for v in values}
        if len(lengths) != 1:
            raise InputError("every column of inputs must have the same number of values")
        return dict(zip(schema.names, values, strict=True)), lengths.pop()
    if not any(isinstance(v, (list, dict)) for v in values):
        return {name: [v] for name, v in zip(schema.names, values, strict=True)}, 1
    return None


def _missing(missing: list[str], schema: Schema) -> None:
    """A 400 when a required column is missing; only optional ones missing is MLflow's to decide."""
    required = [name for name in missing if any(c.name == name and c.required for c in schema.columns)]
    if required:
        raise InputError(f"missing columns: {', '.join(required)} (the model expects {', '.join(schema.names)})")


def _convert(values: list, column: Column) -> Any:
    """The column as the signature's type, None when MLflow must convert it, InputError when wrong."""
    kinds = set(map(type, values))
    if column.type == "string":
        return values if kinds == {str} else None
    if bool in kinds and column.type != "boolean":
        raise InputError(
            f"column {column.name!r} must be numeric ({column.type}); got {_json(_first(values, bool))} (a boolean)"
        )
    if column.type == "boolean":
        return np.array(values, dtype=np.bool_) if kinds == {bool} else None
    dtype = NUMPY_TYPES[column.type]
    if column.type in ("double", "float"):
        if kinds <= {int, float, NULL}:
            return np.array(values, dtype=dtype)  # None is NaN, as MLflow makes it
        return _unusual(values, kinds, column, float)
    if NULL in kinds:
        raise InputError(f"column {column.name!r} has a null; its type {column.type} cannot hold one")
    if kinds == {int}:
        try:
            return np.array(values, dtype=dtype)
        except OverflowError:
            raise InputError(f"column {column.name!r} has a value out of range for {column.type}") from None
    if float in kinds:
        fraction = next((v for v in values if isinstance(v, float) and not v.is_integer()), None)
        if fraction is not None:
            raise InputError(f"column {column.name!r} must hold integers ({column.type}); got {_json(fraction)}")
    bounds = np.iinfo(dtype)
    if any(isinstance(v, (int, float)) and not bounds.min <= v <= bounds.max for v in values):
        raise InputError(f"column {column.name!r} has a value out of range for {column.type}")
    return _unusual(values, kinds, column, int)


def _unusual(values: list, kinds: set, column: Column, number: type) -> None:
    """Numbers written as strings (and integral floats in integer columns) are MLflow's to convert;
    anything else in a numeric column is an error."""
    for value in values:
        if isinstance(value, str):
            try:
                number(value)
            except ValueError:
                raise InputError(
                    f"column {column.name!r} must be numeric ({column.type}); got {_json(value)}"
                ) from None
        elif not isinstance(value, (int, float)):
            raise InputError(f"column {column.name!r} must be numeric ({column.type}); got {_json(value)}")
    return None


def _first(values: list, kind: type) -> Any:
    return next(v for v in values if type(v) is kind)


def _json(value: Any) -> str:
    """A value as the client wrote it."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
