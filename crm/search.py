"""Full-text search over knowledge articles: SQLite FTS5 or PostgreSQL tsvector (revision 0003).

Callers speak questions ("do you open on saturday", "where are you"), so a query is reduced to its
words and any of them may match (OR); the ranking (bm25 / ts_rank) puts articles matching more and
rarer words first. Words are reduced to letters and digits before they reach either query language,
so no spoken input can be a syntax error.
"""

from __future__ import annotations

import re
from typing import Final

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from crm.models import KnowledgeArticle

FULL_TEXT_TABLE: Final = "knowledge_articles_fts"
FULL_TEXT_INDEX: Final = "ix_knowledge_articles_fts"  # PostgreSQL
# Must match the indexed expression in revision 0003.
_PG_DOCUMENT: Final = "to_tsvector('english', title || ' ' || body)"
_WORD = re.compile(r"[^\W_]+")
# Too common to say anything about which article is wanted; PostgreSQL drops them itself, FTS5 does not.
_STOP_WORDS: Final = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "can",
        "do",
        "does",
        "for",
        "from",
        "how",
        "i",
        "in",
        "is",
        "it",
        "me",
        "my",
        "of",
        "on",
        "or",
        "the",
        "to",
        "we",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
    ]
)
MAX_QUERY_WORDS: Final = 12


def is_full_text_object(name: str) -> bool:
    """True for the FTS5 table, its shadow tables and the tsvector index, which live outside crm.models."""
    return name in (FULL_TEXT_TABLE, FULL_TEXT_INDEX) or name.startswith(f"{FULL_TEXT_TABLE}_")


def query_words(query: str) -> list[str]:
    words = [word.lower() for word in _WORD.findall(query)]
    meaningful = [word for word in words if word not in _STOP_WORDS]
    return list(dict.fromkeys(meaningful))[:MAX_QUERY_WORDS]


def search_articles(session: Session, query: str, *, limit: int = 3) -> list[KnowledgeArticle]:
    """The best-matching articles, best first; empty when no word of `query` matches."""
    words = query_words(query)
    if not words:
        return []
    if session.get_bind().dialect.name == "sqlite":
        # Each word quoted: FTS5 would otherwise read words like NOT or NEAR as operators.
        match = " OR ".join(f'"{word}"' for word in words)
        ids = session.execute(
            text(
                f"SELECT rowid FROM {FULL_TEXT_TABLE} WHERE {FULL_TEXT_TABLE} MATCH :match "
                "ORDER BY bm25(knowledge_articles_fts, 5.0, 1.0) LIMIT :limit"
            ),
            {"match": match, "limit": limit},
        ).scalars()
    else:
        tsquery = " | ".join(words)
        ids = session.execute(
            text(
                f"SELECT id FROM knowledge_articles WHERE {_PG_DOCUMENT} @@ to_tsquery('english', :q) "
                f"ORDER BY ts_rank({_PG_DOCUMENT}, to_tsquery('english', :q)) DESC, id LIMIT :limit"
            ),
            {"q": tsquery, "limit": limit},
        ).scalars()
    ordered = list(ids)
    if not ordered:
        return []
    found = session.scalars(select(KnowledgeArticle).where(KnowledgeArticle.id.in_(ordered)))
    articles = {article.id: article for article in found}
    return [articles[article_id] for article_id in ordered if article_id in articles]
