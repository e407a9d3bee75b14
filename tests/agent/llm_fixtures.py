"""Fixtures shared by the language-model tests: the scripted OpenAI-protocol server and a seeded CRM.

The CRM is migrated and seeded once per module into a template SQLite file; each test gets its own
copy (a file copy costs ~1 ms where migrating costs ~300 ms). The clock stands at Monday 2026-11-23
08:30, as in test_dialogue.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from crm.db import create_engine_for, session_factory
from crm.migrate import upgrade_to_head
from crm.seed import seed_demo_business
from tests.agent.openai_server import OpenAIServer
from tools.toolbox import DatabaseToolBox

MODEL = "switchboard-test-model"
NOW = dt.datetime(2026, 11, 23, 8, 30)  # a Monday
DANA = "+15550100001"


@pytest.fixture(scope="module")
def openai_backend() -> Iterator[OpenAIServer]:
    with OpenAIServer(model=MODEL) as server:
        yield server


@pytest.fixture
def llm_server(openai_backend: OpenAIServer) -> OpenAIServer:
    openai_backend.reset()
    return openai_backend


@pytest.fixture(scope="module")
def seeded_crm_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("llm-crm") / "crm.sqlite"
    url = f"sqlite:///{path}"
    upgrade_to_head(url)
    engine = create_engine_for(url)
    with session_factory(engine).begin() as session:
        seed_demo_business(session, NOW.date())
    engine.dispose()
    return path


@pytest.fixture
def crm_sessions(seeded_crm_file: Path, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    copy = tmp_path / "crm.sqlite"
    shutil.copyfile(seeded_crm_file, copy)
    engine = create_engine_for(f"sqlite:///{copy}")
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
def toolbox(crm_sessions: sessionmaker[Session]) -> DatabaseToolBox:
    return DatabaseToolBox(crm_sessions, now=lambda: NOW)
