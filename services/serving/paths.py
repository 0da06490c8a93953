"""How a loaded model answers requests. All of it runs in a model thread, never on the event loop.

- `ExactPath`: MLflow's own request parsing (`scoring_server._parse_json_data`, `parse_csv_input`,
  `parse_parquet_input`) and `pyfunc.predict`, one model call per request. Every model can take
  it, and every request that is not a plain case of the others does.
- `TablePath`: requests read by `inputs.parse` into typed columns, several requests stacked into
  one model input, one call of the same function `pyfunc.predict` calls, the output split back per
  request. `matrix`: a float64 matrix for a scikit-learn estimator with numeric columns;
  `columns`: the columns in MLflow's dtypes, each ColumnTransformer transformer of a scikit-learn
  Pipeline given its own (`sklearn_columns`); `frame`: a DataFrame with exactly the dtypes
  MLflow's schema enforcement gives, for any row-independent flavor. `plan` verifies each
  against `pyfunc.predict` before use.

A stacked call that fails is retried one request at a time, so a bad request fails alone. A
failure on an input with nulls or infinities gets a 400 naming the columns (`explain_failure`).
"""

from __future__ import annotations

import inspect
import io
import itertools
import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import orjson
from mlflow.exceptions import MlflowException
from mlflow.models.utils import _enforce_params_schema
from mlflow.pyfunc import scoring_server as mlflow_scoring

from services.serving.inputs import InputError, Schema, Table, check_structure, parse
from services.serving.protocol import (
    CSV,
    JSON,
    PARQUET,
    Answer,
    RequestError,
    bad_request,
    decode_json,
    encode_predictions,
    error_answer,
    prediction_sample,
)

log = logging.getLogger("serving")


@dataclass
class Request:
    body: bytes
    media: str
    capture: bool = False


def check_params(params: Any, params_schema: Any) -> None:
    """Params the model's signature does not declare get a 400 (MLflow would drop them silently)."""
    if params is None or params == {}:
        return
    if not isinstance(params, dict):
        raise bad_request(f"params must be an object of name: value; got {type(params).__name__}")
    declared = {p.name for p in params_schema.params} if params_schema is not None else set()
    unknown = sorted(set(params) - declared)
    if unknown:
        takes = f"it takes {', '.join(sorted(declared))}" if declared else "its signature declares no params"
        raise bad_request(f"unknown params for this model: {', '.join(unknown)} ({takes})")


def mlflow_error(exc: MlflowException) -> RequestError:
    return RequestError(exc.get_http_status_code(), exc.error_code, exc.message)


def explain_failure(exc: Exception, columns: dict[str, Any]) -> RequestError:
    """A model failure: 400 naming the columns with nulls or infinities when there are any, else 500."""
    bad = [name for name, values in columns.items() if _has_missing(values)]
    if bad:
        return bad_request(
            f"column(s) {', '.join(repr(b) for b in bad)} hold null, NaN or infinite values, which this model "
            f"cannot take ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        )
    log.error("prediction failed", exc_info=exc)
    return RequestError(500, "INTERNAL_ERROR", f"the model failed on this input: {type(exc).__name__}: {exc}")


def _has_missing(values: Any) -> bool:
    import pandas as pd

    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        return not bool(np.isfinite(values).all())
    try:
        series = pd.Series(values) if not isinstance(values, pd.Series) else values
        if series.isna().any():
            return True
        return series.dtype.kind == "f" and not bool(np.isfinite(series.to_numpy()).all())
    except (TypeError, ValueError):
        return False


class ExactPath:
    """MLflow's parsing and `pyfunc.predict` for one request: what `mlflow models serve` computes."""

    kind = "pyfunc"
    batchable = False
    drift_columns: tuple[str, ...] = ()

    def __init__(self, pyfunc: Any, schema: Schema | None, reason: str = "") -> None:
        self.pyfunc, self.schema, self.reason = pyfunc, schema, reason
        self.observe: Callable[[int], None] = lambda rows: None
        """Told the rows of every model call (the `serving_batch_rows` histogram)."""
        self.input_schema = pyfunc.metadata.get_input_schema()
        self.params_schema = pyfunc.metadata.get_params_schema()

    def answer(self, request: Request) -> Answer:
        data: Any = None
        try:
            data, params, unwrapped = self.parse(request)
            self.observe(len(data) if hasattr(data, "__len__") else 1)
            raw = self.pyfunc.predict(data, params=params)
            body = encode_predictions(raw, unwrapped=unwrapped)
        except RequestError as exc:
            return error_answer(exc)
        except MlflowException as exc:
            return error_answer(mlflow_error(exc))
        except Exception as exc:  # noqa: BLE001 - the model failed on this input
            return error_answer(explain_failure(exc, _frame_columns(data)))
        rows = len(data) if hasattr(data, "__len__") else 1
        return Answer(
            200,
            body,
            rows=rows,
            capture=_exact_capture(data, raw) if request.capture else None,
            sample=prediction_sample(raw),
        )

    def parse(self, request: Request) -> tuple[Any, Any, bool]:
        """(model input, params, whether the answer is unwrapped), as MLflow's scoring server parses them."""
        if request.media == CSV:
            try:
                text = request.body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise bad_request(f"the CSV body is not UTF-8: {exc}") from None
            return mlflow_scoring.parse_csv_input(io.StringIO(text), schema=self.input_schema), None, False
        if request.media == PARQUET:
            return mlflow_scoring.parse_parquet_input(io.BytesIO(request.body)), None, False
        body = decode_json(request.body)
        try:
            parse(body, self.schema) if self.schema is not None and self.schema.simple else check_structure(body)
        except InputError as exc:
            raise bad_request(str(exc)) from None
        check_params(body.get("params"), self.params_schema)
        parsed = mlflow_scoring._parse_json_data(body, self.pyfunc.metadata, self.input_schema)
        return parsed.data, parsed.params, parsed.is_unified_llm_input


def _frame_columns(data: Any) -> dict[str, Any]:
    if hasattr(data, "columns") and hasattr(data, "__getitem__"):
        return {str(c): data[c] for c in data.columns}
    if isinstance(data, dict):
        return {str(k): v for k, v in data.items()}
    return {}


def _exact_capture(data: Any, raw: Any) -> tuple | None:
    from mlflow.utils.proto_json_utils import _get_jsonable_obj

    predictions = _get_jsonable_obj(raw, pandas_orient="records")
    if not hasattr(data, "columns") or not isinstance(predictions, list) or len(predictions) != len(data):
        return None
    return tuple(map(str, data.columns)), data.to_numpy().tolist(), predictions


@dataclass
class TablePath:
    """Plain requests read into columns, stacked, one model call; anything else to `exact`."""

    kind: str
    """"matrix", "columns" (`sklearn_columns`) or "frame"."""
    schema: Schema
    build: Callable[[Sequence[Table]], Any]
    """Stacks tables into the model's input."""
    call: Callable[[Any, Any], Any]
    """The model function on a built input and params."""
    exact: ExactPath
    batchable: bool
    drift_columns: tuple[str, ...] = ()
    detail: str = ""
    """How the input is built (e.g. the matrix layout)."""
    reason: str = ""
    observe: Callable[[int], None] = lambda rows: None
    """Told the rows of every model call (the `serving_batch_rows` histogram)."""

    def read(self, request: Request) -> Table | Answer:
        """The request as a table, or its answer when it has one already (an error, or MLflow's path)."""
        if request.media != JSON:
            return self.exact.answer(request)
        try:
            body = decode_json(request.body)
            table = parse(body, self.schema)
            if table is not None:
                check_params(table.params, self.exact.params_schema)
                table.params = _enforce_params_schema(table.params, self.exact.params_schema)
        except InputError as exc:
            return error_answer(bad_request(str(exc)))
        except RequestError as exc:
            return error_answer(exc)
        except MlflowException as exc:
            return error_answer(mlflow_error(exc))
        return table if table is not None else self.exact.answer(request)

    def predict(self, tables: Sequence[Table]) -> list[Any]:
        """Each table's model output (or the exception it raised): one call for all, else one each."""
        if len(tables) > 1:
            try:
                stacked = self.build(tables)
                self.observe(sum(t.rows for t in tables))
                return split(self.call(stacked, tables[0].params), [t.rows for t in tables])
            except Exception as exc:  # noqa: BLE001 - find which request the model fails on
                log.debug("a stacked call failed (%s); one call per request", exc)
        outputs = []
        for table in tables:
            try:
                self.observe(table.rows)
                outputs.append(self.call(self.build([table]), table.params))
            except Exception as exc:  # noqa: BLE001 - delivered to this request alone
                outputs.append(exc)
        return outputs

    def answer(self, table: Table, output: Any, capture: bool) -> Answer:
        if isinstance(output, MlflowException):
            return error_answer(mlflow_error(output))
        if isinstance(output, Exception):
            return error_answer(explain_failure(output, table.columns))
        try:
            body = encode_predictions(output)
        except Exception as exc:  # noqa: BLE001 - an output MLflow's encoder cannot write either
            return error_answer(explain_failure(exc, {}))
        numeric = None
        if self.drift_columns:
            numeric = (
                table.matrix
                if table.matrix is not None and self.drift_columns == table.names
                else np.column_stack([np.asarray(table.columns[c], dtype=np.float64) for c in self.drift_columns])
            )
        return Answer(
            200,
            body,
            rows=table.rows,
            numeric=numeric,
            capture=_table_capture(table, output) if capture else None,
            sample=prediction_sample(output),
        )


def split(output: Any, sizes: list[int]) -> list[Any]:
    """One model output for stacked rows, cut back into each request's share."""
    import pandas as pd

    total = sum(sizes)
    if not isinstance(output, (np.ndarray, pd.DataFrame, pd.Series, list)) or len(output) != total:
        raise TypeError(
            f"cannot split a {type(output).__name__} of length "
            f"{len(output) if hasattr(output, '__len__') else '?'} into {total} rows"
        )
    bounds = list(itertools.accumulate(sizes, initial=0))
    if isinstance(output, (pd.DataFrame, pd.Series)):
        return [output.iloc[a:b] for a, b in itertools.pairwise(bounds)]
    return [output[a:b] for a, b in itertools.pairwise(bounds)]


def _table_capture(table: Table, output: Any) -> tuple | None:
    from mlflow.utils.proto_json_utils import _get_jsonable_obj

    predictions = _get_jsonable_obj(output, pandas_orient="records")
    if not isinstance(predictions, list) or len(predictions) != table.rows:
        return None
    values = [v.tolist() if isinstance(v, np.ndarray) else v for v in table.columns.values()]
    return tuple(table.columns), [list(row) for row in zip(*values, strict=True)], predictions


def call_with_params(function: Callable) -> Callable[[Any, Any], Any]:
    """Call a model function the way `PyFuncModel.predict` does: params only if it takes them."""
    parameter = inspect.signature(function).parameters.get("params")
    if parameter is not None and parameter.kind != inspect.Parameter.VAR_KEYWORD:
        return lambda data, params: function(data, params=params)
    return lambda data, params: function(data)


def answer_all(path: ExactPath | TablePath, requests: Sequence[Request], max_rows: int) -> list[Answer]:
    """Every request's answer; plain ones stacked into as few model calls as `max_rows` allows."""
    if isinstance(path, ExactPath):
        return [path.answer(r) for r in requests]
    answers: list[Answer | None] = [None] * len(requests)
    pending: dict[bytes, list[tuple[int, Table]]] = {}
    for i, request in enumerate(requests):
        read = path.read(request)
        if isinstance(read, Answer):
            answers[i] = read
        else:
            pending.setdefault(_params_key(read.params), []).append((i, read))
    for group in pending.values():
        for chunk in _chunks(group, max_rows):
            for (i, table), output in zip(chunk, path.predict([t for _, t in chunk]), strict=True):
                answers[i] = path.answer(table, output, requests[i].capture)
    return answers  # type: ignore[return-value]


def _params_key(params: Any) -> bytes:
    try:
        return orjson.dumps(params, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return repr(params).encode()


def _chunks(group: list[tuple[int, Table]], max_rows: int) -> list[list[tuple[int, Table]]]:
    chunks: list[list[tuple[int, Table]]] = [[]]
    rows = 0
    for item in group:
        if chunks[-1] and rows + item[1].rows > max_rows:
            chunks.append([])
            rows = 0
        chunks[-1].append(item)
        rows += item[1].rows
    return chunks
