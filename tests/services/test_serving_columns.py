"""The columns path (`services/serving/sklearn_columns.py`): a scikit-learn Pipeline starting with a
ColumnTransformer, each transformer called on its own columns, answers exactly what MLflow's
scoring server answers, for the ColumnTransformer's variants (sparse and dense outputs, remainder,
weights, steps after it, predict_proba), unseen categories, several requests stacked in one call,
and a null; what it cannot reproduce (a ColumnTransformer set to pandas output) gets the frame path.
In-process: the model as `plan.choose` serves it, against `scoring_server.invocations`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.serving.paths import Request, answer_all
from services.serving.plan import choose
from tests.services.test_serving import mlflow_answer
from tests.services.test_serving_models import houses


def pipeline(kind: str):
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    if kind == "sparse":  # the bench's pipeline
        columns = ColumnTransformer(
            [
                ("city", OneHotEncoder(handle_unknown="ignore"), ["city"]),
                ("numbers", StandardScaler(), ["size", "rooms"]),
            ]
        )
        return Pipeline([("columns", columns), ("ridge", Ridge())]), "predict"
    if kind == "weighted":
        encoder = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)
        columns = ColumnTransformer(
            [("city", encoder, ["city"])], remainder="passthrough", transformer_weights={"city": 2.0}
        )
        return Pipeline(
            [
                ("columns", columns),
                ("none", None),
                ("scale", StandardScaler()),
                ("classes", LogisticRegression(max_iter=500)),
            ]
        ), "predict_proba"
    columns = ColumnTransformer(
        [("city", OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["city"])], remainder="passthrough"
    ).set_output(transform="pandas")
    return Pipeline([("columns", columns), ("ridge", Ridge())]), "predict"


def served(kind: str, tmp_path):
    import mlflow
    from mlflow.models import infer_signature

    x = houses(300)
    model, function = pipeline(kind)
    target = (x["size"] * 3 + x["rooms"] * 10 + (x["city"] == "oslo") * 25).round()
    model.fit(x, target % 3 if kind == "weighted" else target)
    signature = infer_signature(x, getattr(model, function)(x))
    mlflow.sklearn.save_model(
        model, tmp_path / kind, signature=signature, input_example=x.head(3), pyfunc_predict_fn=function
    )
    pyfunc = mlflow.pyfunc.load_model(str(tmp_path / kind))
    return pyfunc, choose(pyfunc, batching=True)


def split_body(rows) -> dict:
    data = [list(r.values()) for r in rows.to_dict(orient="records")]
    return {"dataframe_split": {"columns": list(rows.columns), "data": data}}


@pytest.mark.parametrize("kind", ["sparse", "weighted"])
def test_each_transformer_on_its_own_columns_answers_what_mlflow_answers(kind, tmp_path):
    pyfunc, path = served(kind, tmp_path)
    assert path.kind == "columns" and path.batchable, path.reason
    rows = houses(60, seed=9)
    rows.loc[rows.index % 7 == 0, "city"] = "paris"  # a category the encoders never saw
    bodies = [split_body(rows.iloc[i : i + 1 + i % 4]) for i in range(0, 50, 5)]
    calls: list[int] = []
    path.observe = calls.append
    answers = answer_all(path, [Request(json.dumps(b).encode(), "application/json") for b in bodies], 512)
    assert calls == [sum(len(b["dataframe_split"]["data"]) for b in bodies)]  # one model call for all
    for body, answer in zip(bodies, answers, strict=True):
        assert (answer.status, json.loads(answer.body)) == mlflow_answer(pyfunc, body)


def test_a_null_the_model_cannot_take_gets_a_400_naming_its_column(tmp_path):
    pyfunc, path = served("sparse", tmp_path)
    body = split_body(houses(3, seed=4))
    body["dataframe_split"]["data"][1][1] = None  # size: NaN reaches Ridge, which refuses it
    (answer,) = answer_all(path, [Request(json.dumps(body).encode(), "application/json")], 512)
    assert answer.status == 400 and "'size'" in json.loads(answer.body)["message"]
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as mlflow_refusal:  # MLflow's scoring server refuses it too (400)
        mlflow_answer(pyfunc, body)
    assert mlflow_refusal.value.get_http_status_code() == 400


def test_a_column_transformer_that_wraps_its_output_gets_the_frame_path(tmp_path):
    pyfunc, path = served("pandas", tmp_path)
    assert path.kind == "frame" and "set_output" in path.reason, path.reason
    body = split_body(houses(5, seed=2))
    (answer,) = answer_all(path, [Request(json.dumps(body).encode(), "application/json")], 512)
    assert (answer.status, json.loads(answer.body)) == mlflow_answer(pyfunc, body)
    assert np.isfinite(json.loads(answer.body)["predictions"]).all()
