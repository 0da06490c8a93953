"""The model server for real: MLflow tracking + moto S3 + services/serving, all on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest

from infra.stackfile import REPO_ROOT
from services.serving.protocol import MEDIA_TYPES, PARQUET
from tests.services.conftest import BUCKET, moto_client, start_serving

MODEL = "serve-test"


def post(server, body, *, content_type="application/json", raw=None, path="/invocations", timeout=30):
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(
        server.url + path, data=data, headers={"Content-Type": content_type}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), dict(exc.headers)


def get(server, path):
    try:
        with urllib.request.urlopen(server.url + path, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@contextlib.contextmanager
def tracking_admin(tracking):
    """MLflow in this process talks to the test tracking server as admin (module-scoped fixtures
    cannot use monkeypatch)."""
    import mlflow

    env = {
        "MLFLOW_TRACKING_USERNAME": tracking.username,
        "MLFLOW_TRACKING_PASSWORD": tracking.password,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    mlflow.set_tracking_uri(tracking.url)
    try:
        yield
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def registered(tracking, tmp_path_factory):
    """The example model registered as serve-test@champion (in this process, as admin)."""
    from examples.train import train_and_register

    with tracking_admin(tracking):
        yield train_and_register(MODEL)


@pytest.fixture(scope="module")
def server(tracking, registered, tmp_path_factory):
    server = start_serving(
        tracking,
        MODEL,
        tmp_path_factory.mktemp("serving"),
        workers="2",
        capture_fraction="1.0",
        capture_bucket=BUCKET,
        capture_flush_seconds="1",
        s3_endpoint_url=tracking.moto_url,
        path_prefix=f"/{MODEL}",
        shutdown_delay_seconds="0",
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rows():
    from examples.train import training_data

    _, x_test, _, _ = training_data()
    return x_test.head(20)


def mlflow_answer(pyfunc, body, content_type="application/json"):
    """(status, parsed JSON) that `mlflow models serve` answers for this body: its own `invocations`."""
    from mlflow.pyfunc import scoring_server

    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    result = scoring_server.invocations(data, content_type, pyfunc, pyfunc.metadata.get_input_schema())
    return result.status, json.loads(result.response)


def bodies_of(rows):
    """The same rows in every JSON body format MLflow accepts, and as CSV."""
    records = rows.to_dict(orient="records")
    reordered = rows[rows.columns[::-1]]
    return {
        "dataframe_split": {
            "dataframe_split": {"columns": list(rows.columns), "data": [list(r.values()) for r in records]}
        },
        "dataframe_records": {"dataframe_records": records},
        "instances": {"instances": records},
        "inputs (columns)": {"inputs": rows.to_dict(orient="list")},
        "inputs (records)": {"inputs": records},
        "reordered columns": {
            "dataframe_split": {
                "columns": list(reordered.columns),
                "data": [list(r.values()) for r in reordered.to_dict(orient="records")],
            }
        },
        "text/csv": rows.to_csv(index=False).encode(),
        PARQUET: rows.to_parquet(index=False),
    }


def assert_same_as_mlflow(server, pyfunc, rows, version=None):
    """Every body format gets exactly the predictions `mlflow models serve` answers (values and shape)."""
    for name, body in bodies_of(rows).items():
        content_type = name if name in ("text/csv", PARQUET) else "application/json"
        status, answer, headers = post(
            server,
            None if isinstance(body, bytes) else body,
            raw=body if isinstance(body, bytes) else None,
            content_type=content_type,
        )
        expected_status, expected = mlflow_answer(pyfunc, body, content_type)
        assert (status, expected_status) == (200, 200), (name, answer, expected)
        assert json.dumps(answer) == json.dumps(expected), name  # the same values (NaN included) and shape
        if version is not None:
            assert headers["x-model-version"] == version


def test_predictions_equal_mlflow_pyfunc_in_every_format(server, registered, rows):
    import mlflow

    pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL}/{registered.version}")
    assert_same_as_mlflow(server, pyfunc, rows, registered.version)
    assert_same_as_mlflow(server, pyfunc, rows.head(1), registered.version)
    # integers for double columns are taken, as MLflow takes them
    ints = rows.head(3).round().astype("int64")
    status, answer, _ = post(server, {"dataframe_split": json.loads(ints.to_json(orient="split", index=False))})
    assert (
        status == 200
        and answer
        == mlflow_answer(pyfunc, {"dataframe_split": json.loads(ints.to_json(orient="split", index=False))})[1]
    )


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"raw": b"{not json"}, 400, "not valid JSON"),
        ({"body": {"dataframe_split": {"columns": ["age", "sex"], "data": [[1, 2]]}}}, 400, "missing columns: bmi"),
        ({"body": {"dataframe_records": [{"age": "old"}]}}, 400, "missing columns: sex"),
        ({"body": "WRONG_TYPES"}, 400, "column 'bmi' must be numeric"),
        ({"body": {"dataframe_split": {"columns": None, "data": [[1, 2, 3]]}}}, 400, "missing inputs"),
        ({"body": {"rows": [[1]]}}, 400, "exactly one of the input fields"),
        ({"body": {"dataframe_records": []}}, 400, "no rows to score"),
        ({"body": {"dataframe_split": {"columns": [], "data": []}, "instances": []}}, 400, "exactly one of"),
        ({"body": [[1, 2]]}, 400, "must be a JSON object"),
        ({"raw": b"x" * 2_000_000}, 413, "limit"),
        ({"body": {}, "content_type": "text/plain"}, 415, "Content-Type"),
        ({"body": {}, "content_type": "application/json; charset=latin-1"}, 415, "UTF-8"),
    ],
)
def test_each_bad_input_gets_its_4xx_and_the_server_keeps_serving(server, rows, kwargs, status, message):
    if kwargs.get("body") == "WRONG_TYPES":
        record = rows.head(1).to_dict(orient="records")[0] | {"bmi": "heavy"}
        kwargs = {"body": {"dataframe_records": [record]}}
    got, answer, _ = post(
        server, kwargs.get("body"), raw=kwargs.get("raw"), content_type=kwargs.get("content_type", "application/json")
    )
    assert got == status and message in answer["message"], answer
    assert answer["error_code"]
    ok, _, _ = post(server, {"dataframe_records": rows.head(1).to_dict(orient="records")})
    assert ok == 200


def test_the_load_balancer_path_prefix_is_served_too(server, rows):
    status, answer, _ = post(
        server, {"dataframe_records": rows.head(2).to_dict(orient="records")}, path=f"/{MODEL}/invocations"
    )
    assert status == 200 and len(answer["predictions"]) == 2
    assert get(server, f"/{MODEL}/readyz")[0] == 200


def test_health_ready_and_unknown_routes(server):
    assert get(server, "/healthz")[0] == 200
    status, body = get(server, "/readyz")
    assert status == 200 and json.loads(body)["ready"] is True
    assert get(server, "/nope")[0] == 404
    assert get(server, "/invocations")[0] == 405


def test_metrics_expose_requests_latency_batches_version_and_predictions(server, registered, rows):
    for _ in range(5):
        post(server, {"dataframe_records": rows.head(3).to_dict(orient="records")})
    post(server, raw=b"{bad", body=None)
    status, text = get(server, "/metrics")
    assert status == 200
    for series in (
        f'serving_requests_total{{endpoint="{MODEL}",status="200"}}',
        f'serving_requests_total{{endpoint="{MODEL}",status="400"}}',
        "serving_request_duration_seconds_bucket",
        "serving_batch_rows_bucket",
        "serving_request_rows_bucket",
        "serving_prediction_value_bucket",
        f'serving_model_version_info{{endpoint="{MODEL}",model="{MODEL}",version="{registered.version}"}} 1.0',
        f'serving_model_ready{{endpoint="{MODEL}"}} 1.0',
    ):
        assert series in text, series


def test_captured_records_land_in_the_bucket(server, registered, rows, tracking):
    post(server, {"dataframe_records": rows.head(4).to_dict(orient="records")})
    s3 = moto_client("s3", tracking.moto_url)
    prefix = f"captures/{MODEL}/version={registered.version}/"
    deadline = time.time() + 20
    keys = []
    while time.time() < deadline and not keys:
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]
        time.sleep(0.5)
    assert keys, "no captured records after 20 s"
    record = json.loads(s3.get_object(Bucket=BUCKET, Key=keys[0])["Body"].read().splitlines()[0])
    assert (
        record["model_version"] == registered.version
        and set(record["inputs"]) == set(rows.columns)
        and "prediction" in record
    )


class SteadyLoad:
    """Keep-alive clients posting in a loop; records every status and served version."""

    def __init__(self, server, body, threads=4):
        import http.client

        self.statuses, self.versions, self.stop = [], [], threading.Event()
        host, port = server.url.removeprefix("http://").split(":")

        def loop():
            connection = http.client.HTTPConnection(host, int(port), timeout=30)
            while not self.stop.is_set():
                connection.request(
                    "POST", "/invocations", body=json.dumps(body), headers={"Content-Type": "application/json"}
                )
                response = connection.getresponse()
                response.read()
                self.statuses.append(response.status)
                self.versions.append(response.getheader("x-model-version"))

        self.threads = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


@pytest.fixture(scope="module")
def live_server(tracking, registered, tmp_path_factory):
    import mlflow

    from examples.train import train_and_register

    train_and_register("serve-live", alpha=1.0)
    server = start_serving(
        tracking, "serve-live", tmp_path_factory.mktemp("live"), poll_seconds="0.5", shutdown_delay_seconds="0"
    )
    yield server
    server.stop()
    assert mlflow  # imported for the registration above


def test_moving_the_alias_switches_versions_with_zero_failed_requests(live_server, rows):
    from examples.train import train_and_register

    body = {"dataframe_records": rows.head(2).to_dict(orient="records")}
    with SteadyLoad(live_server, body) as load:
        time.sleep(1.0)
        new = train_and_register("serve-live", alpha=5.0)
        deadline = time.time() + 60
        while time.time() < deadline and (not load.versions or load.versions[-1] != new.version):
            time.sleep(0.2)
        time.sleep(0.5)
    assert len(load.statuses) > 50
    assert set(load.statuses) == {200}, {s: load.statuses.count(s) for s in set(load.statuses)}
    assert load.versions[0] != new.version and load.versions[-1] == new.version


def test_a_broken_new_version_leaves_the_old_one_serving(live_server, rows, tracking):
    import mlflow

    client = mlflow.MlflowClient()
    serving_version = post(live_server, {"dataframe_records": rows.head(1).to_dict(orient="records")})[2][
        "x-model-version"
    ]
    run = client.create_run(client.get_experiment_by_name("examples").experiment_id)
    broken = client.create_model_version(
        "serve-live", source=f"runs:/{run.info.run_id}/no-model-here", run_id=run.info.run_id
    )
    client.set_registered_model_alias("serve-live", "champion", broken.version)
    deadline = time.time() + 30
    failures = 0.0
    while time.time() < deadline and failures < 1:
        text = get(live_server, "/metrics")[1]
        line = next((row for row in text.splitlines() if row.startswith("serving_model_load_failures_total{")), "x 0")
        failures = float(line.split()[-1])
        time.sleep(0.3)
    assert failures >= 1
    status, _, headers = post(live_server, {"dataframe_records": rows.head(1).to_dict(orient="records")})
    assert status == 200 and headers["x-model-version"] == serving_version
    assert get(live_server, "/readyz")[0] == 200


def test_sigterm_turns_readiness_off_at_once_and_finishes_in_flight_requests(tracking, registered, tmp_path):
    import mlflow
    import pandas as pd

    from tests.services.slow_model import SlowModel

    mlflow.set_experiment("examples")
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=SlowModel(1.5),
            input_example=pd.DataFrame({"x": [1.0]}),
            pip_requirements=["mlflow"],
            registered_model_name="serve-slow",
        )
    mlflow.MlflowClient().set_registered_model_alias("serve-slow", "champion", info.registered_model_version)
    server = start_serving(tracking, "serve-slow", tmp_path, drain_seconds="10", shutdown_delay_seconds="1")
    result = {}

    def call():
        result["answer"] = post(server, {"dataframe_split": {"columns": ["x"], "data": [[2.0], [3.5]]}})

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(0.5)  # the request is inside the model now
    os.killpg(server.process.pid, signal.SIGTERM)
    time.sleep(0.2)
    assert get(server, "/readyz")[0] == 503  # not ready at once, while still answering
    worker.join(timeout=30)
    server.process.wait(timeout=30)
    status, answer, _ = result["answer"]
    assert status == 200 and answer["predictions"] == [4.0, 7.0]
    # uvicorn shuts down cleanly, then re-raises SIGTERM so a supervisor sees why it stopped
    assert server.process.returncode in (0, -signal.SIGTERM)
    log = server.log.read_text()
    assert "SIGTERM: not ready" in log and "Application shutdown complete" in log


def test_worker_count_follows_the_cpu(monkeypatch):
    from services.serving.settings import ServingSettings, available_cpus

    monkeypatch.delenv("SERVING_WORKERS", raising=False)
    assert ServingSettings(model_name="m").workers == available_cpus() >= 1


def test_the_image_installs_the_parquet_reader_the_server_accepts_bodies_for():
    """Parquet bodies are read by pandas with pyarrow; an image without it answers them 400 on the
    cluster while every test here (run in the lock's environment) passes."""
    from tests.unit.test_image_requirements import requirement_lines

    assert PARQUET in MEDIA_TYPES
    image = (REPO_ROOT / "services/serving/requirements.txt").read_text()
    assert "pyarrow" in {line.split("==")[0].strip().lower() for line in requirement_lines(image)}


def _socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets a process holds open (its /proc/<pid>/fd links)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def _tcp_inodes(port: int, state: str) -> set[int]:
    """Inodes of the IPv4 sockets on local `port` in a /proc/net/tcp state (0A listen, 01 established)."""
    inodes = set()
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == state:
            inodes.add(int(fields[9]))
    return inodes


def _children(pid: int) -> list[int]:
    children = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry))
    return children


def test_each_worker_listens_on_its_own_socket_and_takes_a_share_of_new_connections(server):
    """uvicorn's workers shared their parent's one socket, and a burst of keep-alive connections could
    all land on whichever worker was awake; each worker now has its own SO_REUSEPORT socket, and the
    kernel spreads new connections over them."""
    import http.client

    port = int(server.url.rsplit(":", 1)[1])
    listening = _tcp_inodes(port, "0A")
    children = {pid: _socket_inodes(pid) for pid in _children(server.process.pid)}
    workers = [pid for pid, held in children.items() if held & listening]  # not multiprocessing's helpers
    owners = {inode: [pid for pid in workers if inode in children[pid]] for inode in listening}
    assert len(listening) == 2, listening  # one per worker (SERVING_WORKERS=2), none shared
    assert all(len(pids) == 1 for pids in owners.values()), owners
    assert not listening & _socket_inodes(server.process.pid)  # the parent holds none of them
    connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(64)]
    try:
        for connection in connections:  # keep-alive: each stays with the worker that accepted it
            connection.request("GET", "/healthz")
            assert connection.getresponse().read() is not None
        established = _tcp_inodes(port, "01")
        shares = sorted(len(established & workers_inodes) for workers_inodes in map(_socket_inodes, workers))
    finally:
        for connection in connections:
            connection.close()
    assert sum(shares) == 64 and shares[0] >= 12, shares  # binomial(64, 1/2): fewer than 12 is ~1e-7
