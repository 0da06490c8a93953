"""Micro-batching: requests that arrive while the model is busy are answered by one call.

Each request puts its matrix on a queue; one task takes the first, lets the event loop read
whatever other requests are already waiting (and, with `wait_s` > 0, waits that long for
more), stacks up to `max_rows` rows per model, predicts once, and hands each request its
slice. Under load this turns N small calls into one; alone, a request pays almost nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from services.serving import metrics


class MicroBatcher:
    def __init__(self, *, endpoint: str, max_rows: int, wait_s: float) -> None:
        self.endpoint, self.max_rows, self.wait_s = endpoint, max_rows, wait_s
        self.queue: asyncio.Queue[tuple[Any, np.ndarray, asyncio.Future]] = asyncio.Queue()
        self._batch_rows = metrics.BATCH_ROWS.labels(endpoint)

    async def predict(self, model: Any, matrix: np.ndarray) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((model, matrix, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            rows = batch[0][1].shape[0]
            await asyncio.sleep(0)  # let requests already read off the sockets join
            deadline = loop.time() + self.wait_s
            while rows < self.max_rows:
                try:
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), remaining)
                    except asyncio.TimeoutError:
                        break
                batch.append(item)
                rows += item[1].shape[0]
            self._run_batch(batch)

    def _run_batch(self, batch: list[tuple[Any, np.ndarray, asyncio.Future]]) -> None:
        by_model: dict[int, list[tuple[Any, np.ndarray, asyncio.Future]]] = {}
        for item in batch:  # during a swap, old and new versions may both be queued
            by_model.setdefault(id(item[0]), []).append(item)
        for items in by_model.values():
            model = items[0][0]
            matrices = [m for _, m, _ in items]
            stacked = matrices[0] if len(matrices) == 1 else np.concatenate(matrices)
            self._batch_rows.observe(stacked.shape[0])
            try:
                predictions = np.asarray(model.matrix_predict(stacked))
            except Exception as exc:  # noqa: BLE001 - delivered to each waiting request
                for _, _, future in items:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for _, matrix, future in items:
                end = start + matrix.shape[0]
                if not future.done():
                    future.set_result(predictions[start:end])
                start = end
