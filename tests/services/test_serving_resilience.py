"""The model server against slow models, hostile or unlucky clients, and a rollout, on loopback.

Every client here is bounded (counts, timeouts) and stops by itself. Tests marked `slow` put the
server under load; `pytest -m "not slow"` skips them.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.services.conftest import start_serving
from tests.services.test_serving import MODEL, get, registered, tracking_admin  # noqa: F401 - `registered` is a fixture

LIMITS = {
    "shutdown_delay_seconds": "0",
    "max_connections": "100",
    "header_timeout_seconds": "1",
    "body_timeout_seconds": "2",
    "max_header_bytes": "8192",
    "linger_seconds": "1",
    "max_body_bytes": "1048576",
}
BODY = json.dumps(
    {
        "dataframe_split": {
            "columns": ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"],
            "data": [[0.03, 0.05, 0.06, 0.02, -0.04, -0.03, -0.04, 0.0, 0.02, -0.02]],
        }
    }
).encode()


def address(server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def connect(server, timeout: float = 5) -> socket.socket:
    return socket.create_connection(address(server), timeout=timeout)


def read_all(sock: socket.socket, timeout: float = 5) -> bytes:
    """Everything the server sends until it closes (or `timeout` passes)."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
    return data


def read_response(sock: socket.socket, timeout: float = 5) -> bytes:
    """One response: its headers and `Content-Length` bytes of body."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def status_of(response: bytes) -> int | None:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else None


def memory_kib(pid: int) -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


def headers(length: int | None = None, *extra: str) -> bytes:
    lines = ["POST /invocations HTTP/1.1", "Host: test", "Content-Type: application/json", *extra]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture(scope="module")
def limited(tracking, registered, tmp_path_factory):  # noqa: F811
    """The example model behind small limits, so the tests reach them quickly."""
    server = start_serving(tracking, MODEL, tmp_path_factory.mktemp("limited"), **LIMITS)
    yield server
    server.stop()


def test_oversized_headers_get_431_and_the_connection_closes(limited):
    with connect(limited) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: test\r\nX-Big: ")
        try:
            for _ in range(64):  # up to 1 MiB of a header value that never ends
                sock.sendall(b"a" * 16384)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert status_of(read_all(sock)) == 431


def test_headers_that_never_finish_get_408_within_the_header_timeout(limited):
    with connect(limited) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: test\r\n")
        response = read_all(sock, timeout=5)
    assert status_of(response) == 408 and time.monotonic() - started < 3


def test_a_declared_length_over_the_limit_gets_413_at_once_without_sending_the_body(limited):
    with connect(limited) as sock:
        started = time.monotonic()
        sock.sendall(headers(10 * 1024**3))  # "10 GB" that never comes
        response = read_all(sock, timeout=5)
    assert status_of(response) == 413 and b"connection: close" in response.lower() and time.monotonic() - started < 2


def test_expect_100_continue_gets_the_413_instead_of_a_go_ahead(limited):
    with connect(limited) as sock:
        sock.sendall(headers(16 * 1024**2, "Expect: 100-continue"))
        response = read_all(sock, timeout=3)
    assert status_of(response) == 413 and b"100 Continue" not in response


def test_expect_100_continue_within_the_limit_is_answered(limited):
    with connect(limited) as sock:
        sock.sendall(headers(len(BODY), "Expect: 100-continue"))
        sock.settimeout(3)
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(BODY)
        response = read_response(sock)
    assert status_of(response) == 200 and b"predictions" in response


def test_a_chunked_body_crossing_the_limit_in_its_last_chunk_is_answered(limited):
    chunk = b"x" * 600_000
    with connect(limited) as sock:
        sock.sendall(headers(None, "Transfer-Encoding: chunked"))
        for part in (chunk, chunk):
            sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        sock.sendall(b"0\r\n\r\n")
        response = read_all(sock, timeout=5)
    assert status_of(response) == 413


def test_a_body_that_stops_coming_gets_408_within_the_body_timeout(limited):
    with connect(limited) as sock:
        started = time.monotonic()
        sock.sendall(headers(1000) + b'{"dataframe_split":')
        response = read_all(sock, timeout=6)
    assert status_of(response) == 408 and time.monotonic() - started < 4


def test_a_rejected_upload_still_reads_its_answer_not_a_reset(limited):
    """1.5 MB sent in full after headers declaring it: the 413 is read, not lost to a reset."""
    with connect(limited) as sock:
        sock.sendall(headers(1_500_000) + b"x" * 1_500_000)
        response = read_all(sock, timeout=5)
    assert status_of(response) == 413


def test_idle_connections_beyond_the_cap_do_not_starve_health_checks(limited):
    sockets = []
    try:
        for _ in range(300):  # three times SERVING_MAX_CONNECTIONS, all idle
            sockets.append(connect(limited))
        time.sleep(0.3)
        started = time.monotonic()
        assert get(limited, "/healthz")[0] == 200
        assert time.monotonic() - started < 1
        open_fds = len(os.listdir(f"/proc/{limited.process.pid}/fd"))
        assert open_fds < 100 + 100, open_fds
    finally:
        for sock in sockets:
            sock.close()


# -- slow models ----------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["sleeps", "spins"])
def slow(request, tracking, tmp_path_factory):
    """A scikit-learn model (the matrix path, batched) taking 200 ms a call: sleeping, or holding the GIL."""
    import mlflow
    import pandas as pd

    from tests.services.slow_model import ScriptedRegressor
    from tests.services.test_serving_models import log_sklearn

    name = f"slow-{request.param}"
    x = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [0.5, 0.25, 0.0]})
    with tracking_admin(tracking):
        mlflow.set_experiment("serving-slow")
        with mlflow.start_run():
            info = log_sklearn(
                name,
                ScriptedRegressor(0.2, spin=request.param == "spins").fit(x),
                x,
                serialization_format="cloudpickle",
            )
        mlflow.MlflowClient().set_registered_model_alias(name, "champion", info.registered_model_version)
    server = start_serving(
        tracking, name, tmp_path_factory.mktemp(name), max_batch_rows="1", shutdown_delay_seconds="0"
    )
    yield server
    server.stop()


@pytest.mark.slow
def test_health_answers_within_50_ms_while_a_200_ms_model_is_saturated(slow):
    body = json.dumps({"dataframe_split": {"columns": ["x", "y"], "data": [[1.0, 2.0]]}}).encode()
    stop, answered = threading.Event(), []

    def load():
        connection = http.client.HTTPConnection(*address(slow), timeout=60)
        while not stop.is_set():
            connection.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
            answered.append(connection.getresponse().read())

    clients = [threading.Thread(target=load, daemon=True) for _ in range(8)]
    for client in clients:
        client.start()
    time.sleep(1.0)  # eight clients, one 200 ms call at a time: the model never rests
    latencies = []
    for path in ("/healthz", "/readyz", "/metrics") * 7:
        started = time.perf_counter()
        assert get(slow, path)[0] == 200
        latencies.append(time.perf_counter() - started)
        time.sleep(0.05)
    stop.set()
    for client in clients:
        client.join(timeout=30)
    assert len(answered) >= 5
    assert max(latencies) < 0.05, sorted(latencies)[-5:]


@pytest.mark.slow
def test_memory_stays_bounded_under_many_slow_uploads(tracking, registered, tmp_path):  # noqa: F811
    """1,500 clients each send half of a declared 1 MB body and stall; with the default limits
    (1,000 connections, 16 MiB of bodies in flight) the worker's peak RSS grows by under 64 MiB (22 MiB measured)."""
    server = start_serving(tracking, MODEL, tmp_path, body_timeout_seconds="5", shutdown_delay_seconds="0")
    sockets = []
    try:
        assert get(server, "/healthz")[0] == 200
        before = memory_kib(server.process.pid)
        part = headers(1_048_576) + b"1" * 524_288
        for _ in range(1500):
            try:
                sock = connect(server, timeout=2)
            except OSError:
                continue  # the backlog is full: the kernel, not the worker, holds it back
            sock.setblocking(False)
            try:
                sock.send(part)
            except OSError:
                pass
            sockets.append(sock)
        time.sleep(2)
        after = memory_kib(server.process.pid)
        assert get(server, "/healthz")[0] == 200
    finally:
        for sock in sockets:
            sock.close()
        server.stop()
    grown_mib = (after["VmHWM"] - before["VmRSS"]) / 1024
    assert grown_mib < 64, f"peak RSS grew by {grown_mib:.0f} MiB"


# -- rollout --------------------------------------------------------------------------------
class Clients:
    """Steady load: keep-alive clients and one-connection-per-request clients; every outcome counted."""

    def __init__(self, server, keep_alive: int = 3, fresh: int = 3) -> None:
        self.server, self.stop = server, threading.Event()
        self.outcomes: list[tuple[float, str]] = []
        self.threads = [
            threading.Thread(target=self._run, args=(reuse,), daemon=True)
            for reuse in [True] * keep_alive + [False] * fresh
        ]

    def _run(self, reuse: bool) -> None:
        connection = None
        while not self.stop.is_set():
            try:
                if connection is None or not reuse:
                    connection = http.client.HTTPConnection(*address(self.server), timeout=30)
                connection.request(
                    "POST",
                    "/invocations",
                    body=BODY,
                    headers={"Content-Type": "application/json", **({} if reuse else {"Connection": "close"})},
                )
                response = connection.getresponse()
                response.read()
                self.outcomes.append((time.monotonic(), str(response.status)))
                if not reuse or response.will_close:
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException) as exc:
                self.outcomes.append((time.monotonic(), type(exc).__name__))
                connection = None

    def __enter__(self) -> "Clients":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


@pytest.mark.slow
def test_a_sigterm_under_steady_load_loses_no_request(tracking, registered, tmp_path):  # noqa: F811
    server = start_serving(tracking, MODEL, tmp_path, workers="2", shutdown_delay_seconds="4", drain_seconds="5")
    try:
        with Clients(server) as clients:
            time.sleep(1.5)
            sigterm = time.monotonic()
            os.killpg(server.process.pid, signal.SIGTERM)
            while get(server, "/readyz")[0] != 503:
                assert time.monotonic() - sigterm < 0.5, "still ready 0.5 s after SIGTERM"
                time.sleep(0.02)
            time.sleep(1.5)  # a load balancer needs a moment to act on the failed readiness
        server.process.wait(timeout=20)
    finally:
        server.stop()
    outcomes = [outcome for _, outcome in clients.outcomes]
    after = [outcome for at, outcome in clients.outcomes if at > sigterm]
    assert set(outcomes) == {"200"}, {o: outcomes.count(o) for o in set(outcomes)}
    assert len(outcomes) > 100 and len(after) > 30, (len(outcomes), len(after))
    assert server.process.returncode in (0, -signal.SIGTERM)


def test_endpoint_pods_outlast_the_load_balancer_and_the_drain(stack_inventories):
    """On the cluster: a preStop sleep while the ALB deregisters the pod, then the server's own
    drain, all inside the termination grace period; idle connections outlive the ALB's 60 s."""
    from components.serving import PRESTOP_SECONDS
    from services.serving.settings import ServingSettings

    defaults = {name: field.default for name, field in ServingSettings.model_fields.items()}
    deployments = [
        d
        for inventory in stack_inventories.values()
        for d in inventory.of_type("kubernetes:apps/v1:Deployment")
        if "-ep-" in d.name
    ]
    assert deployments
    for deployment in deployments:
        pod = deployment.inputs["spec"]["template"]["spec"]
        assert pod["containers"][0]["lifecycle"]["preStop"] == {"sleep": {"seconds": PRESTOP_SECONDS}}
        assert (
            pod["terminationGracePeriodSeconds"]
            >= PRESTOP_SECONDS + defaults["shutdown_delay_seconds"] + defaults["drain_seconds"]
        )
    assert PRESTOP_SECONDS >= 10 and defaults["keepalive_seconds"] > 60
