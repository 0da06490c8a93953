"""Choosing how a model version is served, and proving the choice before the first request.

Decided from the model's own configuration, then checked by running it:

1. Only flavors whose predictions are row-independent get a fast path (scikit-learn, XGBoost,
   LightGBM; a pyfunc model when its metadata says `row_independent: true`), only with the
   predict function MLflow calls (`python_function.predict_fn`: predict, predict_proba, ...;
   not `score`), and only with a signature of named columns of simple types.
2. Reference rows: the model's input example (else rows made from the signature), repeated to
   `REFERENCE_ROWS` rows. `pyfunc.predict` on them is the expected answer.
3. Requests in each JSON format built from those rows are read by `inputs.parse` and must give
   exactly the DataFrame MLflow's parsing and schema enforcement give (values and dtypes).
4. `matrix` (scikit-learn, numeric columns): the estimator's configured function on a float64
   matrix must return exactly what `pyfunc.predict` returns (the matrix layout, C or F, that
   does is kept); else `columns` (a scikit-learn Pipeline starting with a ColumnTransformer):
   each transformer on its own columns (`sklearn_columns`), exactly again; else `frame`: the
   flavor's predict function on our DataFrame, exactly again.
5. Batching: predicting the rows stacked and split must agree with predicting each slice alone
   (bit for bit for labels and integers; to floating-point rounding, 1e-9 relative, for floats,
   since BLAS sums in a different order for a different number of rows).

A check that fails sends the model to MLflow's own path (`ExactPath`), with the reason logged.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Callable, Sequence

import numpy as np
import orjson

from services.serving.inputs import NUMERIC_TYPES, Column, Schema, Table, parse
from services.serving.paths import ExactPath, TablePath, call_with_params, split
from services.serving.sklearn_columns import columns_call

log = logging.getLogger("serving")
ROW_INDEPENDENT_FLAVORS = {"mlflow.sklearn", "mlflow.xgboost", "mlflow.lightgbm"}
ROW_FUNCTIONS = {"predict", "predict_proba", "predict_log_proba", "predict_joint_log_proba"}
DECLARATION = "row_independent"
"""MLmodel metadata key a pyfunc model sets to true when each row's prediction depends on that row only."""
REFERENCE_ROWS = 40
SLICES = (1, 2, 3, 5, 8, 13, 8)
SAMPLES = {
    "double": [0.0, 1.5, -2.25],
    "float": [0.0, 1.5, -2.25],
    "long": [0, 1, 7],
    "integer": [0, 1, 7],
    "boolean": [False, True, True],
    "string": ["a", "b", "c"],
}


class Rejected(Exception):
    """A fast path does not give MLflow's answer for this model (the message says why)."""


def column_schema(pyfunc: Any) -> Schema | None:
    """The signature's named input columns, or None (tensor or no signature)."""
    schema = pyfunc.metadata.get_input_schema()
    if schema is None or not schema.has_input_names() or schema.is_tensor_spec():
        return None
    return Schema(
        tuple(
            Column(spec.name, str(getattr(spec.type, "name", spec.type)), bool(getattr(spec, "required", True)))
            for spec in schema.inputs
        )
    )


def choose(pyfunc: Any, *, batching: bool, drift_features: Sequence[str] = ()) -> ExactPath | TablePath:
    """The verified path for this model, with `reason` saying why it was chosen."""
    schema = column_schema(pyfunc)
    conf = pyfunc.metadata.flavors.get("python_function", {})
    loader, function = conf.get("loader_module", ""), conf.get("predict_fn", "predict")
    why_not = _ineligible(pyfunc, schema, loader, function)
    if why_not:
        return ExactPath(pyfunc, schema, f"pyfunc.predict per request: {why_not}")
    assert schema is not None
    exact = ExactPath(pyfunc, schema)
    try:
        reference, source = _reference(pyfunc, schema)
        dtypes = _verified_dtypes(pyfunc, schema, reference)
        expected = pyfunc.predict(_mlflow_parsed(pyfunc, _bodies(reference)["dataframe_split"]))
        tables = [_table(reference.iloc[a:b], schema) for a, b in _bounds(len(reference))]
        path = _fastest(pyfunc, schema, function, loader, dtypes, tables, expected, exact)
    except Rejected as exc:
        return ExactPath(pyfunc, schema, f"pyfunc.predict per request: {exc}")
    except Exception as exc:  # noqa: BLE001 - the model or its example cannot be checked
        return ExactPath(
            pyfunc,
            schema,
            f"pyfunc.predict per request: the check on the input example failed ({type(exc).__name__}: {exc})",
        )
    path.drift_columns = tuple(c.name for c in schema.columns if c.type in NUMERIC_TYPES and c.name in drift_features)
    batch_check = _batch_problem(path, tables) if batching else "batching is off (SERVING_BATCHING)"
    path.batchable = batch_check is None
    path.reason = (
        f"{path.kind} path ({path.detail}): {loader} {function} on {len(reference)} {source} rows equals "
        "pyfunc.predict; " + ("requests batched" if path.batchable else f"no batching: {batch_check}")
    )
    return path


def _ineligible(pyfunc: Any, schema: Schema | None, loader: str, function: str) -> str | None:
    meta = pyfunc.metadata
    if schema is None:
        return "the signature has no named input columns"
    if not schema.simple:
        return (
            "column types "
            f"{sorted(set(schema.types) - {'double', 'float', 'long', 'integer', 'boolean', 'string'})} are read "
            "by MLflow's parser only"
        )
    if meta._is_signature_from_type_hint() or meta._is_type_hint_from_example():
        return "the signature comes from type hints"
    declared = loader == "mlflow.pyfunc.model" and (meta.metadata or {}).get(DECLARATION) is True
    if loader not in ROW_INDEPENDENT_FLAVORS and not declared:
        return (
            f"{loader or 'this flavor'} is not known to predict rows independently (a pyfunc model can declare "
            f"metadata {DECLARATION}: true)"
        )
    if function not in ROW_FUNCTIONS:
        return f"its predict function {function!r} is not a per-row prediction"
    return None


def _reference(pyfunc: Any, schema: Schema) -> tuple[Any, str]:
    """`REFERENCE_ROWS` rows from the input example (else made from the signature). Float
    columns are blended between neighbouring example rows, so the rows differ and floating-point
    rounding differences between two ways of computing show up."""
    import pandas as pd

    example, source = pyfunc.input_example, "input example"
    if isinstance(example, dict):
        example = pd.DataFrame(example if all(isinstance(v, list) for v in example.values()) else [example])
    if not isinstance(example, pd.DataFrame) or example.empty or not set(schema.names) <= set(example.columns):
        example = pd.DataFrame({c.name: SAMPLES[c.type] for c in schema.columns})
        source = "signature-made"
    example = example[list(schema.names)].reset_index(drop=True)
    n, rows = len(example), range(REFERENCE_ROWS)
    reference = example.iloc[[i % n for i in rows]].reset_index(drop=True)
    blend = np.array([((i * 7) % REFERENCE_ROWS) / REFERENCE_ROWS for i in rows])
    for column in schema.columns:
        values = example[column.name]
        if column.type in ("double", "float") and values.notna().all():
            here, there = (values.to_numpy()[[(i + k) % n for i in rows]] for k in (0, 1))
            reference[column.name] = (here * (1 - blend) + there * blend).astype(values.dtype)
    return reference, source


def _bounds(rows: int) -> list[tuple[int, int]]:
    edges = [0, *itertools.accumulate(SLICES)]
    return [(a, min(b, rows)) for a, b in itertools.pairwise(edges) if a < rows]


def _bodies(frame: Any) -> dict[str, dict]:
    """The rows in each JSON format a client may send, as JSON would carry them."""
    records = frame.to_dict(orient="records")
    bodies = {
        "dataframe_split": {
            "dataframe_split": {"columns": list(frame.columns), "data": [list(r.values()) for r in records]}
        },
        "dataframe_records": {"dataframe_records": records},
        "instances": {"instances": records},
        "inputs": {"inputs": frame.to_dict(orient="list")},
    }
    return {kind: orjson.loads(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)) for kind, body in bodies.items()}


def _mlflow_parsed(pyfunc: Any, body: dict) -> Any:
    """What MLflow's scoring server hands `pyfunc.predict` for this body."""
    from mlflow.pyfunc.scoring_server import _parse_json_data

    return _parse_json_data(dict(body), pyfunc.metadata, pyfunc.metadata.get_input_schema()).data


def _table(frame: Any, schema: Schema) -> Table:
    table = parse(_bodies(frame)["dataframe_split"], schema)
    if table is None:
        raise Rejected("the input example is not a plain request")
    return table


def _verified_dtypes(pyfunc: Any, schema: Schema, reference: Any) -> dict[str, Any]:
    """The dtypes MLflow's enforcement gives each column, after proving `inputs.parse` reads every
    format of the reference rows into the same DataFrame as MLflow does."""
    import pandas as pd
    from mlflow.pyfunc import _validate_prediction_input

    input_schema, loader = (
        pyfunc.metadata.get_input_schema(),
        pyfunc.metadata.flavors["python_function"].get("loader_module"),
    )
    dtypes: dict[str, Any] = {}
    for kind, body in _bodies(reference).items():
        theirs = _validate_prediction_input(_mlflow_parsed(pyfunc, body), None, input_schema, None, loader)[0]
        theirs = theirs[list(schema.names)].reset_index(drop=True)
        dtypes = dtypes or {name: theirs[name].dtype for name in schema.names}
        table = parse(body, schema)
        if table is None:
            raise Rejected(f"{kind} requests of the input example are not plain requests")
        ours = frame_builder(schema.names, dtypes)([table])
        try:
            pd.testing.assert_frame_equal(ours, theirs, check_exact=True)
        except AssertionError as exc:
            raise Rejected(
                f"{kind} requests are read differently from MLflow's parsing: {str(exc).splitlines()[0]}"
            ) from None
    return dtypes


def matrix_builder(names: Sequence[str], order: str) -> Callable[[Sequence[Table]], np.ndarray]:
    """Stacks tables into one float64 matrix, C or F ordered (BLAS results depend on it)."""

    def build(tables: Sequence[Table]) -> np.ndarray:
        if all(t.matrix is not None for t in tables):  # read as one float64 matrix already
            stacked = tables[0].matrix if len(tables) == 1 else np.concatenate([t.matrix for t in tables])
            return np.asfortranarray(stacked) if order == "F" else np.ascontiguousarray(stacked)
        columns = (
            [tables[0].columns[n] for n in names]
            if len(tables) == 1
            else [np.concatenate([t.columns[n] for t in tables]) for n in names]
        )
        transposed = np.array(columns, dtype=np.float64)
        return transposed.T if order == "F" else np.ascontiguousarray(transposed.T)

    return build


def columns_builder(names: Sequence[str], dtypes: dict[str, Any]) -> Callable[[Sequence[Table]], dict[str, Any]]:
    """Stacks tables into columns (name -> array) with the dtypes MLflow's schema enforcement gives."""
    import pandas as pd

    def build(tables: Sequence[Table]) -> dict[str, Any]:
        data = {}
        for name in names:
            parts = [t.columns[name] for t in tables]
            if len(parts) == 1:
                values = parts[0]
            else:
                values = (
                    list(itertools.chain.from_iterable(parts)) if isinstance(parts[0], list) else np.concatenate(parts)
                )
            dtype = dtypes[name]
            data[name] = (
                np.asarray(values, dtype=dtype) if isinstance(dtype, np.dtype) else pd.array(values, dtype=dtype)
            )
        return data

    return build


def frame_builder(names: Sequence[str], dtypes: dict[str, Any]) -> Callable[[Sequence[Table]], Any]:
    """Stacks tables into one DataFrame with the dtypes MLflow's schema enforcement gives."""
    import pandas as pd

    columns = columns_builder(names, dtypes)
    return lambda tables: pd.DataFrame(columns(tables))


def _fastest(
    pyfunc: Any,
    schema: Schema,
    function: str,
    loader: str,
    dtypes: dict,
    tables: list[Table],
    expected: Any,
    exact: ExactPath,
) -> TablePath:
    model_function = getattr(pyfunc._model_impl, function)
    problems: list[str] = []
    if loader == "mlflow.sklearn" and schema.numeric:
        for order in _layouts(frame_builder(schema.names, dtypes), tables):
            build = matrix_builder(schema.names, order)
            try:
                if same(model_function(build(tables)), expected):
                    return TablePath(
                        "matrix",
                        schema,
                        build,
                        lambda data, params: model_function(data),
                        exact,
                        batchable=False,
                        detail=f"{order}-ordered float64 matrix" + (f"; {problems[0]}" if problems else ""),
                    )
                problems.append(f"{order}-ordered matrix gives a different answer")
            except Exception as exc:  # noqa: BLE001 - e.g. a pipeline that selects columns by name
                problems.append(f"{order}-ordered matrix: {type(exc).__name__}")
    if loader == "mlflow.sklearn":
        columns = _columns_path(pyfunc, schema, function, dtypes, tables, expected, exact)
        if isinstance(columns, TablePath):
            columns.detail += "".join(f"; {problem}" for problem in problems[:1])  # why not a matrix
            return columns
        problems.append(columns)
    build, call = frame_builder(schema.names, dtypes), call_with_params(model_function)
    if not same(call(build(tables), None), expected):
        raise Rejected(
            f"{function} on the parsed DataFrame differs from pyfunc.predict "
            f"({'; '.join(problems) or 'no matrix path'})"
        )
    return TablePath(
        "frame",
        schema,
        build,
        call,
        exact,
        batchable=False,
        detail="; ".join(problems) or "DataFrame with MLflow's dtypes",
    )


def _columns_path(
    pyfunc: Any, schema: Schema, function: str, dtypes: dict, tables: list[Table], expected: Any, exact: ExactPath
) -> TablePath | str:
    """A Pipeline starting with a ColumnTransformer, its transformers called on their own columns
    (`sklearn_columns`), if that gives exactly `expected`; else why not."""
    unrolled = columns_call(getattr(pyfunc._model_impl, "sklearn_model", None), function, schema.names)
    if isinstance(unrolled, str):
        return f"no per-transformer columns: {unrolled}"
    build = columns_builder(schema.names, dtypes)
    try:
        if same(unrolled(build(tables), None), expected):
            return TablePath(
                "columns",
                schema,
                build,
                unrolled,
                exact,
                batchable=False,
                detail="each ColumnTransformer transformer on its own columns",
            )
    except Exception as exc:  # noqa: BLE001 - e.g. a transformer that is not what this scikit-learn version fits
        return f"per-transformer columns: {type(exc).__name__}: {exc}"
    return "per-transformer columns give a different answer"


def _layouts(build_frame: Callable[[Sequence[Table]], Any], tables: list[Table]) -> tuple[str, str]:
    """Matrix layouts to try, first the one a DataFrame like MLflow's gives scikit-learn."""
    return ("F", "C") if np.asarray(build_frame(tables)).flags.f_contiguous else ("C", "F")


def _batch_problem(path: TablePath, tables: list[Table]) -> str | None:
    try:
        stacked = split(path.call(path.build(tables), None), [t.rows for t in tables])
    except Exception as exc:  # noqa: BLE001
        return f"the stacked output cannot be split per request ({type(exc).__name__}: {exc})"
    for table, part in zip(tables, stacked, strict=True):
        if hasattr(part, "reset_index"):
            part = part.reset_index(drop=True)  # the index of a slice is not part of the answer
        if not agree(part, path.call(path.build([table]), None)):
            return "predicting rows together differs from predicting them apart"
    return None


def same(ours: Any, theirs: Any) -> bool:
    """Identical model outputs: type, shape, dtype and every value (NaN equal to NaN)."""
    import pandas as pd

    if type(ours) is not type(theirs):
        return False
    if isinstance(ours, np.ndarray):
        if ours.shape != theirs.shape or ours.dtype != theirs.dtype:
            return False
        return (
            bool(np.array_equal(ours, theirs, equal_nan=ours.dtype.kind in "fc"))
            if ours.dtype.kind != "O"
            else ours.tolist() == theirs.tolist()
        )
    try:
        if isinstance(ours, pd.DataFrame):
            pd.testing.assert_frame_equal(ours, theirs, check_exact=True)
        elif isinstance(ours, pd.Series):
            pd.testing.assert_series_equal(ours, theirs, check_exact=True)
        else:
            return bool(ours == theirs)
    except AssertionError:
        return False
    return True


def agree(ours: Any, theirs: Any) -> bool:
    """`same`, except that floats may differ by rounding (relative 1e-9 of the output's scale)."""
    import pandas as pd

    if same(ours, theirs):
        return True
    if isinstance(ours, pd.DataFrame) and isinstance(theirs, pd.DataFrame):
        return list(ours.columns) == list(theirs.columns) and all(
            agree(ours[c].to_numpy(), theirs[c].to_numpy()) for c in ours.columns
        )
    if isinstance(ours, pd.Series) and isinstance(theirs, pd.Series):
        return ours.name == theirs.name and agree(ours.to_numpy(), theirs.to_numpy())
    if (
        not (isinstance(ours, np.ndarray) and isinstance(theirs, np.ndarray))
        or ours.shape != theirs.shape
        or ours.dtype != theirs.dtype
    ):
        return False
    if ours.dtype.kind != "f":
        return False
    finite = np.isfinite(theirs)
    scale = max(1.0, float(np.abs(theirs[finite]).max())) if finite.any() else 1.0
    return bool(
        np.array_equal(np.isfinite(ours), finite)
        and np.allclose(ours[finite], theirs[finite], rtol=1e-9, atol=1e-9 * scale)
    )
