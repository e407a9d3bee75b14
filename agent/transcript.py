"""What a call session records about each turn, and the sink it records into."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class TurnRecord:
    speaker: str  # "caller" | "agent"
    text: str
    intent: str | None = None
    stt_ms: float | None = None  # caller turns: end of speech -> final transcript
    e2e_ms: float | None = None  # agent turns: end of caller speech -> first agent audio queued
    telemetry: dict[str, Any] | None = None  # agent turns: the per-turn timings and outcome (JSON-able)


class TranscriptSink(Protocol):
    """Where a session keeps what was said (the CRM's calls and turns tables)."""

    def add_turn(self, call_id: str, turn: TurnRecord) -> None: ...
