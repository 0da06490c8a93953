"""The model server on models that are not the example, trained here: a predict_proba classifier,
a string-column Pipeline, integer columns, a tree ensemble with 32 features, custom pyfunc models
with a dict and a DataFrame output, an estimator that predicts NaN. Each answer is compared with
what `mlflow models serve` answers for the same body (MLflow's own `invocations`)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.services.conftest import start_serving
from tests.services.test_serving import assert_same_as_mlflow, get, mlflow_answer, post, tracking_admin

TREE_TYPES = ["sklearn.tree._tree.Tree"]  # skops refuses tree internals unless named (we made them)
EXPECTED_PATH = {
    "proba": "matrix",
    "pipe": "columns",
    "ints": "matrix",
    "trees": "matrix",
    "dict": "pyfunc",
    "rows": "frame",
    "nan": "matrix",
}


def houses(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "city": rng.choice(["lyon", "oslo", "kyiv", "lima"], n),
            "size": rng.normal(80, 20, n).round(2),
            "rooms": rng.integers(1, 6, n),
        }
    )


def frames() -> dict[str, pd.DataFrame]:
    """Inputs of each model (training data; requests are drawn from them)."""
    from sklearn.datasets import make_classification, make_regression

    x_class, _ = make_classification(n_samples=300, n_features=6, n_informative=4, n_classes=3, random_state=0)
    x_tree, _ = make_regression(n_samples=300, n_features=32, random_state=0)
    rng = np.random.default_rng(1)
    return {
        "proba": pd.DataFrame(x_class, columns=[f"f{i}" for i in range(6)]),
        "pipe": houses(400),
        "ints": pd.DataFrame(
            {
                "floors": rng.integers(1, 9, 300),
                "year": rng.integers(1950, 2024, 300).astype("int32"),
                "area": rng.normal(90, 30, 300),
            }
        ),
        "trees": pd.DataFrame(x_tree, columns=[f"x{i}" for i in range(32)]),
        "dict": pd.DataFrame({"x": rng.normal(1, 1, 50)}),
        "rows": pd.DataFrame({"x": rng.normal(0, 1, 50), "name": rng.choice(["ann", "bob", "cy"], 50)}),
        "nan": pd.DataFrame({"x": rng.normal(0, 1, 50), "y": rng.normal(0, 1, 50)}),
    }


def log_sklearn(name: str, model, x: pd.DataFrame, *, predict_fn: str = "predict", **kwargs):
    import mlflow
    from mlflow.models import infer_signature

    return mlflow.sklearn.log_model(
        model,
        name="model",
        signature=infer_signature(x, getattr(model, predict_fn)(x)),
        input_example=x.head(3),
        pyfunc_predict_fn=predict_fn,
        registered_model_name=name,
        pip_requirements=["scikit-learn==1.9.1"],
        **kwargs,
    )


def log_pyfunc(name: str, model, x: pd.DataFrame, **kwargs):
    import mlflow
    from mlflow.models import infer_signature

    return mlflow.pyfunc.log_model(
        name="model",
        python_model=model,
        input_example=x.head(3),
        registered_model_name=name,
        pip_requirements=["mlflow"],
        signature=infer_signature(
            x, model.predict(None, x, kwargs.pop("example_params", None)), kwargs.pop("params", None)
        ),
        **kwargs,
    )


def train_and_log(kind: str, name: str, x: pd.DataFrame):
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from sklearn.tree import DecisionTreeRegressor

    from tests.services.slow_model import DictModel, RowModel, ScriptedRegressor

    target = np.arange(len(x)) % 3 if kind == "proba" else np.linspace(0, 10, len(x))
    if kind == "proba":
        return log_sklearn(name, LogisticRegression(max_iter=500).fit(x, target), x, predict_fn="predict_proba")
    if kind == "pipe":
        pipe = Pipeline(
            [
                (
                    "columns",
                    ColumnTransformer(
                        [
                            ("city", OneHotEncoder(handle_unknown="ignore"), ["city"]),
                            ("numbers", StandardScaler(), ["size", "rooms"]),
                        ]
                    ),
                ),
                ("ridge", Ridge()),
            ]
        )
        return log_sklearn(name, pipe.fit(x, x["size"] * 3 + x["rooms"] * 10 + (x["city"] == "oslo") * 25), x)
    if kind == "ints":
        return log_sklearn(
            name,
            DecisionTreeRegressor(max_depth=6, random_state=0).fit(x, x["floors"] * 3 + x["area"] / 10),
            x,
            skops_trusted_types=TREE_TYPES,
        )
    if kind == "trees":
        return log_sklearn(
            name,
            GradientBoostingRegressor(n_estimators=40, random_state=0).fit(x, x["x0"] * 2 + x["x5"]),
            x,
            skops_trusted_types=TREE_TYPES,
        )
    if kind == "nan":
        return log_sklearn(name, ScriptedRegressor().fit(x), x, serialization_format="cloudpickle")
    if kind == "dict":
        return log_pyfunc(name, DictModel(), x)
    return log_pyfunc(
        name,
        RowModel(),
        x,
        metadata={"row_independent": True},
        params={"scale": 1.0, "series": False},
        example_params={"scale": 1.0},
    )


@pytest.fixture(scope="module")
def inputs():
    return frames()


@pytest.fixture(scope="module")
def registered_models(tracking, inputs):
    """Each kind registered as serve-<kind>@champion, with its pyfunc loaded here (MLflow's answers)."""
    import mlflow

    with tracking_admin(tracking):
        mlflow.set_experiment("serving-models")
        models = {}
        for kind, x in inputs.items():
            with mlflow.start_run(run_name=kind):
                info = train_and_log(kind, f"serve-{kind}", x)
            mlflow.MlflowClient().set_registered_model_alias(f"serve-{kind}", "champion", info.registered_model_version)
            models[kind] = mlflow.pyfunc.load_model(f"models:/serve-{kind}/{info.registered_model_version}")
        yield models


@pytest.fixture(scope="module")
def servers(tracking, registered_models, tmp_path_factory):
    """One model server per kind, started on first use."""
    started = {}

    def serve(kind: str):
        if kind not in started:
            started[kind] = start_serving(
                tracking, f"serve-{kind}", tmp_path_factory.mktemp(kind), shutdown_delay_seconds="0"
            )
        return started[kind]

    yield serve
    for server in started.values():
        server.stop()


@pytest.mark.parametrize("kind", list(EXPECTED_PATH))
def test_every_model_answers_exactly_what_mlflow_serve_answers(kind, servers, registered_models, inputs):
    server, pyfunc = servers(kind), registered_models[kind]
    version = json.loads(get(server, "/version")[1])
    assert version["path"] == EXPECTED_PATH[kind], version["reason"]
    rows = inputs[kind].sample(12, random_state=3).reset_index(drop=True)
    assert_same_as_mlflow(server, pyfunc, rows)
    assert_same_as_mlflow(server, pyfunc, rows.head(1))


def test_a_predict_proba_classifier_answers_probabilities(servers, registered_models, inputs):
    rows = inputs["proba"].head(4)
    status, answer, _ = post(
        servers("proba"), {"dataframe_split": {"columns": list(rows.columns), "data": rows.values.tolist()}}
    )
    assert status == 200
    probabilities = np.array(answer["predictions"])
    assert probabilities.shape == (4, 3) and np.allclose(probabilities.sum(axis=1), 1.0)
    assert "predict_proba" in json.loads(get(servers("proba"), "/version")[1])["reason"]


def split_body(columns, *rows, **extra):
    return {"dataframe_split": {"columns": columns, "data": [list(r) for r in rows]}, **extra}


HOUSE = ["city", "size", "rooms"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (split_body([["city"], "size", "rooms"], ["lyon", 80.0, 3]), "must be a list of column names"),
        (
            {"dataframe_split": {"columns": HOUSE, "data": [{"city": "lyon", "size": 80.0, "rooms": 3}]}},
            "each a list of values",
        ),
        (split_body(["city", "size", "rooms", "size"], ["lyon", 80.0, 3, 81.0]), "more than once: size"),
        (split_body(HOUSE, ["lyon", True, 3]), "column 'size' must be numeric (double); got true"),
        (split_body(HOUSE, ["lyon", 80.0, False]), "column 'rooms' must be numeric (long); got false"),
        (split_body(HOUSE, ["lyon", None, 3]), "column(s) 'size' hold null"),
        (split_body(HOUSE, ["lyon", 80.0, None]), "column 'rooms' has a null"),
        (split_body(HOUSE, ["lyon", 80.0, 2.5]), "column 'rooms' must hold integers (long); got 2.5"),
        (split_body(HOUSE, ["lyon", 80.0, 2**70]), "out of range for long"),
        (split_body(["city", "size"], ["lyon", 80.0]), "missing columns: rooms"),
        (split_body(HOUSE, ["lyon", 80.0, 3], params={"alpha": 2}), "unknown params for this model: alpha"),
        (
            {"dataframe_records": [{"city": "lyon", "size": "big", "rooms": 3}]},
            "column 'size' must be numeric (double); got \"big\"",
        ),
        (
            {"dataframe_split": {"columns": HOUSE, "data": [["lyon", 80.0]]}},
            "row 0 of dataframe_split.data has 2 values for 3 columns",
        ),
    ],
)
def test_bad_inputs_get_a_400_naming_the_problem_and_change_nothing(servers, body, message):
    server = servers("pipe")
    status, answer, _ = post(server, body)
    assert status == 400 and message in answer["message"], answer
    status, _, _ = post(server, split_body(HOUSE, ["lyon", 80.0, 3]))
    assert status == 200


def test_what_mlflow_converts_is_converted_the_same_way(servers, registered_models):
    """Integral floats in an integer column, numbers written as strings, a null in a string column
    and extra columns: MLflow's parsing handles these, and the answer is its answer."""
    server, pyfunc = servers("pipe"), registered_models["pipe"]
    for body in (
        split_body(HOUSE, ["lyon", 80, 3.0]),
        split_body(HOUSE, ["lyon", "80.5", 3]),
        split_body(HOUSE, [None, 80.0, 3]),
        split_body([*HOUSE, "unused"], ["lyon", 80.0, 3, "x"]),
        {"dataframe_split": {"index": [7], **split_body(HOUSE, ["kyiv", 70.0, 2])["dataframe_split"]}},
    ):
        status, answer, _ = post(server, body)
        assert status == 200 and answer == mlflow_answer(pyfunc, body)[1], (body, answer)


def test_a_null_goes_to_a_model_that_can_take_it(servers, registered_models, inputs):
    """The decision tree takes missing values natively: a null in its float column is a prediction, as with MLflow."""
    body = split_body(["floors", "year", "area"], [3, 1990, None])
    status, answer, _ = post(servers("ints"), body)
    assert status == 200 and answer == mlflow_answer(registered_models["ints"], body)[1]


def test_params_reach_a_model_whose_signature_declares_them(servers, registered_models):
    server, pyfunc = servers("rows"), registered_models["rows"]
    body = split_body(["x", "name"], [1.5, "ann"], [2.0, "bob"], params={"scale": 3.0})
    status, answer, _ = post(server, body)
    assert status == 200 and answer == mlflow_answer(pyfunc, body)[1] == {
        "predictions": [{"score": 4.5, "tag": "ANN"}, {"score": 6.0, "tag": "BOB"}]
    }
    series = split_body(["x", "name"], [1.5, "ann"], [2.0, "bob"], params={"series": True})
    status, answer, _ = post(server, series)
    assert status == 200 and answer == mlflow_answer(pyfunc, series)[1] == {
        "predictions": [{"score": 1.5}, {"score": 2.0}]
    }
    assert post(server, split_body(["x", "name"], [1.5, "ann"], params={"speed": 3}))[0] == 400
    status, answer, _ = post(server, split_body(["x", "name"], [1.5, "ann"], params={"scale": "big"}))
    assert status == 400 and "scale" in answer["message"]


def test_a_non_finite_prediction_is_written_as_mlflow_writes_it_never_as_null(servers, registered_models):
    import urllib.request

    server = servers("nan")
    body = json.dumps(split_body(["x", "y"], [-1.0, 0.0], [2.0, 0.0])).encode()
    request = urllib.request.Request(
        server.url + "/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        raw = response.read()
    assert b"NaN" in raw and b"null" not in raw
    assert json.dumps(json.loads(raw)) == json.dumps(mlflow_answer(registered_models["nan"], body)[1])


def test_the_matrix_path_is_refused_when_it_would_answer_differently(tmp_path):
    """A pipeline that picks numeric columns by name cannot take a matrix: the check on load sends
    it to a path with named columns, which gives pyfunc.predict's answer."""
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from services.serving.plan import choose

    x = frames()["nan"]
    pipe = Pipeline([("scale", ColumnTransformer([("y", StandardScaler(), ["y"])])), ("ridge", Ridge())]).fit(x, x["x"])
    mlflow.sklearn.save_model(
        pipe, tmp_path / "m", signature=infer_signature(x, pipe.predict(x)), input_example=x.head(3)
    )
    path = choose(mlflow.pyfunc.load_model(str(tmp_path / "m")), batching=True)
    assert path.kind == "columns" and path.batchable and "matrix" in path.reason, path.reason
