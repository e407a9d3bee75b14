"""SIP transports (RFC 3261 section 18): UDP, TCP and TLS, as thin asyncio shells around sans-IO framing.

`StreamFramer` cuts a TCP/TLS byte stream into messages by Content-Length (18.3) and is pure. `SipTransports`
owns the sockets: one UDP endpoint, TCP and TLS listeners, and a table of stream connections keyed by the
peer's address, so a response or an in-dialog request to an address we already talk to reuses its
connection (18.2.2, 18.1.1) and a new destination gets a connection opened on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
from collections.abc import Callable
from typing import cast

from telephony.sip.message import MAX_MESSAGE_SIZE

log = logging.getLogger(__name__)

Addr = tuple[str, int]
MessageHandler = Callable[[bytes, Addr, str], None]  # (message bytes, source address, "UDP" | "TCP" | "TLS")
ErrorHandler = Callable[[Addr, str], None]  # the destination could not be reached over that transport

KEEPALIVE_PING = b"\r\n\r\n"  # RFC 5626 section 3.5.1: a double CRLF ping, answered by a single CRLF pong
KEEPALIVE_PONG = b"\r\n"
_CONTENT_LENGTH_RE = re.compile(
    rb"^(?:content-length|l)[ \t]*:[ \t]*(\S*)[ \t\r]*$", re.IGNORECASE | re.MULTILINE
)


class FramingError(Exception):
    """The stream cannot be cut into messages any more (the peer's fault): the connection must close."""


class StreamFramer:
    """Bytes in, complete SIP messages out. Keep-alive pings come out as KEEPALIVE_PING."""

    def __init__(self, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self._buffer = bytearray()
        self._max = max_message_size

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        messages: list[bytes] = []
        buffer = self._buffer
        while buffer:
            if buffer.startswith(b"\r\n") or buffer.startswith(b"\n"):
                if buffer.startswith(KEEPALIVE_PING):
                    messages.append(KEEPALIVE_PING)
                    del buffer[:4]
                    continue
                if len(buffer) < 4 and KEEPALIVE_PING.startswith(bytes(buffer)):
                    break  # maybe the first half of a ping
                # 7.5: stray CRLFs between messages are ignored.
                del buffer[: 2 if buffer.startswith(b"\r\n") else 1]
                continue
            end = buffer.find(b"\r\n\r\n")
            separator = 4
            bare = buffer.find(b"\n\n")
            if bare >= 0 and (end < 0 or bare < end):
                end, separator = bare, 2
            if end < 0:
                if len(buffer) > self._max:
                    raise FramingError("header section too large")
                break
            head = bytes(buffer[:end])
            lengths = _CONTENT_LENGTH_RE.findall(head)
            if len(set(lengths)) > 1:
                raise FramingError("conflicting Content-Length headers")
            text = lengths[0] if lengths else b"0"  # 18.3 demands it; a missing one frames as no body
            if not text.isdigit() or len(text) > 10:
                raise FramingError("malformed Content-Length")
            total = end + separator + int(text)
            if total > self._max:
                raise FramingError("message too large")
            if len(buffer) < total:
                break
            messages.append(bytes(buffer[:total]))
            del buffer[:total]
        return messages


class _StreamConnection(asyncio.Protocol):
    def __init__(self, owner: SipTransports, transport_name: str, peer: Addr | None = None) -> None:
        self._owner = owner
        self.name = transport_name
        self.peer = peer
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.last_activity = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername")
        if self.peer is None and peername is not None:
            self.peer = (str(peername[0]), int(peername[1]))
        if self.peer is None:
            transport.close()
            return
        if not self._owner._register(self):
            transport.close()
            return
        for data in self.pending:
            self.transport.write(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        assert self.peer is not None
        try:
            messages = self.framer.feed(data)
        except FramingError as exc:
            log.info("closing %s connection from %s:%s: %s", self.name, *self.peer, exc)
            if self.transport is not None:
                self.transport.close()
            return
        for message in messages:
            if message == KEEPALIVE_PING:
                self.write(KEEPALIVE_PONG)
                continue
            self._owner._deliver(message, self.peer, self.name)

    def write(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        if self.transport is None:
            self.pending.append(data)
        elif not self.transport.is_closing():
            self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._unregister(self)
        self.transport = None


class _UdpEndpoint(asyncio.DatagramProtocol):
    def __init__(self, owner: SipTransports) -> None:
        self._owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport, but has its interface.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._owner._deliver(data, (addr[0], addr[1]), "UDP")

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP UDP socket error: %s", exc)  # ICMP errors carry no usable destination here


class SipTransports:
    """Every SIP socket of one user agent, feeding received messages to a single handler."""

    def __init__(
        self,
        on_message: MessageHandler,
        on_error: ErrorHandler,
        *,
        client_ssl: ssl.SSLContext | None = None,
        max_connections: int = 1024,
        idle_timeout_s: float = 600.0,
    ) -> None:
        self._on_message = on_message
        self._on_error = on_error
        self.client_ssl = client_ssl
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.ports: dict[str, int] = {}
        self._udp: _UdpEndpoint | None = None
        self._servers: list[asyncio.Server] = []
        self._connections: dict[tuple[str, Addr], _StreamConnection] = {}
        self._connecting: dict[tuple[str, Addr], _StreamConnection] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    # --- listening --------------------------------------------------------------------------------------
    async def listen_udp(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _UdpEndpoint(self), local_addr=(host, port)
        )
        self._udp = protocol
        self.ports["UDP"] = int(transport.get_extra_info("sockname")[1])
        return self.ports["UDP"]

    async def listen_stream(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        loop = asyncio.get_running_loop()
        name = "TLS" if tls is not None else "TCP"
        server = await loop.create_server(
            lambda: _StreamConnection(self, name), host, port, ssl=tls, reuse_address=True
        )
        self._servers.append(server)
        self.ports[name] = int(server.sockets[0].getsockname()[1])
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.idle_timeout_s / 4, self._sweep)
        return self.ports[name]

    def connection_count(self) -> int:
        return len(self._connections)

    # --- sending ----------------------------------------------------------------------------------------
    def send(self, data: bytes, dest: Addr, transport: str) -> None:
        name = transport.upper()
        if name == "UDP":
            if self._udp is None or self._udp.transport is None:
                return
            try:
                self._udp.transport.sendto(data, dest)
            except OSError as exc:
                log.info("SIP UDP send to %s:%s failed: %s", dest[0], dest[1], exc)
                self._on_error(dest, name)
            return
        key = (name, dest)
        connection = self._connections.get(key) or self._connecting.get(key)
        if connection is None:
            connection = _StreamConnection(self, name, dest)
            self._connecting[key] = connection
            task = asyncio.ensure_future(self._connect(connection, dest))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        connection.write(data)

    async def _connect(self, connection: _StreamConnection, dest: Addr) -> None:
        loop = asyncio.get_running_loop()
        tls = self.client_ssl if connection.name == "TLS" else None
        if connection.name == "TLS" and tls is None:
            tls = ssl.create_default_context()
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: connection, dest[0], dest[1], ssl=tls, server_hostname=dest[0] if tls else None
                ),
                10.0,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            log.info("SIP %s connection to %s:%s failed: %s", connection.name, dest[0], dest[1], exc)
            self._connecting.pop((connection.name, dest), None)
            self._on_error(dest, connection.name)

    # --- connection table (called by the connections) ---------------------------------------------------
    def _register(self, connection: _StreamConnection) -> bool:
        assert connection.peer is not None
        key = (connection.name, connection.peer)
        self._connecting.pop(key, None)
        if len(self._connections) >= self.max_connections:
            log.warning("SIP connection limit %d reached; refusing %s:%s", self.max_connections, *key[1])
            return False
        old = self._connections.get(key)
        if old is not None and old is not connection and old.transport is not None:
            old.transport.close()
        self._connections[key] = connection
        return True

    def _unregister(self, connection: _StreamConnection) -> None:
        if connection.peer is None:
            return
        key = (connection.name, connection.peer)
        if self._connections.get(key) is connection:
            del self._connections[key]

    def _deliver(self, data: bytes, source: Addr, transport: str) -> None:
        try:
            self._on_message(data, source, transport)
        except Exception:  # one message must never take the socket down
            log.exception("SIP message from %s:%s could not be handled", *source)

    def _sweep(self) -> None:
        now = time.monotonic()
        for connection in list(self._connections.values()):
            if now - connection.last_activity > self.idle_timeout_s and connection.transport is not None:
                connection.transport.close()
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(self.idle_timeout_s / 4, self._sweep)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for task in list(self._tasks):
            task.cancel()
        for connection in list(self._connections.values()):
            if connection.transport is not None:
                connection.transport.close()
        for server in self._servers:
            server.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._servers.clear()
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()
