"""Starting a UserAgent whose TCP listener is sure to be there.

UserAgent.start listens on UDP `port` and on TCP on the same number. With port 0 the kernel picks a UDP
port that is free, but the TCP port of that number may be taken by any other process: the agent then runs
without TCP (it logs a warning; carriers use UDP), and a test that talks TCP to it fails with KeyError
'TCP'. So tests that need TCP pick a number free for both, and start again on another number if someone
took it in the moment between the check and the agent's own bind.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from telephony.sip.ua import UserAgent

LOOPBACK = "127.0.0.1"


def free_udp_and_tcp_port(host: str = LOOPBACK, attempts: int = 100) -> int:
    """A port nobody is bound to right now for either UDP or TCP."""
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue  # the UDP port of that number is taken: another number
            return port
    raise OSError(f"no port free for both UDP and TCP on {host} in {attempts} tries")


async def start_with_tcp(
    make: Callable[[], UserAgent], host: str = LOOPBACK, attempts: int = 20
) -> UserAgent:
    """`make()` a UserAgent and start it on a port free for UDP and TCP; returns it listening on both."""
    for _ in range(attempts):
        port = free_udp_and_tcp_port(host)
        ua = make()
        try:
            await ua.start(host, port)
        except OSError:  # the UDP port was taken since we looked
            await ua.close()
            continue
        if ua.ports.get("TCP") == port:
            return ua
        await ua.close()  # the TCP port was taken since we looked
    raise OSError(f"no user agent could listen on UDP and TCP on {host} in {attempts} tries")
