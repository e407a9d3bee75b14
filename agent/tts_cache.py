"""A bounded cache of synthesised clauses in front of any `Synthesizer`.

Contact-center replies repeat: "Anything else I can help with?", the greeting, the opening hours. The
session synthesises clause by clause, so caching per clause turns most of a busy server's synthesis (and
its resampling to 8 kHz) into a dictionary lookup, and the first audio of a common reply is ready at once.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator

from agent.engines import Synthesizer

__all__ = ["CachingSynthesizer"]


class CachingSynthesizer:
    """Wraps a synthesiser; `synthesize_8k(text)` results are kept (least recently used out first) up to
    `max_bytes` of audio. Thread-safe; two threads asking for the same new text may both synthesise it."""

    def __init__(self, synthesizer: Synthesizer, *, max_bytes: int = 32 * 1024 * 1024) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.inner = synthesizer
        self._max_bytes = max_bytes
        self._entries: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def synthesize_8k(self, text: str) -> bytes:
        with self._lock:
            cached = self._entries.get(text)
            if cached is not None:
                self._entries.move_to_end(text)
                self.hits += 1
                return cached
            self.misses += 1
        audio = self.inner.synthesize_8k(text)
        if len(audio) > self._max_bytes:
            return audio
        with self._lock:
            if text not in self._entries:
                self._entries[text] = audio
                self._bytes += len(audio)
                while self._bytes > self._max_bytes:
                    _, evicted = self._entries.popitem(last=False)
                    self._bytes -= len(evicted)
        return audio

    def stream_8k(self, text: str) -> Iterator[bytes]:
        yield self.synthesize_8k(text)
