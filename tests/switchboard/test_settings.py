"""`switchboard serve` reads its settings from SWITCHBOARD_* variables and names the variable at fault."""

from __future__ import annotations

import pytest

from switchboard.cli import main
from switchboard.config import Settings


def test_stt_passes_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().stt_passes == 2
    monkeypatch.setenv("SWITCHBOARD_STT_PASSES", "1")
    assert Settings().stt_passes == 1


def test_a_bad_stt_passes_stops_serve_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SWITCHBOARD_STT_PASSES", "3")
    assert main(["serve"]) == 2
    error = capsys.readouterr().err
    assert "SWITCHBOARD_STT_PASSES" in error, error
