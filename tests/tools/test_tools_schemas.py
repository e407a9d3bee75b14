"""The tool definitions: every one names a real ToolBox method, and JSON arguments parse or are refused."""

from __future__ import annotations

import datetime as dt
import inspect
import json

import pytest

from tools.api import InvalidRequest, ToolBox
from tools.schemas import TOOL_DEFINITIONS, TOOLS_BY_NAME, ToolDefinition, parse_arguments
from tools.toolbox import DatabaseToolBox

ISSUE_TOOLS = {
    "lookup_customer",
    "find_slots",
    "book",
    "reschedule",
    "cancel",
    "get_booking",
    "order_status",
    "check_inventory",
    "business_info",
}


def test_every_issue_tool_is_defined_once_with_a_timeout() -> None:
    names = [definition.name for definition in TOOL_DEFINITIONS]
    assert len(names) == len(set(names))
    assert set(names) >= ISSUE_TOOLS
    assert all(0 < definition.timeout_s <= 5 for definition in TOOL_DEFINITIONS)


@pytest.mark.parametrize("definition", TOOL_DEFINITIONS, ids=lambda d: d.name)
def test_schema_matches_the_method_signature(definition: ToolDefinition) -> None:
    assert hasattr(ToolBox, definition.method)
    parameters = inspect.signature(getattr(DatabaseToolBox, definition.method)).parameters
    method_args = {name for name in parameters if name != "self"}
    schema_args = set(definition.parameters["properties"])
    # source_call_id is filled in by the toolbox from the call it serves, never by a model.
    assert schema_args == method_args - {"source_call_id"}
    assert set(definition.parameters["required"]) <= schema_args
    json.dumps(definition.as_function_spec())  # plain JSON, ready for a model's tool list


def test_parse_arguments_gives_typed_values() -> None:
    parsed = parse_arguments("find_slots", {"service": "oil change", "day": "2026-11-19", "after": "13:00"})
    assert parsed == {"service": "oil change", "day": dt.date(2026, 11, 19), "after": dt.time(13)}
    parsed = parse_arguments("reschedule", {"booking_id": 4, "new_start": "2026-11-19T10:30"})
    assert parsed == {"booking_id": 4, "new_start": dt.datetime(2026, 11, 19, 10, 30)}


@pytest.mark.parametrize(
    ("tool", "arguments", "message"),
    [
        ("nope", {}, "unknown tool"),
        ("find_slots", {"service": "oil change"}, "missing argument(s) day"),
        ("find_slots", {"service": "oil change", "day": "2026-13-40"}, "not a valid date"),
        ("get_booking", {"booking_id": "7"}, "must be an integer"),
        ("get_booking", {"booking_id": True}, "must be an integer"),
        ("get_booking", {"booking_id": 0}, "at least 1"),
        ("get_booking", {"booking_id": 1, "extra": 1}, "unexpected argument(s) extra"),
        ("book", {"customer_id": 1, "service": "x", "start": "2026-11-19T10:00+02:00"}, "without an offset"),
        ("business_info", {"query": ""}, "bad length"),
    ],
)
def test_parse_arguments_refuses_bad_input(tool: str, arguments: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_arguments(tool, arguments)


def test_business_info_tool_is_the_search() -> None:
    assert TOOLS_BY_NAME["business_info"].method == "search_business_info"
