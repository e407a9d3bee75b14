"""Knowledge-article search for callers' questions, with a fallback to the last good answer.

A caller asking "are you open on Sunday" mid-call is better served by the answer we found a minute ago
than by "sorry, I cannot check right now": when the search fails with CrmUnavailable (lock or statement
timeout, database down), the last answer found for the same words is served, marked `stale`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Final

from sqlalchemy.orm import Session

from crm.search import query_words, search_articles
from tools.api import InvalidRequest, KnowledgeAnswer, KnowledgeArticleInfo

DEFAULT_CACHE_ENTRIES: Final = 512


def cache_key(query: str) -> tuple[str, ...]:
    """Questions with the same meaningful words share an entry, whatever their order or filler."""
    return tuple(sorted(query_words(query)))


class LastGoodAnswers:
    """A bounded, thread-safe map from query words to the last answer found for them (LRU eviction)."""

    def __init__(self, max_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self._max_entries = max_entries
        self._answers: OrderedDict[tuple[str, ...], KnowledgeAnswer] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, answer: KnowledgeAnswer) -> None:
        key = cache_key(answer.query)
        with self._lock:
            self._answers[key] = answer
            self._answers.move_to_end(key)
            while len(self._answers) > self._max_entries:
                self._answers.popitem(last=False)

    def recall(self, query: str) -> KnowledgeAnswer | None:
        with self._lock:
            return self._answers.get(cache_key(query))

    def __len__(self) -> int:
        with self._lock:
            return len(self._answers)


def search(session: Session, query: str, *, limit: int = 3) -> KnowledgeAnswer:
    if not query_words(query):
        raise InvalidRequest("ask about something: the question has no searchable words")
    articles = search_articles(session, query, limit=limit)
    return KnowledgeAnswer(
        query=query,
        articles=tuple(
            KnowledgeArticleInfo(slug=article.slug, title=article.title, body=article.body)
            for article in articles
        ),
    )
