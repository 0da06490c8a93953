"""Micro-batching: requests that arrive while the model is busy are answered by one model call.

Each request for a batchable model is queued with its raw body. One task takes the first, lets
the event loop read whatever other requests are already waiting (and, with `wait_s` > 0, waits
that long for more), and hands them all to a model thread (`paths.answer_all`: parse, stack up
to `max_rows` rows per call, predict, split, encode). While that thread works, new requests
queue up for the next batch. Alone, a request pays almost nothing; under load, N requests
become a few model calls. The event loop itself never parses a body or calls a model.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from typing import Any

from services.serving.paths import Request, answer_all
from services.serving.protocol import Answer, RequestError, error_answer

log = logging.getLogger("serving")


class MicroBatcher:
    def __init__(self, *, executor: Executor, max_rows: int, wait_s: float) -> None:
        self.executor, self.max_rows, self.wait_s = executor, max_rows, wait_s
        self.queue: asyncio.Queue[tuple[Any, Request, asyncio.Future]] = asyncio.Queue()

    async def answer(self, model: Any, request: Request) -> Answer:
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((model, request, future))
        return await future

    async def run(self) -> None:
        while True:
            batch = await self._collect()
            by_model: dict[int, list[tuple[Any, Request, asyncio.Future]]] = {}
            for item in batch:  # during a swap, old and new versions may both be queued
                by_model.setdefault(id(item[0]), []).append(item)
            for items in by_model.values():
                await self._answer(items)

    async def _collect(self) -> list[tuple[Any, Request, asyncio.Future]]:
        loop = asyncio.get_running_loop()
        batch = [await self.queue.get()]
        await asyncio.sleep(0)  # let requests already read off the sockets join
        deadline = loop.time() + self.wait_s
        while len(batch) < self.max_rows:
            try:
                batch.append(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _answer(self, items: list[tuple[Any, Request, asyncio.Future]]) -> None:
        model = items[0][0]
        try:
            answers = await asyncio.get_running_loop().run_in_executor(
                self.executor, answer_all, model.path, [request for _, request, _ in items], self.max_rows)
        except Exception as exc:  # noqa: BLE001 - never leave a request without an answer
            log.exception("a batch failed")
            answers = [error_answer(RequestError(500, "INTERNAL_ERROR", f"{type(exc).__name__}: {exc}"))] * len(items)
        for (_, _, future), answer in zip(items, answers):
            if not future.done():
                future.set_result(answer)
