"""Per-turn telemetry: where each reply's milliseconds went, logged as one JSON line and kept with the call.

Fields (all milliseconds unless said otherwise):
- stt_ms: end of caller speech (last voiced frame) -> final transcript
- stt_economy: the transcript was decoded a cheaper way, by a speech worker that was falling behind;
  stt_economy_depth: 0 in full, 1 economy (the worker busy), 2 deep economy (requests waiting on it)
- endpoint_ms: end of caller speech -> the endpointer declared the turn over (the hangover used)
- speech_ms: the caller's turn, first to last voiced frame
- stt_audio_ms: caller audio the recogniser decoded for the turn (lead-in and pauses included; audio
  decoded again after an undone early finalisation counts twice): the recognition cost of the turn
- tool_ms: time spent in CRM tools while working out the reply
- llm_ms: time spent waiting for the language model (0 when the deterministic policy answered)
- tts_first_audio_ms: synthesis time of the first clause
- e2e_ms: end of caller speech -> first agent audio queued for playout
- intent, outcome ("answered", "speculative", "filler", "barge_in", "resumed", "transfer", "hangup", ...)
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from tools.api import ToolBox

log = logging.getLogger("switchboard.telemetry")

__all__ = ["TimedTools", "TurnTelemetry"]


@dataclass(slots=True)
class TurnTelemetry:
    call_id: str
    turn: int
    kind: str = "utterance"  # utterance | dtmf | silence | greeting
    stt_ms: float | None = None
    endpoint_ms: float | None = None
    stt_economy: bool = False
    stt_economy_depth: int = 0
    speech_ms: float | None = None
    stt_audio_ms: float | None = None
    tool_ms: float = 0.0
    llm_ms: float = 0.0
    tts_first_audio_ms: float | None = None
    e2e_ms: float | None = None
    intent: str | None = None
    outcome: str = "answered"
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        record = asdict(self)
        extra = record.pop("extra")
        record.update(extra)
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in record.items()}

    def emit(self) -> dict[str, Any]:
        """Log the record as one JSON line (logger ``switchboard.telemetry``) and return it."""
        record = self.as_dict()
        log.info("%s", json.dumps(record, sort_keys=True))
        return record


class TimedTools:
    """Wraps a call's toolbox and adds up the time spent in tool calls (read with `take_ms`)."""

    def __init__(self, tools: ToolBox) -> None:
        self._tools = tools
        self._lock = threading.Lock()
        self._spent_s = 0.0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._tools, name)
        if not callable(attribute) or name.startswith("_"):
            return attribute

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return attribute(*args, **kwargs)
            finally:
                with self._lock:
                    self._spent_s += time.perf_counter() - started

        return timed

    def take_ms(self) -> float:
        """Milliseconds spent in tools since the last call, and reset."""
        with self._lock:
            spent, self._spent_s = self._spent_s, 0.0
        return spent * 1000
