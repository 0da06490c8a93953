"""Inference capture: a sampled share of requests and predictions, written to S3 in batches.

Records are JSON lines under
`s3://<bucket>/<prefix>/<endpoint>/version=<model version>/date=<YYYY-MM-DD>/<uuid>.jsonl`,
one object per row: time, model version, the row's inputs by column, the prediction. Writes
happen off the request path (a thread), every `flush_records` records or `flush_seconds`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
import uuid
from typing import Any

import orjson

from services.serving import metrics

log = logging.getLogger("serving.capture")


class CaptureWriter:
    def __init__(
        self,
        *,
        endpoint: str,
        bucket: str,
        prefix: str,
        fraction: float,
        flush_records: int,
        flush_seconds: float,
        s3_endpoint_url: str | None,
    ) -> None:
        import boto3

        self.endpoint, self.bucket, self.prefix = endpoint, bucket, prefix.strip("/")
        self.fraction, self.flush_records, self.flush_seconds = fraction, flush_records, flush_seconds
        self.s3 = boto3.client("s3", endpoint_url=s3_endpoint_url)
        self.buffer: dict[str, list[bytes]] = {}
        self.buffered = 0
        self.last_flush = time.monotonic()

    def sampled(self) -> bool:
        return self.fraction > 0 and random.random() < self.fraction

    def add(self, version: str, columns: tuple[str, ...], rows: Any, predictions: Any) -> None:
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        lines = self.buffer.setdefault(version, [])
        for row, prediction in zip(rows, predictions, strict=True):
            lines.append(
                orjson.dumps(
                    {
                        "ts": now,
                        "model_version": version,
                        "inputs": dict(zip(columns, row, strict=True)),
                        "prediction": prediction,
                    },
                    option=orjson.OPT_SERIALIZE_NUMPY,
                )
            )
        self.buffered += len(rows)

    def due(self) -> bool:
        return self.buffered >= self.flush_records or (
            self.buffered > 0 and time.monotonic() - self.last_flush >= self.flush_seconds
        )

    async def flush(self) -> None:
        buffer, self.buffer, self.buffered, self.last_flush = self.buffer, {}, 0, time.monotonic()
        for version, lines in buffer.items():
            day = dt.date.today().isoformat()
            key = f"{self.prefix}/{self.endpoint}/version={version}/date={day}/{uuid.uuid4().hex}.jsonl"
            try:
                await asyncio.to_thread(
                    self.s3.put_object,
                    Bucket=self.bucket,
                    Key=key,
                    Body=b"\n".join(lines) + b"\n",
                    ContentType="application/x-ndjson",
                )
                metrics.CAPTURED.labels(self.endpoint).inc(len(lines))
            except Exception as exc:  # noqa: BLE001 - capture must never break serving
                metrics.CAPTURE_FAILURES.labels(self.endpoint).inc()
                log.warning("could not write %d captured records to s3://%s/%s: %s", len(lines), self.bucket, key, exc)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.flush_seconds))
            if self.due():
                await self.flush()
