"""Continuous batching: one thread owns the engine and a fixed set of KV-cache rows.

Between two decode steps the loop admits waiting requests into free rows (one batched
prefill for all of them, then `Engine.insert`), so a new request does not wait for the
running ones to finish (Yu et al., 2022, Orca, "iteration-level scheduling"). Each step
decodes one token for every busy row; each token goes to its request's queue as an `Event`.
A finished or cancelled request frees its row at once. An exception in a step fails the
requests in flight with a message and resets the rows; the loop itself keeps running.

Adapters (llm/inference/adapters.py): a request may name one; every row of a step shares the
engine's weights, so the rows hold requests of one adapter (or the base) at a time. The
queue stays first in, first out: when the oldest waiting request names another adapter,
admission stops until the busy rows finish, then the engine switches to that adapter's
merged weights (a cached copy, or one merge) and admits it and those behind it that share
it. Nothing overtakes, so no adapter starves; mixed traffic runs as per-adapter batches.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np

from llm.inference.engine import Engine, Event, RowTracker, StopCriteria
from llm.inference.sampling import SamplingParams


class Busy(Exception):
    """The waiting queue is full."""


class Request:
    """A submitted generation; read its events with `events()`."""

    def __init__(self, prompt_ids: list[int], sampling: SamplingParams, stop: StopCriteria,
                 adapter: str | None = None):  # fmt: skip
        self.prompt_ids, self.sampling, self.stop = prompt_ids, sampling, stop
        self.adapter = adapter  # None: the base model
        self.out: queue.Queue[Event | Exception] = queue.Queue()
        self.cancelled = False
        self.completion_tokens = 0

    def events(self, timeout_s: float) -> Iterator[Event]:
        """Events until the closing one; raises TimeoutError or the scheduler's error."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                item = self.out.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                self.cancelled = True
                raise TimeoutError(f"no answer within {timeout_s} s") from None
            if isinstance(item, Exception):
                raise item
            if item.token is not None and item.finish_reason != "stop":
                self.completion_tokens += 1
            yield item
            if item.finish_reason is not None:
                return


Weights = Callable[[str | None], object]  # adapter name (None: base) -> decode-layout params


class Scheduler:
    def __init__(self, engine: Engine, rows: int, max_queue: int, weights: Weights | None = None):
        self.engine, self.rows = engine, rows
        self.weights = weights  # None: one model, and a request naming an adapter fails
        self.adapter: str | None = None  # whose weights the engine holds now
        self._held: Request | None = None  # the oldest waiting request, for another adapter
        self.waiting: queue.Queue[Request] = queue.Queue(maxsize=max_queue)
        self.slots: list[tuple[Request, RowTracker] | None] = [None] * rows
        self.state = engine.empty_state(rows)
        self.steps = 0  # decode steps run (for /health and tests)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def submit(self, request: Request) -> Request:
        try:
            self.waiting.put_nowait(request)
        except queue.Full:
            raise Busy(f"{self.waiting.maxsize} requests already waiting") from None
        return request

    @property
    def n_waiting(self) -> int:
        """Requests not yet in a row (the queue, and the one held for another adapter)."""
        return self.waiting.qsize() + (self._held is not None)

    @property
    def active(self) -> np.ndarray:
        return np.array([s is not None for s in self.slots])

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._admit(block=not self.active.any())
                self._drop_cancelled()
                if self.active.any():
                    self.state = self.engine.step(self.state, self.active)
                    self.steps += 1
                    self._deliver(np.asarray(self.state.tokens_B), range(self.rows))
            except Exception as err:  # fail the requests in flight, keep serving
                self._fail_all(err)

    def _next(self, block: bool) -> Request | None:
        """The oldest waiting request (the held one first), or None."""
        if self._held is not None:
            request, self._held = self._held, None
            return request
        try:
            return self.waiting.get(timeout=0.05) if block else self.waiting.get_nowait()
        except queue.Empty:
            return None

    def _switch(self, request: Request) -> bool:
        """Loads `request`'s adapter into the engine; False (request failed) if it cannot."""
        try:
            if self.weights is None:
                raise ValueError(f"adapter {request.adapter!r}: this server has no adapters")
            self.engine.params = self.weights(request.adapter)
        except Exception as err:
            request.out.put(err)
            return False
        self.adapter = request.adapter
        return True

    def _admit(self, block: bool) -> None:
        new: list[Request] = []
        free = [i for i, s in enumerate(self.slots) if s is None]
        while len(new) < len(free):
            request = self._next(block and not new)
            if request is None:
                break
            if request.cancelled:
                continue
            if request.adapter != self.adapter:
                if new or self.active.any():
                    self._held = request  # first in, first out: wait for the rows to drain
                    break
                if not self._switch(request):
                    continue
            new.append(request)
        if not new:
            return
        slots = free[: len(new)]
        for slot, request in zip(slots, new, strict=True):
            self.slots[slot] = (request, RowTracker(self.engine, len(request.prompt_ids),
                                                    request.stop))  # fmt: skip
        try:
            prefilled = self.engine.prefill([r.prompt_ids for r in new], [r.sampling for r in new])
            self.state = self.engine.insert(self.state, prefilled, slots)
        except Exception as err:
            for slot, request in zip(slots, new, strict=True):
                self.slots[slot] = None
                request.out.put(err)
            return
        self._deliver(np.asarray(prefilled.tokens_B)[: len(new)], slots, compact=True)

    def _deliver(self, tokens: np.ndarray, slots, compact: bool = False) -> None:
        for k, slot in enumerate(slots):
            entry = self.slots[slot]
            if entry is None:
                continue
            request, tracker = entry
            for event in tracker.accept(0, int(tokens[k if compact else slot])):
                request.out.put(event)
            if tracker.finish_reason is not None:
                self.slots[slot] = None

    def _drop_cancelled(self) -> None:
        for i, entry in enumerate(self.slots):
            if entry is not None and entry[0].cancelled:
                self.slots[i] = None

    def _fail_all(self, err: Exception) -> None:
        for i, entry in enumerate(self.slots):
            if entry is not None:
                entry[0].out.put(RuntimeError(f"generation failed: {err!r}"))
                self.slots[i] = None
        self.state = self.engine.empty_state(self.rows)
