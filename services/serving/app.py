"""The model server: a small ASGI app speaking MLflow's scoring protocol.

Routes: `POST /invocations` (also `/predict`), `GET /healthz` (the process is alive),
`GET /readyz` (a model is loaded; `/ping` and `/health` answer the same, as MLflow's server
does), `GET /metrics`, `GET /version`. Written against ASGI directly: the hot path is one
body read, one `orjson` parse, one validation pass into a float64 matrix, a batched model
call and one `orjson` dump.

Live updates: a background task polls `models:/<name>@<alias>`; when the alias moves it loads
the new version in a thread and swaps a single reference, so a request uses whichever model
it started with and none fails. A version that fails to load is counted and logged, and the
last good one keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import numpy as np
import orjson

from services.serving import metrics
from services.serving.batching import MicroBatcher
from services.serving.capture import CaptureWriter
from services.serving.drift import DriftWindow
from services.serving.inputs import InputError, parse_rows, to_frame
from services.serving.model import LoadedModel, load_version, resolve_alias
from services.serving.settings import ServingSettings

log = logging.getLogger("serving")
JSON = [(b"content-type", b"application/json")]


class RequestError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class ServingApp:
    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.model: LoadedModel | None = None
        self.batcher = MicroBatcher(endpoint=settings.endpoint, max_rows=settings.max_batch_rows, wait_s=settings.batch_wait_ms / 1000)
        self.capture: CaptureWriter | None = None
        if settings.capture_fraction > 0 and settings.capture_bucket:
            self.capture = CaptureWriter(
                endpoint=settings.endpoint, bucket=settings.capture_bucket, prefix=settings.capture_prefix,
                fraction=settings.capture_fraction, flush_records=settings.capture_flush_records,
                flush_seconds=settings.capture_flush_seconds, s3_endpoint_url=settings.s3_endpoint_url,
            )
        self.tasks: list[asyncio.Task] = []
        self._failed_version: str | None = None
        self.drift: DriftWindow | None = None
        endpoint = settings.endpoint
        self._latency = metrics.LATENCY.labels(endpoint)
        self._rows = metrics.REQUEST_ROWS.labels(endpoint)
        self._predictions = metrics.PREDICTIONS.labels(endpoint)
        self._inflight = metrics.INFLIGHT.labels(endpoint)
        self._ok = metrics.REQUESTS.labels(endpoint, "200")
        self._prefix = settings.path_prefix

    # -- ASGI ------------------------------------------------------------------------------
    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if self._prefix and path.startswith(self._prefix):
            path = path[len(self._prefix):] or "/"
        if path in ("/invocations", "/predict"):
            if method != "POST":
                await self._error(send, RequestError(405, "METHOD_NOT_ALLOWED", f"{path} takes POST"))
                return
            await self._invocations(scope, receive, send)
        elif path == "/healthz":
            await self._respond(send, 200, b'{"status":"alive"}')
        elif path in ("/readyz", "/ping", "/health"):
            ready = self.model is not None
            body = orjson.dumps({"ready": ready, "model": self.settings.model_uri, "version": self.model.version if ready else None})
            await self._respond(send, 200 if ready else 503, body)
        elif path == "/metrics":
            await self._respond(send, 200, metrics.render(), [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")])
        elif path == "/version":
            model = self.model
            await self._respond(send, 200, orjson.dumps({"model": self.settings.model_uri, "version": model.version if model else None,
                                                        "run_id": model.run_id if model else None, "fast_path": bool(model and model.batchable)}))
        else:
            await self._error(send, RequestError(404, "ENDPOINT_NOT_FOUND", f"no route {path}; POST /invocations to score"))

    async def _invocations(self, scope: dict, receive: Any, send: Any) -> None:
        started = time.perf_counter()
        self._inflight.inc()
        status = 200
        try:
            model = self.model
            if model is None:
                raise RequestError(503, "MODEL_NOT_READY", f"{self.settings.model_uri} is not loaded yet")
            body = await self._read_json(scope, receive)
            predictions = await self._predict(model, body)
            self._ok.inc()
            await self._respond(send, 200, orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY),
                                [(b"content-type", b"application/json"), (b"x-model-version", model.version.encode())])
        except RequestError as exc:
            status = exc.status
            metrics.REQUESTS.labels(self.settings.endpoint, str(status)).inc()
            await self._error(send, exc)
        except Exception as exc:  # noqa: BLE001 - a model failure on valid input
            status = 500
            log.exception("prediction failed")
            metrics.REQUESTS.labels(self.settings.endpoint, "500").inc()
            await self._error(send, RequestError(500, "INTERNAL_ERROR", f"the model failed on this input: {type(exc).__name__}: {exc}"))
        finally:
            self._inflight.dec()
            self._latency.observe(time.perf_counter() - started)

    async def _read_json(self, scope: dict, receive: Any) -> Any:
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type != b"application/json":
            raise RequestError(415, "UNSUPPORTED_MEDIA_TYPE", "send the body as JSON with Content-Type: application/json")
        limit = self.settings.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._discard_body(receive, 16 * limit)
            raise RequestError(413, "REQUEST_TOO_LARGE", f"the body is {int(declared)} bytes; the limit is {limit}")
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._discard_body(receive, 16 * limit)
                raise RequestError(413, "REQUEST_TOO_LARGE", f"the body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        try:
            return orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError as exc:
            raise RequestError(400, "MALFORMED_REQUEST", f"the body is not valid JSON: {exc}") from None

    @staticmethod
    async def _discard_body(receive: Any, up_to: int) -> None:
        """Read and drop the rest of an oversized body (up to a bound) so the client can read the 413."""
        seen = 0
        while seen < up_to:
            message = await receive()
            seen += len(message.get("body", b""))
            if not message.get("more_body"):
                return

    async def _predict(self, model: LoadedModel, body: Any) -> Any:
        if isinstance(body, dict) and body.get("params"):
            raise RequestError(400, "BAD_REQUEST", "this server does not take inference params")
        if model.batchable:
            assert model.schema is not None
            try:
                matrix = parse_rows(body, model.schema)
            except InputError as exc:
                raise RequestError(400, "BAD_REQUEST", str(exc)) from None
            self._rows.observe(matrix.shape[0])
            if self.drift is not None:
                self.drift.add(matrix)
            output = await self.batcher.predict(model, matrix)
            predictions = output.tolist()
            columns = model.schema.names
            rows = matrix
        else:
            try:
                frame = to_frame(body)
            except InputError as exc:
                raise RequestError(400, "BAD_REQUEST", str(exc)) from None
            self._rows.observe(len(frame))
            output = await asyncio.to_thread(_pyfunc_predict, model, frame)
            predictions = output.to_dict(orient="records") if hasattr(output, "to_dict") and hasattr(output, "columns") else np.asarray(output).tolist()
            columns, rows = tuple(map(str, frame.columns)), frame.to_numpy().tolist()
        for value in predictions[:10]:
            if isinstance(value, (int, float)):
                self._predictions.observe(value)
        if self.capture is not None and self.capture.sampled():
            self.capture.add(model.version, columns, rows, predictions)
        return predictions

    # -- responses -------------------------------------------------------------------------
    @staticmethod
    async def _respond(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = JSON) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _error(self, send: Any, error: RequestError) -> None:
        await self._respond(send, error.status, orjson.dumps({"error_code": error.code, "message": error.message}))

    # -- lifecycle -------------------------------------------------------------------------
    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        metrics.MODEL_READY.labels(self.settings.endpoint).set(0)
        await self.refresh()
        self.tasks = [asyncio.create_task(self.batcher.run()), asyncio.create_task(self.watch()), asyncio.create_task(self.report_drift())]
        if self.capture is not None:
            self.tasks.append(asyncio.create_task(self.capture.run()))

    async def shutdown(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.capture is not None and self.capture.buffered:
            await self.capture.flush()

    async def report_drift(self) -> None:
        """Publish each feature's PSI over the live window every `drift_interval_seconds`."""
        gauge = metrics.DRIFT
        while True:
            await asyncio.sleep(self.settings.drift_interval_seconds)
            if self.drift is not None:
                for feature, score in self.drift.scores().items():
                    gauge.labels(self.settings.endpoint, feature).set(score)

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_seconds * random.uniform(0.8, 1.2))
            await self.refresh()

    async def refresh(self) -> None:
        """Load the version the alias points at, if it is not the one served."""
        endpoint, name = self.settings.endpoint, self.settings.model_name
        try:
            version, run_id = await asyncio.to_thread(resolve_alias, name, self.settings.model_alias)
        except Exception as exc:  # noqa: BLE001 - tracking server unreachable: keep serving
            log.warning("cannot resolve %s: %s", self.settings.model_uri, exc)
            return
        current = self.model
        if current is not None and current.version == version:
            return
        if version == self._failed_version:
            return  # already known broken; wait for the alias to move again
        try:
            loaded = await asyncio.to_thread(load_version, name, version, run_id)
        except Exception as exc:  # noqa: BLE001
            self._failed_version = version
            metrics.LOAD_FAILURES.labels(endpoint).inc()
            log.error("version %s of %s failed to load; %s: %s", version, name,
                      f"still serving version {current.version}" if current else "no model served yet", exc)
            return
        self.model = loaded  # one reference swap: in-flight requests keep the model they started with
        # a new version brings its own training reference: start a fresh window
        self.drift = (
            DriftWindow(loaded.drift_reference, loaded.schema.names, self.settings.drift_window, self.settings.drift_min_rows)
            if loaded.drift_reference and loaded.schema is not None and loaded.batchable
            else None
        )
        self._failed_version = None
        metrics.MODEL_VERSION.labels(endpoint, name, version).set(1)
        if current is not None:
            metrics.MODEL_VERSION.labels(endpoint, name, current.version).set(0)
            metrics.SWAPS.labels(endpoint).inc()
            log.info("now serving %s version %s (was %s)", name, version, current.version)
        metrics.MODEL_READY.labels(endpoint).set(1)


def _pyfunc_predict(model: LoadedModel, frame: Any) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return model.pyfunc.predict(frame)
    except MlflowException as exc:  # schema enforcement: the input does not fit the signature
        raise RequestError(400, "BAD_REQUEST", exc.message) from None


def tracking_credentials(settings: ServingSettings) -> None:
    """Log in to the tracking server as the platform's read-only user, with the password from Secrets Manager."""
    import os

    if not (settings.tracking_username and settings.tracking_password_secret_arn):
        return
    import boto3

    secret = boto3.client("secretsmanager", region_name=settings.region).get_secret_value(SecretId=settings.tracking_password_secret_arn)
    os.environ["MLFLOW_TRACKING_USERNAME"] = settings.tracking_username
    os.environ["MLFLOW_TRACKING_PASSWORD"] = secret["SecretString"]


def create_app() -> ServingApp:
    """Factory for uvicorn (each worker process builds its own app from the environment)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = ServingSettings()
    tracking_credentials(settings)
    return ServingApp(settings)
