"""`switchboard serve` with Twilio configured: an auth token, a public URL that is not its own address
(as behind a proxy or tunnel), and room for two calls so the over-capacity answer can be reached."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from tests.e2e.conftest import RunningServer, running_server
from tests.telephony.twilio.twilio_peer import TwilioPeer

AUTH_TOKEN = "switchboard-test-auth-token"
PUBLIC_URL = "https://switchboard.example.test"
MAX_CALLS = 2


@pytest.fixture(scope="module")
def twilio_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
        env.delenv("TWILIO_ACCOUNT_SID", raising=False)
        env.setenv("SWITCHBOARD_PUBLIC_URL", PUBLIC_URL)
        env.setenv("SWITCHBOARD_MAX_CALLS", str(MAX_CALLS))
        env.setenv("SWITCHBOARD_TWILIO_SKIP_SIGNATURE_CHECK", "false")
        with running_server(tmp_path_factory.mktemp("twilio-serve")) as server:
            yield server


@pytest.fixture
async def new_peer(twilio_server: RunningServer) -> AsyncIterator[Callable[..., TwilioPeer]]:
    """Makes Twilio peers for the server; any still connected at the end are dropped, so a failed test
    does not leave its call holding one of the server's places."""
    peers: list[TwilioPeer] = []

    def make(**kwargs: Any) -> TwilioPeer:
        peer = TwilioPeer(server=twilio_server.api, public=PUBLIC_URL, auth_token=AUTH_TOKEN, **kwargs)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        await peer.__aexit__(None, None, None)
