"""Match what a caller said (as the recogniser spelled it) to catalogue entries and order numbers.

Recognised speech spells numbers as words ("twenty four f battery", "five w thirty oil"), uses plurals
freely and wraps the thing asked for in filler ("do you have any wipers"). Both sides are reduced to
the same tokens, then scored by how much of the query a candidate covers.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

_UNITS = {
    "zero": 0, "oh": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
_TENS = {
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}
_FILLER = frozenset({
    "a", "an", "the", "some", "any", "do", "does", "you", "have", "has", "got", "in", "stock", "for",
    "my", "of", "i", "need", "want", "please", "is", "are", "there", "how", "many", "much", "your",
    "what", "about",
})  # fmt: skip
# Words of at least this length may match with a spelling slip ("breaks" for "brakes").
_FUZZY_MIN_LENGTH = 4
_FUZZY_RATIO = 0.8
_ORDER_NUMBER = re.compile(r"^[A-Z]{1,2}\d{2,8}$")


def _raw_words(text: str) -> list[str]:
    # Split "5W-30" -> 5 w 30 and "205/55R16" -> 205 55 r 16: digits and letters become separate words.
    return re.findall(r"[a-z]+|\d+", text.lower())


def _numbers_to_digits(words: Sequence[str]) -> list[str]:
    """ "twenty four" -> "24", "five" -> "5", "oh" -> "0" (only next to another number)."""
    out: list[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        following = words[index + 1] if index + 1 < len(words) else ""
        if word in _TENS and following in _UNITS and 0 < _UNITS[following] < 10:
            out.append(str(_TENS[word] + _UNITS[following]))
            index += 2
            continue
        if word in _TENS:
            out.append(str(_TENS[word]))
        elif word in _UNITS and (word != "oh" or _next_to_number(words, index)):
            out.append(str(_UNITS[word]))
        else:
            out.append(word)
        index += 1
    return out


def _next_to_number(words: Sequence[str], index: int) -> bool:
    neighbours = [words[i] for i in (index - 1, index + 1) if 0 <= i < len(words)]
    return any(n.isdigit() or (n in _UNITS and n != "oh") or n in _TENS for n in neighbours)


def _stem(word: str) -> str:
    if word.isdigit() or len(word) <= 3:
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def spoken_tokens(text: str, *, drop_filler: bool = True) -> tuple[str, ...]:
    words = _numbers_to_digits(_raw_words(text))
    return tuple(_stem(word) for word in words if not (drop_filler and word in _FILLER))


def _token_similarity(query_token: str, candidate_tokens: Iterable[str]) -> float:
    best = 0.0
    for token in candidate_tokens:
        if token == query_token:
            return 1.0
        if len(query_token) >= _FUZZY_MIN_LENGTH and len(token) >= _FUZZY_MIN_LENGTH:
            ratio = difflib.SequenceMatcher(None, query_token, token).ratio()
            if ratio >= _FUZZY_RATIO:
                best = max(best, ratio)
    return best


@dataclass(frozen=True, slots=True)
class MatchScore:
    coverage: float  # share of the query's words found in the candidate
    precision: float  # share of the candidate's words the query accounts for

    @property
    def value(self) -> float:
        return 0.75 * self.coverage + 0.25 * self.precision


def score(query: Sequence[str], candidate: Sequence[str]) -> MatchScore:
    if not query or not candidate:
        return MatchScore(0.0, 0.0)
    query_set, candidate_set = set(query), set(candidate)
    matched = sum(_token_similarity(token, candidate_set) for token in query_set)
    return MatchScore(matched / len(query_set), min(1.0, matched / len(candidate_set)))


K = TypeVar("K")

# A candidate must account for at least two thirds of what was asked: "brake fluid" must not
# answer with brake pads, but "front wiper blades" may answer with wiper blades.
MIN_COVERAGE = 0.66


def best_match(query_text: str, candidates: Iterable[tuple[K, Sequence[str]]]) -> K | None:
    """The key whose texts (name, SKU, aliases...) best match `query_text`, or None if none is close."""
    query = spoken_tokens(query_text)
    if not query:
        return None
    best_key: K | None = None
    best_value = 0.0
    for key, texts in candidates:
        for text in texts:
            result = score(query, spoken_tokens(text, drop_filler=False))
            if result.coverage >= MIN_COVERAGE and result.value > best_value:
                best_key, best_value = key, result.value
    return best_key


def normalise_order_number(spoken: str) -> str | None:
    """ "a 1042", "A-1042", "a one oh four two", "a ten forty two" -> "A1042"; None if not that shape."""
    words = _raw_words(spoken)
    parts: list[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        following = words[index + 1] if index + 1 < len(words) else ""
        if word in _TENS and following in _UNITS and 0 < _UNITS[following] < 10:
            parts.append(str(_TENS[word] + _UNITS[following]))
            index += 2
            continue
        if word in _TENS:
            parts.append(str(_TENS[word]))
        elif word in _UNITS and (word != "oh" or parts):
            parts.append(str(_UNITS[word]))
        elif word in ("number", "order"):
            pass
        else:
            parts.append(word)
        index += 1
    candidate = "".join(parts).upper()
    return candidate if _ORDER_NUMBER.match(candidate) else None
