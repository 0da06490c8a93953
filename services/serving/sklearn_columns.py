"""A scikit-learn Pipeline that starts with a ColumnTransformer, called without the glue's per-call cost.

On a small request, `Pipeline.predict(frame)` spends most of its time in the ColumnTransformer's
glue, not in the model: it validates the whole frame again, cuts each transformer's columns out
of it with pandas indexing and runs the transformers through joblib (sequentially). Here each
fitted transformer gets its columns as a DataFrame built straight from the request's arrays (the
frame `_safe_indexing` would cut out of MLflow's DataFrame: same columns, order, dtypes and
RangeIndex), its weight as `_transform_one` applies it, and the outputs go through the
ColumnTransformer's own `_validate_output` and `_hstack`; then the Pipeline's other steps and the
final estimator's function, as `Pipeline.<function>` runs them without metadata routing. The
transformers and estimators are the model's own objects, so unknown categories, missing values
and errors behave as in `pyfunc.predict`.

Only for models where this is what scikit-learn does (`columns_call` says why not otherwise), and
`plan` uses it only after it returned exactly `pyfunc.predict`'s answer on the reference rows.
The private ColumnTransformer methods used are those of the scikit-learn version pinned with the
server (services/serving/requirements.txt); another version fails the check and gets the frame path.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

ColumnsCall = Callable[[Mapping[str, Any], Any], Any]
"""The model function on the request's columns (name -> values in MLflow's dtypes) and params."""


def columns_call(model: Any, function: str, names: tuple[str, ...]) -> ColumnsCall | str:
    """The unrolled call of `model.<function>` for inputs with columns `names`, or why there is none."""
    import sklearn
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.utils._set_output import _get_output_config

    if not isinstance(model, Pipeline) or not model.steps or not isinstance(model.steps[0][1], ColumnTransformer):
        return "not a Pipeline starting with a ColumnTransformer"
    if sklearn.get_config().get("enable_metadata_routing"):
        return "scikit-learn's metadata routing is on"
    columns = model.steps[0][1]
    if not hasattr(columns, "feature_names_in_") or not hasattr(columns, "transformers_"):
        return "the ColumnTransformer was not fitted on a DataFrame"
    if _get_output_config("transform", columns)["dense"] != "default":
        return "the ColumnTransformer is set to wrap its output (set_output)"
    final = getattr(model.steps[-1][1], function, None)
    if final is None or not callable(final):
        return f"the final estimator has no {function}"
    parts = list(columns._iter(fitted=True, column_as_labels=True, skip_drop=True, skip_empty_columns=True))
    needed = {str(c) for _, _, selected, _ in parts for c in np.atleast_1d(selected)}
    if not needed <= set(names):
        return f"the ColumnTransformer takes columns the signature lacks: {', '.join(sorted(needed - set(names)))}"
    middle = [step for _, step in model.steps[1:-1] if step is not None and step != "passthrough"]
    return _unrolled(columns, parts, middle, final)


def _unrolled(columns: Any, parts: list[tuple], middle: list[Any], final: Callable) -> ColumnsCall:
    import pandas as pd

    def call(data: Mapping[str, Any], params: Any) -> Any:
        rows = len(next(iter(data.values())))
        outputs = []
        for _, transformer, selected, weight in parts:
            if isinstance(selected, str):  # a scalar selection: the transformer takes a Series
                given = pd.Series(data[selected], name=selected)
            else:
                given = pd.DataFrame({name: data[name] for name in selected})
            out = transformer.transform(given)
            outputs.append(out if weight is None else out * weight)
        columns._validate_output(outputs)
        transformed = columns._hstack(outputs, n_samples=rows) if outputs else np.zeros((rows, 0))
        for step in middle:
            transformed = step.transform(transformed)
        return final(transformed)

    return call
