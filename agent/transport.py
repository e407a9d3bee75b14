"""The seam between a call's transport (SIP/RTP today, Twilio Media Streams next) and the agent loop.

No agent code knows which transport it runs on: the transport delivers 20 ms PCM16 8 kHz frames and DTMF
digits to the session's sinks, and the session sends audio, flushes it on barge-in and hangs up.
"""

from __future__ import annotations

from typing import Protocol


class CallTransport(Protocol):
    def play(self, pcm16: bytes) -> None:
        """Queue 8 kHz PCM16 audio for paced playout."""

    def flush(self) -> int:
        """Drop queued audio that has not been sent yet; returns how many 20 ms frames were dropped."""

    async def wait_drained(self) -> None:
        """Return once every queued frame has been sent (or flushed)."""

    async def hangup(self) -> None:
        """End the call from the agent's side."""

    async def transfer(self, target: str) -> bool:
        """Hand the caller to a human at `target` ("sip:...", "tel:+1...", "queue:NAME"); False on failure."""

    @property
    def frames_played(self) -> int:
        """Agent speech frames actually sent so far: what the caller can have heard."""
