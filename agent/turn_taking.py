"""Turn-taking decisions the call session makes from what it has heard so far.

- `turn_completeness`: how likely the caller is done, from the words recognised so far. It picks the
  endpoint hangover: a complete answer ("yes", "tomorrow at ten in the morning") ends the turn after a
  short silence, an unfinished phrase ("I'd like to book a") waits much longer, and a bare clock hour
  ("on Saturday at ten") waits long enough for the "... in the morning" callers often add after a pause.
- `is_backchannel`: "mm-hm", "okay", "right" said while the agent talks are listening noises, not turns.
- `EchoGate`: line echo of our own audio must not count as the caller talking (Geigel double-talk test).
- `heard_text`: the part of a reply the caller actually heard when it was cut off.
- `RecognitionFeed`: which of the caller's frames the recogniser decodes (a short lead-in, pauses cut).

All pure functions or sans-IO objects: the session feeds them and acts on the answers.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Final

import numpy as np

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # audioop-lts replaces it on 3.13+
    import audioop

from agent import nlu

__all__ = [
    "Completeness",
    "EchoGate",
    "HangoverPolicy",
    "RecognitionFeed",
    "frame_peak",
    "heard_text",
    "is_backchannel",
    "trim_leading_silence",
    "turn_completeness",
]


class Completeness(enum.Enum):
    COMPLETE = "complete"  # an answer or request the agent can act on
    LIKELY = "likely"  # words the agent does not recognise, nothing dangling
    BARE_TIME = "bare_time"  # ends on a clock hour (or a date) with nothing saying morning or afternoon
    SLOT_PENDING = "slot_pending"  # a request whose key detail usually follows ("about my order ...")
    UNFINISHED = "unfinished"  # ends on a word that needs more after it


# Words a sentence does not end on: articles, prepositions, conjunctions, possessives, auxiliaries and
# hesitations. A transcript ending on one of them is a caller who paused mid-sentence.
_DANGLING: Final = frozenset(
    [
        "a",
        "an",
        "the",
        "my",
        "your",
        "our",
        "their",
        "his",
        "her",
        "its",
        "some",
        "to",
        "at",
        "on",
        "in",
        "for",
        "with",
        "from",
        "of",
        "by",
        "about",
        "into",
        "onto",
        "around",
        "after",
        "before",
        "until",
        "till",
        "between",
        "and",
        "or",
        "but",
        "so",
        "because",
        "if",
        "then",
        "than",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "do",
        "does",
        "did",
        "can",
        "could",
        "would",
        "will",
        "should",
        "shall",
        "may",
        "might",
        "must",
        "i",
        "im",
        "id",
        "ill",
        "ive",
        "we",
        "they",
        "he",
        "she",
        "want",
        "wanna",
        "like",
        "need",
        "get",
        "book",
        "schedule",
        "um",
        "umm",
        "uh",
        "uhh",
        "er",
        "erm",
        "ah",
        "eh",
    ]
)
# "... at ten" may still become "... at ten in the morning", and so may "... at eight thirty" (minutes
# do not say which half of the day: callers paused there and went on in the benchmark); these words do.
_DAY_HALF = re.compile(r"\b(?:am|pm|morning|afternoon|evening|tonight|night|noon|midday)\b")
_HOURS = "one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|1[0-2]|[1-9]|\\d{1,2}:\\d\\d"
_MINUTES = "oclock|fifteen|thirty|forty five|forty|fifty|twenty|ten|five|oh \\w+|[0-5]\\d"
_ENDS_ON_HOUR = re.compile(rf"\b(?:at|for|around|about|by|past|to)\s+(?:{_HOURS})(?:\s+(?:{_MINUTES}))?$")
# "... on the eighth" is a date the caller may still put a time on -- and, on a phone line, is also what
# "... at eight" can sound like to the recogniser.
_ORDINALS = (
    "first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth|thirteenth|"
    "fourteenth|fifteenth|sixteenth|seventeenth|eighteenth|nineteenth|twentieth|thirtieth|"
    "\\d{1,2}(?:st|nd|rd|th)"
)
_ENDS_ON_DATE = re.compile(rf"\bthe\s+(?:twenty\s+|thirty\s+)?(?:{_ORDINALS})$")

_BACKCHANNEL_WORDS: Final = frozenset(
    [
        "mm",
        "mmm",
        "mhm",
        "hmm",
        "hm",
        "uh",
        "huh",
        "yes",
        "yeah",
        "yep",
        "yup",
        "ok",
        "okay",
        "right",
        "sure",
        "alright",
        "all",
        "i",
        "see",
        "got",
        "it",
        "gotcha",
        "cool",
    ]
)


def turn_completeness(text: str) -> Completeness:
    """Classify a (partial) transcript by whether the caller sounds finished."""
    words = nlu.normalise(text).split()
    raw = text.lower().split()
    if not words:
        return Completeness.UNFINISHED
    # normalise() drops hesitations; a transcript that ended on "um" is someone still thinking.
    if raw and raw[-1].strip(".,?!") in {"um", "umm", "uh", "uhh", "er", "erm"}:
        return Completeness.UNFINISHED
    if words[-1] in _DANGLING:
        return Completeness.UNFINISHED
    joined = " ".join(words)
    if (_ENDS_ON_HOUR.search(joined) or _ENDS_ON_DATE.search(joined)) and not _DAY_HALF.search(joined):
        return Completeness.BARE_TIME
    intent = nlu.classify_intent(joined)
    if intent is nlu.Intent.ORDER_STATUS and nlu.parse_order_number(joined) is None:
        return Completeness.SLOT_PENDING  # "I'm calling about my order" ... "A one zero four two"
    if intent is not nlu.Intent.UNKNOWN:
        return Completeness.COMPLETE
    slots = (
        nlu.parse_yes_no(joined),
        nlu.parse_order_number(joined),
        nlu.parse_time(joined),
        nlu.parse_part_of_day(joined),
        nlu.parse_name(joined),
        nlu.parse_date(joined, dt.date.today()),
    )
    if any(slot is not None for slot in slots):
        return Completeness.COMPLETE
    return Completeness.LIKELY


def is_backchannel(text: str) -> bool:
    """True for short listening noises ("mm-hm", "okay", "right", "yeah") said over the agent."""
    words = text.lower().replace("-", " ").replace("'", "").split()
    words = [w.strip(".,?!") for w in words]
    return 0 < len(words) <= 3 and all(w in _BACKCHANNEL_WORDS for w in words)


@dataclass(frozen=True, slots=True)
class HangoverPolicy:
    """Silence (ms) after the last voiced frame that ends a turn, per completeness class."""

    complete_ms: int = 140
    likely_ms: int = 280
    bare_time_ms: int = 800
    slot_pending_ms: int = 800
    unfinished_ms: int = 900
    # Trailing silence after which a turn's transcript is finalised early (speculation), so the reply is
    # ready when the hangover runs out: at least `speculate_after_ms` in, and `speculate_lead_ms` before
    # the hangover ends (`speculate_at_ms`). A speculation the caller talks on from is undone, and the
    # recogniser decodes the whole turn again: in `bench agent` at 50 calls, speculating at 60 ms of any
    # pause undid a third of all speculations and re-decoded 30 % of all caller audio, most of it in
    # pauses of 60-120 ms between words and in the half-second pauses of "on monday at ten ... in the
    # morning"; at 90 ms and with the lead, 3 % (at 50 calls: 12 of 414; p95 at 70 calls 622 -> 325 ms).
    # A final transcript takes 45-90 ms at low load (longer turns take longer), so the lead leaves the
    # turn's end where it was; a complete answer (140 ms) may end up to ~30 ms later on a long turn (three
    # runs at 1 call: p50 196/204/195 ms against 194/195/194 when speculating at 60 ms).
    speculate_after_ms: int = 90
    speculate_lead_ms: int = 150

    def hangover_ms(self, completeness: Completeness) -> int:
        return {
            Completeness.COMPLETE: self.complete_ms,
            Completeness.LIKELY: self.likely_ms,
            Completeness.BARE_TIME: self.bare_time_ms,
            Completeness.SLOT_PENDING: self.slot_pending_ms,
            Completeness.UNFINISHED: self.unfinished_ms,
        }[completeness]

    def speculate_at_ms(self, completeness: Completeness) -> int:
        """Trailing silence at which a turn whose words are this complete is finalised early."""
        return max(self.speculate_after_ms, self.hangover_ms(completeness) - self.speculate_lead_ms)


def frame_peak(pcm16: bytes) -> int:
    """Peak absolute sample of a PCM16 frame (native byte order, as everywhere in the audio path).

    audioop, not numpy: 0.2 us against 4 us for a 20 ms frame, and this runs on every frame of every call.
    """
    if not pcm16:
        return 0
    return int(audioop.max(pcm16[: len(pcm16) - len(pcm16) % 2], 2))


class EchoGate:
    """Tells line echo of our own audio from the caller talking over it (Geigel double-talk detection).

    Telephone hybrids return our audio attenuated by at least 6 dB (ITU-T G.168's echo return loss), a
    few to a few hundred milliseconds later. A caller frame whose peak stays under half the loudest
    frame we sent within the echo window can therefore be our own echo, and is not taken as speech.
    Frames are counted on the media clock (one call of `near_frame` per received 20 ms frame).
    """

    def __init__(self, *, window_frames: int = 16, threshold: float = 0.5) -> None:
        self._threshold = threshold
        self._recent: deque[int] = deque(maxlen=window_frames)

    def far_frame(self, peak: int) -> None:
        """One 20 ms frame of our audio went out (peak 0 when nothing was sent in that slot)."""
        self._recent.append(peak)

    @property
    def far_end_active(self) -> bool:
        """Whether any of our audio went out within the window (so echo may be on the line)."""
        return any(self._recent)

    def is_echo(self, near_pcm16: bytes) -> bool:
        far = max(self._recent, default=0)
        if far == 0:
            return False
        return frame_peak(near_pcm16) <= self._threshold * far


# What the recogniser is given besides the words. Every 20 ms frame decoded costs a speech worker about the
# same, silence or not, and at 50 calls in `bench agent` it decoded 1.26 s of audio per second of caller
# speech: 300 ms of lead-in per turn (only its last 40 ms speech: the VAD triggers on the third voiced
# frame) and the silence of pauses and long hangovers. Less silence is mostly better recognition too:
# `bench/stt_wer.py --as-call` (espeak voices the tests were not tuned on, fed through `Endpointer` and this
# feed as a call feeds them), WER for voices m3/f2 and m8/m7/f4:
# - lead-in 300 / 160 / 80 ms: 5.6 / 5.1 / 5.3 % and 11.3 / 11.3 / 11.6 %; lone short answers ("yes",
#   "no thanks", "at ten", `--short-answers`, six voices) 27.8 % with 300 ms and 22.8 % with 160. But a
#   lone "okay" said over the agent (tests/e2e/test_turn_taking.py) came out "good" with 160 ms and right
#   with 240 or 300: over our own audio the echo gate lets the VAD trigger only once the caller is louder
#   than the echo, later into the word. So a turn that starts over the agent keeps 300 ms, others 160;
# - decoding only the first 200 ms of a pause and its last 100 ms if the caller goes on (with a 160 ms
#   lead-in), against all of it with a 300 ms lead-in: 5.1 against 7.4 % and 11.3 against 14.7 %, 30 %
#   less audio decoded (there the endpointer waits 1 s after each line); lines with a 600 ms pause
#   mid-sentence: 7.0 against 9.6 % and 14.4 against 18.4 %, 31 % less audio. On digital silence
#   (`--line-noise-rms 0`, which no phone line carries but `bench agent`'s callers send) the same lines
#   came out 9.4 against 8.3 % (m3/f2), and the bench's own booking lines ("on monday at ten ... in the
#   morning", 182 of them) 6.0 against 5.7 %. Repeated runs of the same settings differed by 1.5 points.
LEAD_IN_FRAMES: Final = 8  # 160 ms kept before the VAD triggers, so word onsets reach the recogniser
OVER_AGENT_LEAD_IN_FRAMES: Final = 15  # 300 ms when the caller starts over the agent's audio
PAUSE_DECODED_MS: Final = 200  # of a pause inside a turn; the rest is held back ...
RESUME_LEAD_FRAMES: Final = 5  # ... and its last 100 ms decoded if the caller goes on


class RecognitionFeed:
    """Which of the caller's 20 ms frames the recogniser decodes, frame by frame as the endpointer sees
    them: a short lead-in before speech starts, the speech, and of each pause only its start and, if the
    caller goes on, the moments before (where the VAD may have missed a soft onset)."""

    def __init__(
        self,
        *,
        lead_in_frames: int = LEAD_IN_FRAMES,
        over_agent_lead_in_frames: int = OVER_AGENT_LEAD_IN_FRAMES,
        pause_decoded_ms: int = PAUSE_DECODED_MS,
        resume_lead_frames: int = RESUME_LEAD_FRAMES,
    ) -> None:
        if min(lead_in_frames, over_agent_lead_in_frames, pause_decoded_ms, resume_lead_frames) < 0:
            raise ValueError("lead-ins, decoded pause and resume lead cannot be negative")
        self._lead_in_frames = lead_in_frames
        self._over_agent_lead_in_frames = over_agent_lead_in_frames
        self._lead_in: deque[bytes] = deque(maxlen=max(lead_in_frames, over_agent_lead_in_frames))
        self._held: deque[bytes] = deque(maxlen=resume_lead_frames)
        self._pause_decoded_ms = pause_decoded_ms

    def before_speech(self, frame: bytes) -> None:
        """A frame while no one speaks: kept for the lead-in, nothing decoded."""
        self._lead_in.append(frame)

    def speech_started(self, frame: bytes, *, over_agent: bool = False) -> list[bytes]:
        """The frame that started speech: it and the lead-in before it, to decode; the longer lead-in if
        the caller started over the agent's audio."""
        keep = self._over_agent_lead_in_frames if over_agent else self._lead_in_frames
        kept = list(self._lead_in)[max(0, len(self._lead_in) - keep) :] if keep else []
        frames = [*kept, frame]
        self._lead_in.clear()
        self._held.clear()
        return frames

    def in_speech(self, frame: bytes, silence_ms: int) -> list[bytes]:
        """A frame of a turn, `silence_ms` after its last voiced frame (0 if voiced): what to decode."""
        if silence_ms > self._pause_decoded_ms:
            self._held.append(frame)
            return []
        if silence_ms == 0 and self._held:  # the caller goes on after a long pause
            frames = [*self._held, frame]
            self._held.clear()
            return frames
        return [frame]

    def speech_ended(self, frame: bytes, silence_ms: int) -> list[bytes]:
        """The frame that ended the turn, `silence_ms` after its last voiced frame: what to decode."""
        self._held.clear()
        return [frame] if silence_ms <= self._pause_decoded_ms else []


def heard_text(clauses: list[tuple[str, int]], frames_heard: int) -> str:
    """The words of a reply that reached the caller: `clauses` are (text, frames) in playout order."""
    heard: list[str] = []
    remaining = frames_heard
    for text, frames in clauses:
        if remaining >= frames:
            heard.append(text)
            remaining -= frames
            continue
        if remaining > 0 and frames > 0:
            words = text.split()
            # Speech is spread roughly evenly over a clause's words; a half-heard word is not heard.
            count = int(len(words) * remaining / frames)
            if count:
                heard.append(" ".join(words[:count]) + " ...")
        break
    return " ".join(heard)


def trim_leading_silence(pcm16: bytes, *, threshold: int = 300, keep_samples: int = 16) -> bytes:
    """Drop the quiet lead-in synthesisers put before a clause, so the first packet already carries speech."""
    samples = np.frombuffer(pcm16[: len(pcm16) - len(pcm16) % 2], dtype="<i2")
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > threshold)
    if not len(loud):
        return pcm16
    start = max(int(loud[0]) - keep_samples, 0)
    return pcm16[start * 2 :]
