"""Micro-batching: requests that arrive while the model is busy are answered by one model call.

Each request for a batchable model waits in a list with its raw body. One task hands everything
waiting (up to `max_rows` requests) to a model thread (`paths.answer_all`: parse, stack up to
`max_rows` rows per call, predict, split, encode) and, while that thread works, new requests
gather for the next batch. Before it starts a batch, the task waits up to `wait_s` for more;
it stops waiting as soon as as many requests as the last batch had are here and none is still
being read (clients it just answered send again together: no need to wait out the window).
The event loop itself never parses a body or calls a model.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from typing import Any

from services.serving.paths import Request, answer_all
from services.serving.protocol import Answer, RequestError, error_answer

log = logging.getLogger("serving")


class Ticket:
    """A request on its way to the batcher (its body is being read); `close` when it will not come."""

    def __init__(self, batcher: "MicroBatcher") -> None:
        self.batcher, self.open = batcher, True
        batcher.coming += 1

    def close(self) -> None:
        if self.open:
            self.open = False
            self.batcher.coming -= 1
            self.batcher.check()


class MicroBatcher:
    def __init__(self, *, executor: Executor, max_rows: int, wait_s: float) -> None:
        self.executor, self.max_rows, self.wait_s = executor, max_rows, wait_s
        self.waiting: list[tuple[Any, Request, asyncio.Future]] = []
        self.coming = 0
        """Requests announced (`ticket`) whose bodies are still being read."""
        self.expected = 1
        """Requests in the last batch: worth a short wait until as many are here."""
        self._arrived: asyncio.Event | None = None

    @property
    def arrived(self) -> asyncio.Event:
        if self._arrived is None:
            self._arrived = asyncio.Event()
        return self._arrived

    def ticket(self) -> Ticket:
        return Ticket(self)

    def full(self) -> bool:
        """As many requests as the last batch had are here, and none is still being read."""
        return self.expected > 1 and len(self.waiting) >= self.expected and not self.coming

    def check(self) -> None:
        """Wake the collector when the first request is here, or when the batch is full."""
        if len(self.waiting) == 1 or self.full():
            self.arrived.set()

    async def answer(self, model: Any, request: Request, ticket: Ticket | None = None) -> Answer:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((model, request, future))
        if ticket is not None and ticket.open:
            ticket.open = False
            self.coming -= 1
        self.check()
        return await future

    async def run(self) -> None:
        while True:
            batch = await self._collect()
            self.expected = len(batch)
            by_model: dict[int, list[tuple[Any, Request, asyncio.Future]]] = {}
            for item in batch:  # during a swap, old and new versions may both be waiting
                by_model.setdefault(id(item[0]), []).append(item)
            for items in by_model.values():
                await self._answer(items)

    async def _collect(self) -> list[tuple[Any, Request, asyncio.Future]]:
        while not self.waiting:
            self.arrived.clear()
            await self.arrived.wait()
        if self.wait_s > 0 and not self.full():
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), self.wait_s)
            except asyncio.TimeoutError:
                pass
        batch, self.waiting = self.waiting[: self.max_rows], self.waiting[self.max_rows :]
        return batch

    async def _answer(self, items: list[tuple[Any, Request, asyncio.Future]]) -> None:
        model = items[0][0]
        try:
            answers = await asyncio.get_running_loop().run_in_executor(
                self.executor, answer_all, model.path, [request for _, request, _ in items], self.max_rows
            )
        except Exception as exc:  # noqa: BLE001 - never leave a request without an answer
            log.exception("a batch failed")
            answers = [error_answer(RequestError(500, "INTERNAL_ERROR", f"{type(exc).__name__}: {exc}"))] * len(items)
        for (_, _, future), answer in zip(items, answers, strict=True):
            if not future.done():
                future.set_result(answer)
