"""Speech recognition in worker processes, so decoding never stalls the event loop or other calls.

pocketsphinx decodes while holding the GIL: measured here, one thread decoding pushed the event loop's
wake-up lag to p99 151 ms, which is late media packets and audible gaps on every call of the process.
So the recognisers live in a few worker processes (one per core by default), each holding the shared
model once; a call's recogniser stays in the worker that created it.

Each worker has two channels. The control pipe carries blocking request/reply calls from any thread
(creating and closing recognisers, a rebuilt model, and the blocking `StreamingRecognizer` methods).
The stream socket carries the call session's audio from the event loop itself (`feed_async` and
friends): requests are framed, pipelined and matched to futures by id, with no thread in between.
Measured before it existed: a feed through a worker thread and the control pipe cost ~260 us of the
server's CPU (thread hand-offs, lock, wake-ups), 45 % of a core for 40 callers speaking at once.

A worker answers its requests in order of urgency, not arrival (`RequestQueue`): a call whose caller has
stopped speaking, even for a moment, waits on its transcript (to tell a pause from the end of the turn, to
start the reply), while the partial of a caller still speaking is wanted by no one until they stop. So
starts, finals, feeds sent while the caller is silent, and the feed in flight of a call whose caller has
just paused (a "hurry" message) go first; a call's own requests keep their order. Under overload this
turns every call's share of a worker that is behind (each call's turn waited for the feeds of all the
others) into a queue the turns that are ending jump. No call starves for long: every caller pauses, and
its call is urgent then. (A first version also put any feed that had waited 2 s first: under overload
every feed had, and the queue was first come, first served again.)

A worker that is falling behind sheds load: it measures the share of wall time it spends working (not
waiting for requests), and while that is above ``economy_at`` (default 0.85) it starts new utterances on
the recogniser's economy settings (`EconomyRecognizer`; for pocketsphinx ~40 % less CPU for a few points
of WER), until it drops below ``economy_at - 0.15``. Without it, a worker past 100 % only queues: every
call's turns get later and later (`bench agent` at 100 calls: p95 over 4 s). Busy is not yet behind: a
worker whose oldest waiting request has waited ``DEEP_ECONOMY_AFTER_S`` is, and starts new utterances
cheaper still (deep economy). Each utterance's depth comes back with its start and is recorded in the
turn's telemetry (``stt_economy``, ``stt_economy_depth``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import pickle
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from agent.blas import limit_blas_threads
from agent.engines import EconomyRecognizer, SpeechEngine, StreamingRecognizer
from agent.stt import SttError

log = logging.getLogger(__name__)

__all__ = ["BusyGauge", "EconomySwitch", "PooledRecognizer", "RecognizerPool", "RequestQueue"]

# (request id, operation, recogniser id, argument, urgent, sent at: time.monotonic(), the same clock in
# every process of the machine)
_StreamRequest = tuple[int, str, int, Any, bool, float]
_READY: Final = "ready"


_FRAME: Final = struct.Struct("!I")  # stream frames: 4-byte big-endian length, then a pickle
_FIRST: Final = frozenset({"end", "start"})  # always urgent
_HURRY: Final = "hurry"  # a one-way message: the call's request waiting in the worker is urgent now
DEEP_ECONOMY_AFTER_S: Final = 0.25  # the oldest request waiting this long: the worker is behind


class BusyGauge:
    """The share of wall time spent working, exponentially weighted with time constant ``time_constant_s``.

    `working()` and `waiting()` mark where the owner's time goes from now on; `load()` includes the
    stretch under way. Preemption counts as working: a worker that is runnable but off the CPU is just
    as far behind.
    """

    def __init__(self, time_constant_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        if time_constant_s <= 0:
            raise ValueError("the time constant must be positive")
        self._tau = time_constant_s
        self._clock = clock
        self._since = clock()
        self._busy = False
        self._load = 0.0

    def working(self) -> None:
        self._settle(busy=True)

    def waiting(self) -> None:
        self._settle(busy=False)

    def load(self) -> float:
        return self._fold(self._clock() - self._since)

    def _fold(self, elapsed: float) -> float:
        keep = math.exp(-max(0.0, elapsed) / self._tau)
        return self._load * keep + (1.0 - keep) * (1.0 if self._busy else 0.0)

    def _settle(self, *, busy: bool) -> None:
        now = self._clock()
        self._load = self._fold(now - self._since)
        self._since = now
        self._busy = busy


def check_economy_at(on_at: float | None) -> None:
    """ValueError unless `on_at` is a load in (0, 1] or None (economy decoding off)."""
    if on_at is not None and not 0.0 < on_at <= 1.0:
        raise ValueError(f"economy_at must be in (0, 1] or None, got {on_at}")


class EconomySwitch:
    """Economy decoding on at ``on_at`` load and off again below ``on_at - margin`` (no flapping)."""

    def __init__(self, on_at: float | None, margin: float = 0.15) -> None:
        check_economy_at(on_at)
        self._on_at = on_at
        self._off_below = (on_at or 0.0) - margin
        self.on = False

    def update(self, load: float) -> bool:
        if self._on_at is None:
            return False
        if self.on and load < self._off_below:
            self.on = False
        elif not self.on and load >= self._on_at:
            self.on = True
        return self.on


class RequestQueue:
    """The stream requests a worker has yet to answer, and which to answer next (module notes).

    Sans-IO: `add` what arrives, `pop` the next to perform. A request is urgent when it is a start or a
    final, when the caller sent it urgent, or when its call was hurried after sending it; the first urgent
    one in sending order goes next, else the oldest. A request never overtakes an earlier one of its own
    call.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._pending: list[tuple[float, _StreamRequest]] = []
        self._hurried: set[int] = set()

    def __len__(self) -> int:
        return len(self._pending)

    def oldest_wait_s(self) -> float:
        """How long the request waiting longest has waited since it was sent (0 when none waits): time in
        the sender's buffer and the socket's counts, as the caller waits through it too."""
        return self._clock() - self._pending[0][0] if self._pending else 0.0

    def add(self, request: _StreamRequest) -> None:
        ident = request[2]
        if request[1] == _HURRY:
            # Only a call with a request waiting is hurried: one already answered is not waiting.
            if any(waiting[2] == ident for _, waiting in self._pending):
                self._hurried.add(ident)
            return
        self._pending.append((min(request[5], self._clock()), request))

    def pop(self) -> _StreamRequest:
        if not self._pending:
            raise IndexError("no request waiting")
        chosen = 0
        seen: set[int] = set()
        for index, (_, (_, operation, ident, _argument, urgent, _sent)) in enumerate(self._pending):
            if ident in seen:
                continue  # behind an earlier request of its own call
            seen.add(ident)
            if urgent or operation in _FIRST or ident in self._hurried:
                chosen = index
                break
        _, request = self._pending.pop(chosen)
        if not any(waiting[2] == request[2] for _, waiting in self._pending):
            self._hurried.discard(request[2])
        return request


def _serve(
    engine_factory: Callable[[], SpeechEngine],
    connection: multiprocessing.connection.Connection,
    stream: socket.socket,
    niceness: int,
    economy_at: float | None = None,
) -> None:
    """Worker process: build the engine once, then answer both channels until the control pipe closes."""
    if niceness:
        with contextlib.suppress(OSError):
            os.nice(niceness)
    limit_blas_threads(1)  # this process is one of a worker per core; see agent/blas.py
    try:
        engine = engine_factory()
    except BaseException as exc:  # report any start-up failure to the parent, then exit
        connection.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    connection.send(("ok", _READY))
    recognizers: dict[int, StreamingRecognizer] = {}
    inbox = bytearray()
    gauge = BusyGauge()
    economy = EconomySwitch(economy_at)
    queue = RequestQueue()

    def start_depth() -> int:
        """How cheaply a new utterance is decoded now (module notes)."""
        busy = economy.update(gauge.load())
        if busy and queue.oldest_wait_s() >= DEEP_ECONOMY_AFTER_S:
            return 2
        return 1 if busy else 0

    while True:
        if queue:  # look for more (an urgent request may have come) without waiting
            ready_now = multiprocessing.connection.wait([connection, stream], timeout=0)
        else:
            gauge.waiting()
            ready_now = multiprocessing.connection.wait([connection, stream])
            gauge.working()
        for ready in ready_now:
            if ready is connection:
                try:
                    operation, ident, argument = connection.recv()
                except (EOFError, OSError):
                    return
                if operation == "engine":  # a rebuilt model: new recognisers use it, live ones keep theirs
                    engine = argument
                    connection.send(("ok", None))
                else:
                    depth = start_depth() if operation == "start" else 0
                    connection.send(_perform(engine, recognizers, operation, ident, argument, depth))
            else:
                try:
                    data = stream.recv(1 << 18)
                except OSError:
                    data = b""
                if not data:
                    stream.close()
                    return
                inbox += data
                while len(inbox) >= _FRAME.size:
                    (size,) = _FRAME.unpack_from(inbox)
                    if len(inbox) < _FRAME.size + size:
                        break
                    queue.add(pickle.loads(inbox[_FRAME.size : _FRAME.size + size]))
                    del inbox[: _FRAME.size + size]
        if queue:
            request_id, operation, ident, argument, _, _ = queue.pop()
            depth = start_depth() if operation == "start" else 0
            reply = _perform(engine, recognizers, operation, ident, argument, depth)
            payload = pickle.dumps((request_id, *reply), protocol=pickle.HIGHEST_PROTOCOL)
            stream.sendall(_FRAME.pack(len(payload)) + payload)


def _perform(
    engine: SpeechEngine,
    recognizers: dict[int, StreamingRecognizer],
    operation: str,
    ident: int,
    argument: Any,
    depth: int = 0,
) -> tuple[str, Any]:
    """One request. "start" answers how cheaply the utterance decodes (0 in full, 1 economy, 2 deep
    economy): at `depth`, at least at the depth the caller asked for (``argument``, 1 or 2), in full when
    the recogniser has no cheaper way."""
    try:
        result: Any = None
        if operation == "new":
            recognizers[ident] = engine.new_recognizer()
        elif operation == "close":
            closing = recognizers.pop(ident, None)
            close = getattr(closing, "close", None)
            if callable(close):
                close()  # gives a borrowed decoder back (agent.stt)
        else:
            recognizer = recognizers[ident]
            if operation == "start":
                if argument:
                    depth = max(depth, int(argument))
                if isinstance(recognizer, EconomyRecognizer):
                    if depth:
                        recognizer.start_economy_utterance(deep=depth >= 2)
                    else:
                        recognizer.start_utterance()
                    result = recognizer.economy_depth
                else:
                    recognizer.start_utterance()
                    result = 0
            elif operation == "feed":
                recognizer.feed(argument)
                result = recognizer.partial()
            elif operation == "partial":
                result = recognizer.partial()
            elif operation == "end":
                result = recognizer.end_utterance()
            else:
                raise ValueError(f"unknown operation {operation!r}")
        return ("ok", result)
    except Exception as exc:
        return ("error", f"{type(exc).__name__}: {exc}")


class _Stream:
    """The parent's end of a worker's stream socket, driven by the running event loop.

    Non-blocking both ways: a request is written at once when the socket takes it and buffered (with a
    writer callback) when it does not, so the loop never waits on a busy worker. Bound to the loop that
    first uses it; a later loop (a test's second ``asyncio.run``) takes it over.
    """

    def __init__(self, sock: socket.socket, name: str) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[tuple[str, Any]]] = {}
        self._inbox = bytearray()
        self._outbox = bytearray()
        self._gone: str | None = None

    async def call(self, operation: str, ident: int, argument: Any = None, *, urgent: bool = False) -> Any:
        if self._gone is not None:
            raise SttError(f"speech worker {self._name} is gone: {self._gone}")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._bind(loop)
        request_id = next(self._ids)
        reply: asyncio.Future[tuple[str, Any]] = loop.create_future()
        self._waiting[request_id] = reply
        self._send((request_id, operation, ident, argument, urgent, time.monotonic()))
        try:
            status, value = await reply
        finally:
            self._waiting.pop(request_id, None)
        if status != "ok":
            raise SttError(f"speech worker {self._name}: {value}")
        return value

    def tell(self, operation: str, ident: int) -> None:
        """A one-way message (no reply); dropped if the worker is gone or no loop drives the stream."""
        if self._gone is None and self._loop is not None:
            self._send((0, operation, ident, None, True, time.monotonic()))

    def close(self) -> None:
        self._unbind()
        self._fail("closed")
        self._sock.close()

    def _send(self, request: _StreamRequest) -> None:
        payload = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        self._write(_FRAME.pack(len(payload)) + payload)

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._unbind()
        self._fail("its event loop was replaced")  # replies for the old loop's futures cannot arrive there
        self._outbox.clear()
        self._inbox.clear()
        self._loop = loop
        loop.add_reader(self._sock.fileno(), self._on_readable)

    def _unbind(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._sock.fileno())
            loop.remove_writer(self._sock.fileno())

    def _write(self, data: bytes) -> None:
        if self._outbox:
            self._outbox += data
            return
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._lost(repr(exc))
            return
        if sent < len(data):
            self._outbox += data[sent:]
            assert self._loop is not None
            self._loop.add_writer(self._sock.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        try:
            sent = self._sock.send(self._outbox)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lost(repr(exc))
            return
        del self._outbox[:sent]
        if not self._outbox and self._loop is not None:
            self._loop.remove_writer(self._sock.fileno())

    def _on_readable(self) -> None:
        try:
            data = self._sock.recv(1 << 18)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lost(repr(exc))
            return
        if not data:
            self._lost("its socket closed")
            return
        inbox = self._inbox
        inbox += data
        while len(inbox) >= _FRAME.size:
            (size,) = _FRAME.unpack_from(inbox)
            if len(inbox) < _FRAME.size + size:
                break
            request_id, status, value = pickle.loads(inbox[_FRAME.size : _FRAME.size + size])
            del inbox[: _FRAME.size + size]
            reply = self._waiting.get(request_id)
            if reply is not None and not reply.done():  # a cancelled caller no longer waits
                reply.set_result((status, value))

    def _lost(self, why: str) -> None:
        self._gone = why
        self._unbind()
        self._fail(why)

    def _fail(self, why: str) -> None:
        waiting, self._waiting = self._waiting, {}
        for reply in waiting.values():
            if not reply.done() and not reply.get_loop().is_closed():
                reply.set_exception(SttError(f"speech worker {self._name} is gone: {why}"))


class _Worker:
    def __init__(
        self,
        context: Any,
        engine_factory: Callable[[], SpeechEngine],
        name: str,
        niceness: int,
        economy_at: float | None,
    ) -> None:
        parent, child = context.Pipe()
        parent_stream, child_stream = socket.socketpair()
        self.process = context.Process(
            target=_serve,
            args=(engine_factory, child, child_stream, niceness, economy_at),
            name=name,
            daemon=True,
        )
        self.process.start()
        child.close()
        child_stream.close()
        self._connection: multiprocessing.connection.Connection = parent
        self.stream = _Stream(parent_stream, name)
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
        self.stream.close()
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
        self._depth = 0
        worker.call("new", ident)
        worker.live += 1

    @property
    def economy(self) -> bool:
        """Whether the open (or last) utterance decodes a cheaper way (asked for, or the worker behind)."""
        return self._depth > 0

    @property
    def economy_depth(self) -> int:
        return self._depth

    def start_utterance(self) -> None:
        """Begin an utterance; a worker that is falling behind decodes it the economy way (module notes)."""
        self._partial = ""
        self._depth = int(self._worker.call("start", self._ident))

    def start_economy_utterance(self, *, deep: bool = False) -> None:
        """Begin an utterance decoded at least the economy way (`deep`: cheaper still), deeper if the
        worker is behind."""
        self._partial = ""
        self._depth = int(self._worker.call("start", self._ident, 2 if deep else 1))

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

    async def start_utterance_async(self) -> None:
        self._partial = ""
        self._depth = int(await self._worker.stream.call("start", self._ident))

    async def feed_async(self, pcm16_8k: bytes, *, urgent: bool = False) -> str:
        """Decode more audio from the event loop; returns the partial transcript. `urgent`: the caller is
        not speaking, so someone waits on this partial (module notes)."""
        if len(pcm16_8k) % 2:
            raise ValueError("PCM16 audio must have an even number of bytes")
        self._partial = str(await self._worker.stream.call("feed", self._ident, pcm16_8k, urgent=urgent))
        return self._partial

    def hurry(self) -> None:
        """The caller has paused: what this call has waiting in the worker is urgent now (module notes).
        Call from the event loop; costs one short message."""
        self._worker.stream.tell(_HURRY, self._ident)

    async def end_utterance_async(self) -> str:
        text = str(await self._worker.stream.call("end", self._ident))
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

    The workers run at `niceness` (default 5) below the server: when the cores are all busy, the event
    loop that paces every call's audio goes first and decoding takes the wait -- a turn answered a little
    later, rather than gaps in the audio of every call.

    A worker busy for ``economy_at`` of its time (default 0.85; None: never) starts new utterances the
    economy way until its load falls again (module notes).
    """

    def __init__(
        self,
        engine_factory: Callable[[], SpeechEngine],
        *,
        processes: int | None = None,
        start_timeout_s: float = 120.0,
        niceness: int = 5,
        economy_at: float | None = 0.85,
    ) -> None:
        count = processes if processes is not None else max(1, os.cpu_count() or 1)
        if count < 1:
            raise ValueError("a recogniser pool needs at least one process")
        check_economy_at(economy_at)  # a bad threshold fails here, not in every worker
        # spawn, not fork: the server has threads (executor, database pools) a fork would copy mid-flight.
        context = multiprocessing.get_context("spawn")
        self._workers = [
            _Worker(context, engine_factory, f"stt-{index}", niceness, economy_at) for index in range(count)
        ]
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
