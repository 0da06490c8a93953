"""The model server: a small ASGI app speaking MLflow's scoring protocol.

Routes: `POST /invocations` (also `/predict`), `GET /healthz` (the process is alive),
`GET /readyz` (a model is loaded and the worker is not draining; `/ping` and `/health` answer
the same, as MLflow's server has them), `GET /metrics`, `GET /version`.

The event loop only moves bytes: it checks a request's headers (media type, declared length,
room in the body budget) before reading a byte of its body, reads the body within a deadline,
and hands it to a model thread: through the micro-batcher when the model's path is batchable
(`plan.py`), else one request per call. Parsing, the model and encoding the answer all run in
`SERVING_MODEL_THREADS` threads, so `/healthz`, `/readyz`, `/metrics` and reading other
requests never wait for a model.

Live updates: a background task polls `models:/<name>@<alias>`; when the alias moves it loads
the new version in a thread and swaps a single reference, so a request uses whichever model
it started with and none fails. A version that fails to load is counted and logged, and the
last good one keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson

from services.serving import admission, metrics
from services.serving.admission import ADMISSION, verdict
from services.serving.batching import MicroBatcher
from services.serving.capture import CaptureWriter
from services.serving.drift import DriftWindow
from services.serving.lifecycle import DRAINING, delay_sigterm
from services.serving.model import LoadedModel, load_version, resolve_alias
from services.serving.paths import Request, answer_all
from services.serving.protocol import JSON_HEADERS, Answer, RequestError, error_body, media_type
from services.serving.settings import ServingSettings

log = logging.getLogger("serving")
CLOSE = (b"connection", b"close")


class BodyUnread(RequestError):
    """Answered before the body was read in full: the connection closes after the answer."""


@dataclass
class Held:
    """A request's share of the worker's body budget."""

    admitted: int = 0
    """Taken by the connection layer for the declared length (it gives it back)."""
    taken: int = 0
    """Taken here, beyond that (given back when the request ends)."""
    complete: bool = False
    """The connection layer has the whole body already."""


class ServingApp:
    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.model: LoadedModel | None = None
        self.executor = ThreadPoolExecutor(max_workers=settings.model_threads, thread_name_prefix="model")
        self.batcher = MicroBatcher(
            executor=self.executor, max_rows=settings.max_batch_rows, wait_s=settings.batch_wait_ms / 1000
        )
        self.capture: CaptureWriter | None = None
        if settings.capture_fraction > 0 and settings.capture_bucket:
            self.capture = CaptureWriter(
                endpoint=settings.endpoint,
                bucket=settings.capture_bucket,
                prefix=settings.capture_prefix,
                fraction=settings.capture_fraction,
                flush_records=settings.capture_flush_records,
                flush_seconds=settings.capture_flush_seconds,
                s3_endpoint_url=settings.s3_endpoint_url,
            )
        self.tasks: list[asyncio.Task] = []
        self._failed_version: str | None = None
        self.drift: DriftWindow | None = None
        self.worker = admission.configure(settings)
        """Limits and body budget, shared with the connection layer of this worker process."""
        endpoint = settings.endpoint
        self.request_metrics = metrics.RequestMetrics(endpoint)
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
            path = path[len(self._prefix) :] or "/"
        if path in ("/invocations", "/predict"):
            if method != "POST":
                await self._error(send, RequestError(405, "METHOD_NOT_ALLOWED", f"{path} takes POST"))
                return
            await self._invocations(scope, receive, send)
        elif path == "/healthz":
            await self._respond(send, 200, b'{"status":"alive"}')
        elif path in ("/readyz", "/ping", "/health"):
            model = self.model
            ready = model is not None and not DRAINING.active
            body = orjson.dumps(
                {
                    "ready": ready,
                    "draining": DRAINING.active,
                    "model": self.settings.model_uri,
                    "version": model.version if model else None,
                }
            )
            await self._respond(send, 200 if ready else 503, body)
        elif path == "/metrics":
            self.request_metrics.flush()
            await self._respond(
                send, 200, metrics.render(), [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]
            )
        elif path == "/version":
            await self._respond(send, 200, self._version())
        else:
            await self._error(
                send, RequestError(404, "ENDPOINT_NOT_FOUND", f"no route {path}; POST /invocations to score")
            )

    def _version(self) -> bytes:
        model = self.model
        path = model.path if model else None
        return orjson.dumps(
            {
                "model": self.settings.model_uri,
                "version": model.version if model else None,
                "run_id": model.run_id if model else None,
                "path": path.kind if path else None,
                "batching": bool(path and path.batchable),
                "reason": path.reason if path else None,
            }
        )

    async def _invocations(self, scope: dict, receive: Any, send: Any) -> None:
        started = time.perf_counter()
        self.request_metrics.inflight += 1
        held, ticket = Held(), None
        try:
            model = self.model
            if model is None:
                raise BodyUnread(503, "MODEL_NOT_READY", f"{self.settings.model_uri} is not loaded yet")
            headers = dict(scope["headers"])
            try:
                media = media_type(headers.get(b"content-type"))
            except RequestError as exc:
                raise BodyUnread(exc.status, exc.code, exc.message) from None
            self._admit(scope, headers, held)
            ticket = self.batcher.ticket() if model.batchable else None  # the batcher may wait for this one
            request = Request(
                await self._read_body(receive, held), media, capture=self.capture is not None and self.capture.sampled()
            )
            if ticket is not None:
                answer = await self.batcher.answer(model, request, ticket)
            else:
                loop = asyncio.get_running_loop()
                answer = (
                    await loop.run_in_executor(
                        self.executor, answer_all, model.path, [request], self.settings.max_batch_rows
                    )
                )[0]
            self._record(model, answer)
            await self._respond(
                send, answer.status, answer.body, [*JSON_HEADERS, (b"x-model-version", model.version.encode())]
            )
        except RequestError as exc:
            metrics.REQUESTS.labels(self.settings.endpoint, str(exc.status)).inc()
            await self._error(send, exc, close=isinstance(exc, BodyUnread))
        finally:
            if ticket is not None:
                ticket.close()
            self.worker.budget.give(held.taken)
            self.request_metrics.inflight -= 1
            self.request_metrics.latency.observe(time.perf_counter() - started)

    def _admit(self, scope: dict, headers: dict, held: Held) -> None:
        """The connection layer's verdict on the declared body (or our own, without it)."""
        admission = scope.get("extensions", {}).get(ADMISSION)
        if admission is None:  # not behind GuardedProtocol (e.g. another ASGI server)
            declared = headers.get(b"content-length")
            size = int(declared) if declared is not None and declared.isdigit() else 0
            refusal = verdict(size, self.worker.limits, self.worker.budget)
            held.taken = 0 if refusal else size
            admission = {"admitted": held.taken, "refusal": refusal}
        if admission["refusal"]:
            raise BodyUnread(*admission["refusal"])
        held.admitted, held.complete = admission["admitted"], admission.get("complete", False)

    async def _read_body(self, receive: Any, held: Held) -> bytes:
        """The whole body, within the size limit, the body budget and the body deadline."""
        first = None
        if held.complete:  # the connection layer has it all: reading cannot wait, no deadline needed
            first = await receive()
            if (
                first["type"] == "http.request"
                and not first.get("more_body")
                and len(first.get("body", b"")) <= held.admitted
            ):
                return first.get("body", b"")
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.settings.body_timeout_seconds):
                while True:
                    message, first = first or await receive(), None
                    if message["type"] == "http.disconnect":
                        raise BodyUnread(
                            400, "CLIENT_DISCONNECTED", "the client went away before sending the whole body"
                        )
                    chunks.append(message.get("body", b""))
                    size += len(chunks[-1])
                    self._hold_more(held, size)
                    if not message.get("more_body"):
                        return b"".join(chunks)
        except TimeoutError:
            raise BodyUnread(
                408, "REQUEST_TIMEOUT", f"the body did not arrive within {self.settings.body_timeout_seconds:g} s"
            ) from None

    def _hold_more(self, held: Held, size: int) -> None:
        """Chunked bodies, or more than declared: within the size limit, from the budget as they grow."""
        limit = self.settings.max_body_bytes
        if size > limit:
            raise BodyUnread(413, "REQUEST_TOO_LARGE", f"the body exceeds the limit of {limit} bytes")
        extra = size - held.admitted - held.taken
        if extra > 0:
            if not self.worker.budget.take(extra):
                raise BodyUnread(503, "SERVER_BUSY", "too many request bytes in flight on this worker; retry shortly")
            held.taken += extra

    def _record(self, model: LoadedModel, answer: Answer) -> None:
        """Metrics, drift window and capture for one answer (on the event loop: cheap)."""
        if answer.status != 200:
            metrics.REQUESTS.labels(self.settings.endpoint, str(answer.status)).inc()
            return
        self.request_metrics.ok.inc()
        self.request_metrics.rows.observe(answer.rows)
        if answer.sample:
            self.request_metrics.predictions.observe_many(answer.sample)
        if self.drift is not None and answer.numeric is not None:
            self.drift.add(answer.numeric)
        if self.capture is not None and answer.capture is not None:
            try:
                self.capture.add(model.version, *answer.capture)
            except (TypeError, ValueError) as exc:  # a value orjson cannot write: capture must never fail a request
                log.warning("could not capture a request: %s", exc)

    # -- responses -------------------------------------------------------------------------
    @staticmethod
    async def _send(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]], close: bool) -> None:
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        if close or DRAINING.active:
            headers.append(CLOSE)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _respond(
        self, send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = JSON_HEADERS
    ) -> None:
        await self._send(send, status, body, headers, close=False)

    async def _error(self, send: Any, error: RequestError, *, close: bool = False) -> None:
        await self._send(send, error.status, error_body(error), JSON_HEADERS, close)

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
        delay_sigterm(self.settings.shutdown_delay_seconds)
        metrics.MODEL_READY.labels(self.settings.endpoint).set(0)
        await self.refresh()
        self.tasks = [
            asyncio.create_task(self.batcher.run()),
            asyncio.create_task(self.watch()),
            asyncio.create_task(self.report_drift()),
            asyncio.create_task(self.flush_metrics()),
        ]
        if self.capture is not None:
            self.tasks.append(asyncio.create_task(self.capture.run()))

    async def shutdown(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.request_metrics.flush()
        if self.capture is not None and self.capture.buffered:
            await self.capture.flush()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def flush_metrics(self) -> None:
        while True:
            await asyncio.sleep(metrics.FLUSH_SECONDS)
            try:
                self.request_metrics.flush()
            except Exception:  # noqa: BLE001 - e.g. a full disk under the metrics files: keep serving, keep trying
                log.exception("could not write the request metrics")

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
            loaded = await asyncio.to_thread(load_version, name, version, run_id, batching=self.settings.batching)
        except Exception as exc:  # noqa: BLE001
            self._failed_version = version
            metrics.LOAD_FAILURES.labels(endpoint).inc()
            log.error(
                "version %s of %s failed to load; %s: %s",
                version,
                name,
                f"still serving version {current.version}" if current else "no model served yet",
                exc,
            )
            return
        self._swap(loaded, current)

    def _swap(self, loaded: LoadedModel, current: LoadedModel | None) -> None:
        endpoint, name, version = self.settings.endpoint, self.settings.model_name, loaded.version
        batch_rows = metrics.BATCH_ROWS.labels(endpoint)
        loaded.path.observe = batch_rows.observe
        self.model = loaded  # one reference swap: in-flight requests keep the model they started with
        # a new version brings its own training reference: start a fresh window
        columns = getattr(loaded.path, "drift_columns", ())
        self.drift = None
        if loaded.drift_reference and columns:
            self.drift = DriftWindow(
                loaded.drift_reference, columns, self.settings.drift_window, self.settings.drift_min_rows
            )
        self._failed_version = None
        metrics.MODEL_VERSION.labels(endpoint, name, version).set(1)
        if current is not None:
            metrics.MODEL_VERSION.labels(endpoint, name, current.version).set(0)
            metrics.SWAPS.labels(endpoint).inc()
            log.info("now serving %s version %s (was %s)", name, version, current.version)
        metrics.MODEL_READY.labels(endpoint).set(1)


def tracking_credentials(settings: ServingSettings) -> None:
    """Log in to the tracking server as the platform's read-only user, with the password from Secrets Manager."""
    import os

    if not (settings.tracking_username and settings.tracking_password_secret_arn):
        return
    import boto3

    secret = boto3.client("secretsmanager", region_name=settings.region).get_secret_value(
        SecretId=settings.tracking_password_secret_arn
    )
    os.environ["MLFLOW_TRACKING_USERNAME"] = settings.tracking_username
    os.environ["MLFLOW_TRACKING_PASSWORD"] = secret["SecretString"]


def create_app() -> ServingApp:
    """Factory for uvicorn (each worker process builds its own app from the environment)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # A model thread that holds the GIL (pure-Python work) hands it to the event loop at most
    # every switch interval: 1 ms instead of 5 keeps health checks and reads prompt behind it.
    sys.setswitchinterval(0.001)
    settings = ServingSettings()
    tracking_credentials(settings)
    return ServingApp(settings)
