"""Word error rate: how far a recogniser's transcript is from what was said."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["word_error_rate", "word_errors"]


def word_errors(reference: str, hypothesis: str) -> int:
    """Word-level Levenshtein distance (substitutions + insertions + deletions)."""
    ref, hyp = reference.split(), hypothesis.split()
    previous = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, 1):
        current = [i]
        for j, hyp_word in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word)))
        previous = current
    return previous[-1]


def word_error_rate(pairs: Sequence[tuple[str, str]]) -> float:
    """Corpus WER over (reference, hypothesis) pairs."""
    errors = sum(word_errors(ref, hyp) for ref, hyp in pairs)
    return errors / max(1, sum(len(ref.split()) for ref, _ in pairs))
