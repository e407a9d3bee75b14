"""Speech recognition in worker processes, so decoding never stalls the event loop or other calls.

pocketsphinx decodes while holding the GIL: measured here, one thread decoding pushed the event loop's
wake-up lag to p99 151 ms, which is late media packets and audible gaps on every call of the process.
So the recognisers live in a few worker processes (one per core by default), each holding the shared
model once; a call's recogniser stays in the worker that created it.

The parent side, `PooledRecognizer`, has the same blocking interface as a local recogniser and is driven
the same way, from the session's worker threads: each method is one request/reply over a pipe, during
which the calling thread waits on I/O without the GIL. `feed` returns the partial transcript with its
reply, so the session's usual feed-then-partial costs one round trip.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import os
import threading
from collections.abc import Callable
from typing import Any, Final

from agent.engines import SpeechEngine, StreamingRecognizer
from agent.stt import SttError

log = logging.getLogger(__name__)

__all__ = ["PooledRecognizer", "RecognizerPool"]

_Request = tuple[str, int, Any]  # (operation, recogniser id, argument)
_READY: Final = "ready"


def _serve(
    engine_factory: Callable[[], SpeechEngine], connection: multiprocessing.connection.Connection
) -> None:
    """Worker process: build the engine once, then answer requests until the pipe closes."""
    try:
        engine = engine_factory()
    except BaseException as exc:  # report any start-up failure to the parent, then exit
        connection.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    connection.send(("ok", _READY))
    recognizers: dict[int, StreamingRecognizer] = {}
    while True:
        try:
            operation, ident, argument = connection.recv()
        except (EOFError, OSError):
            return
        try:
            result: Any = None
            if operation == "new":
                recognizers[ident] = engine.new_recognizer()
            elif operation == "engine":  # a rebuilt model: new recognisers use it, live ones keep theirs
                engine = argument
            elif operation == "close":
                recognizers.pop(ident, None)
            else:
                recognizer = recognizers[ident]
                if operation == "start":
                    recognizer.start_utterance()
                elif operation == "feed":
                    recognizer.feed(argument)
                    result = recognizer.partial()
                elif operation == "partial":
                    result = recognizer.partial()
                elif operation == "end":
                    result = recognizer.end_utterance()
                else:
                    raise ValueError(f"unknown operation {operation!r}")
            connection.send(("ok", result))
        except Exception as exc:
            connection.send(("error", f"{type(exc).__name__}: {exc}"))


class _Worker:
    def __init__(self, context: Any, engine_factory: Callable[[], SpeechEngine], name: str) -> None:
        parent, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(engine_factory, child), name=name, daemon=True)
        self.process.start()
        child.close()
        self._connection: multiprocessing.connection.Connection = parent
        self._lock = threading.Lock()
        self.live = 0  # recognisers held

    def wait_ready(self, timeout_s: float) -> None:
        if not self._connection.poll(timeout_s):
            raise SttError(f"speech worker {self.process.name} did not start within {timeout_s:.0f} s")
        status, value = self._connection.recv()
        if status != "ok":
            raise SttError(f"speech worker {self.process.name} failed to start: {value}")

    def call(self, operation: str, ident: int, argument: Any = None) -> Any:
        with self._lock:
            try:
                self._connection.send((operation, ident, argument))
                status, value = self._connection.recv()
            except (EOFError, OSError) as exc:
                raise SttError(f"speech worker {self.process.name} is gone: {exc!r}") from exc
        if status != "ok":
            raise SttError(f"speech worker {self.process.name}: {value}")
        return value

    def close(self) -> None:
        self._connection.close()
        self.process.join(timeout=2)
        if self.process.is_alive():
            self.process.kill()


class PooledRecognizer:
    """One call's recogniser, living in a worker process (see the module notes)."""

    def __init__(self, worker: _Worker, ident: int) -> None:
        self._worker = worker
        self._ident = ident
        self._partial = ""
        self._closed = False
        worker.call("new", ident)
        worker.live += 1

    def start_utterance(self) -> None:
        self._partial = ""
        self._worker.call("start", self._ident)

    def feed(self, pcm16_8k: bytes) -> None:
        if len(pcm16_8k) % 2:
            raise ValueError("PCM16 audio must have an even number of bytes")
        self._partial = str(self._worker.call("feed", self._ident, pcm16_8k))

    def partial(self) -> str:
        return self._partial

    def end_utterance(self) -> str:
        text = str(self._worker.call("end", self._ident))
        self._partial = ""
        return text

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._worker.live -= 1
        with contextlib.suppress(SttError):  # a worker that is gone has nothing left to free
            self._worker.call("close", self._ident)


class RecognizerPool:
    """`SpeechEngine` whose recognisers run in `processes` worker processes (default: one per core).

    `engine_factory` runs in each worker and must be picklable (a module-level function or a
    `functools.partial` of one) -- e.g. loading the already-built model files from disk.
    """

    def __init__(
        self,
        engine_factory: Callable[[], SpeechEngine],
        *,
        processes: int | None = None,
        start_timeout_s: float = 120.0,
    ) -> None:
        count = processes if processes is not None else max(1, os.cpu_count() or 1)
        if count < 1:
            raise ValueError("a recogniser pool needs at least one process")
        # spawn, not fork: the server has threads (executor, database pools) a fork would copy mid-flight.
        context = multiprocessing.get_context("spawn")
        self._workers = [_Worker(context, engine_factory, f"stt-{index}") for index in range(count)]
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        try:
            for worker in self._workers:
                worker.wait_ready(start_timeout_s)
        except BaseException:
            self.close()
            raise
        log.info("speech recognition in %d worker processes", count)

    def new_recognizer(self) -> PooledRecognizer:
        with self._lock:
            worker = min(self._workers, key=lambda w: w.live)  # the least busy worker
            ident = next(self._ids)
        return PooledRecognizer(worker, ident)

    def replace_engine(self, engine: SpeechEngine) -> None:
        """Send a rebuilt (picklable) model to every worker; calls in progress keep their recognisers."""
        for worker in self._workers:
            worker.call("engine", 0, engine)

    def close(self) -> None:
        for worker in self._workers:
            worker.close()


def loaded(engine: SpeechEngine) -> SpeechEngine:
    """An engine factory for an engine built in the parent: ``functools.partial(loaded, model)``."""
    return engine
