"""Batching for real: N concurrent requests become fewer model calls, and each request gets the
answer it gets alone (and that `mlflow models serve` gives), on the matrix path (a tree ensemble),
the columns path (a Pipeline with a string column) and the frame path (the same Pipeline, its
ColumnTransformer set to pandas output). A request the model fails on fails alone."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.services.conftest import start_serving
from tests.services.test_serving import get, mlflow_answer, post, tracking_admin
from tests.services.test_serving_models import TREE_TYPES, frames, houses, log_sklearn

CONCURRENT = 24


def train_and_log(kind: str, name: str):
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    if kind == "trees":
        x = frames()["trees"]
        return log_sklearn(
            name,
            GradientBoostingRegressor(n_estimators=40, random_state=0).fit(x, x["x0"] * 2 + x["x5"]),
            x,
            skops_trusted_types=TREE_TYPES,
        ), x
    x = houses(400)
    dense = kind == "frame"  # pandas output takes no sparse matrix
    encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=not dense)
    columns = ColumnTransformer([("city", encoder, ["city"])], remainder="passthrough")
    pipe = Pipeline(
        [
            ("columns", columns.set_output(transform="pandas") if dense else columns),
            ("trees", GradientBoostingRegressor(n_estimators=40, random_state=0)),
        ]
    )
    return log_sklearn(
        name,
        pipe.fit(x, x["size"] * 3 + x["rooms"] * 10 + (x["city"] == "oslo") * 25),
        x,
        skops_trusted_types=TREE_TYPES,
    ), x


PATHS = {"trees": "matrix", "pipe": "columns", "frame": "frame"}


@pytest.fixture(scope="module", params=list(PATHS))
def batched(request, tracking, tmp_path_factory):
    """(server, pyfunc, inputs) for a model served with a 50 ms batching window."""
    import mlflow

    kind, name = request.param, f"batch-{request.param}"
    with tracking_admin(tracking):
        mlflow.set_experiment("serving-batching")
        with mlflow.start_run(run_name=kind):
            info, x = train_and_log(kind, name)
        mlflow.MlflowClient().set_registered_model_alias(name, "champion", info.registered_model_version)
        pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{info.registered_model_version}")
    server = start_serving(
        tracking, name, tmp_path_factory.mktemp(name), batch_wait_ms="50", shutdown_delay_seconds="0"
    )
    try:
        version = json.loads(get(server, "/version")[1])
        assert version["path"] == PATHS[kind], version["reason"]
        yield server, pyfunc, x
    finally:
        server.stop()


def model_calls(server) -> float:
    for line in get(server, "/metrics")[1].splitlines():
        if line.startswith("serving_batch_rows_count{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def bodies(x, count: int) -> list[dict]:
    """Requests of 1 to 3 rows each, all different."""
    rows = x.sample(count * 3, random_state=5).reset_index(drop=True)
    out = []
    for i in range(count):
        chunk = rows.iloc[3 * i : 3 * i + 1 + i % 3]
        out.append(
            {
                "dataframe_split": {
                    "columns": list(chunk.columns),
                    "data": [list(r.values()) for r in chunk.to_dict(orient="records")],
                }
            }
        )
    return out


def concurrently(server, requests: list[dict]) -> list[tuple]:
    barrier = threading.Barrier(len(requests))

    def send(body):
        barrier.wait()
        return post(server, body)

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(send, requests))


def test_concurrent_requests_become_fewer_model_calls_with_the_same_answers(batched):
    server, pyfunc, x = batched
    assert json.loads(get(server, "/version")[1])["batching"] is True
    requests = bodies(x, CONCURRENT)
    alone = [post(server, body) for body in requests]
    for body, (status, answer, _) in zip(requests, alone, strict=True):
        assert status == 200 and answer == mlflow_answer(pyfunc, body)[1]
    before = model_calls(server)
    together = concurrently(server, requests)
    calls = model_calls(server) - before
    assert 1 <= calls <= CONCURRENT / 4, f"{CONCURRENT} concurrent requests took {calls:.0f} model calls"
    assert [a[:2] for a in together] == [a[:2] for a in alone]


def test_a_request_the_model_fails_on_fails_alone_in_its_batch(batched):
    server, pyfunc, x = batched
    requests = bodies(x, 12)
    columns = requests[5]["dataframe_split"]["columns"]
    column = "size" if "size" in columns else columns[-1]  # a double column: the null reaches the model
    requests[5]["dataframe_split"]["data"][0][columns.index(column)] = None  # gradient boosting takes no missing values
    answers = concurrently(server, requests)
    assert answers[5][0] == 400 and repr(column) in answers[5][1]["message"]
    for i, (status, answer, _) in enumerate(answers):
        if i != 5:
            assert status == 200 and answer == mlflow_answer(pyfunc, requests[i])[1]
    assert np.all([a[0] in (200, 400) for a in answers])
