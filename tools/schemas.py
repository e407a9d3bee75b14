"""One definition per tool: name, description, JSON schema of the arguments, result type and time limit.

The dialogue policy calls `tools.api.ToolBox` methods directly; a language-model path offers these
definitions as its tool list (`as_function_spec`) and turns the model's JSON arguments back into typed
values with `parse_arguments`, which rejects anything the schema does not allow with InvalidRequest.
Only the small subset of JSON schema used here is interpreted (types, formats, required, bounds).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Final

from tools.api import (
    BookingInfo,
    BusinessInfo,
    CustomerInfo,
    InvalidRequest,
    InventoryInfo,
    KnowledgeAnswer,
    OrderInfo,
    Slot,
)

JsonSchema = dict[str, Any]

# Lookups must answer inside a conversational pause; writers may wait a little for the booking lock.
READ_TIMEOUT_S: Final = 2.0
WRITE_TIMEOUT_S: Final = 3.0
# Short on purpose: a slow search is answered from the cache of last good answers instead.
SEARCH_TIMEOUT_S: Final = 0.5

_PHONE = {"type": "string", "description": "caller number in any common form; normalised to E.164"}
_DATE = {"type": "string", "format": "date", "description": "business-local date, YYYY-MM-DD"}
_DATETIME = {
    "type": "string",
    "format": "date-time",
    "description": "business-local start, YYYY-MM-DDTHH:MM (no offset)",
}
_BOOKING_ID = {"type": "integer", "minimum": 1}


@dataclass(frozen=True, slots=True)
class ToolDefinition:
    name: str  # the tool's name as a model sees it
    method: str  # the `ToolBox` method that implements it
    description: str
    parameters: JsonSchema  # a JSON schema object
    result: type
    timeout_s: float

    def as_function_spec(self) -> dict[str, Any]:
        """The common {"name", "description", "parameters"} shape of LLM function-calling APIs."""
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


def _object(properties: dict[str, JsonSchema], required: tuple[str, ...] = ()) -> JsonSchema:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


TOOL_DEFINITIONS: Final[tuple[ToolDefinition, ...]] = (
    ToolDefinition(
        "lookup_customer",
        "lookup_customer",
        "Find the customer calling from a phone number; null when the number is unknown.",
        _object({"phone": _PHONE}, ("phone",)),
        CustomerInfo,
        READ_TIMEOUT_S,
    ),
    ToolDefinition(
        "find_slots",
        "find_slots",
        "Free start times for a service on one day, respecting opening hours, closures and bay capacity.",
        _object(
            {
                "service": {"type": "string", "minLength": 1, "description": "service name as spoken"},
                "day": _DATE,
                "after": {"type": "string", "format": "time", "description": "earliest start, HH:MM"},
            },
            ("service", "day"),
        ),
        Slot,
        READ_TIMEOUT_S,
    ),
    ToolDefinition(
        "book",
        "book",
        "Book a service for a customer at a start time; fails when the slot is taken or closed.",
        _object(
            {
                "customer_id": {"type": "integer", "minimum": 1},
                "service": {"type": "string", "minLength": 1},
                "start": _DATETIME,
            },
            ("customer_id", "service", "start"),
        ),
        BookingInfo,
        WRITE_TIMEOUT_S,
    ),
    ToolDefinition(
        "reschedule",
        "reschedule",
        "Move an existing booking to a new start time, keeping its service.",
        _object({"booking_id": _BOOKING_ID, "new_start": _DATETIME}, ("booking_id", "new_start")),
        BookingInfo,
        WRITE_TIMEOUT_S,
    ),
    ToolDefinition(
        "cancel",
        "cancel_booking",
        "Cancel a booking; cancelling twice is harmless.",
        _object({"booking_id": _BOOKING_ID}, ("booking_id",)),
        BookingInfo,
        WRITE_TIMEOUT_S,
    ),
    ToolDefinition(
        "get_booking",
        "get_booking",
        "One booking by id: service, times and status.",
        _object({"booking_id": _BOOKING_ID}, ("booking_id",)),
        BookingInfo,
        READ_TIMEOUT_S,
    ),
    ToolDefinition(
        "order_status",
        "order_status",
        "Status of an order by its number (a letter and digits, e.g. A1042).",
        _object({"order_number": {"type": "string", "minLength": 1}}, ("order_number",)),
        OrderInfo,
        READ_TIMEOUT_S,
    ),
    ToolDefinition(
        "check_inventory",
        "check_inventory",
        "Stock level and price of a product named as a caller would say it.",
        _object({"spoken_name": {"type": "string", "minLength": 1}}, ("spoken_name",)),
        InventoryInfo,
        READ_TIMEOUT_S,
    ),
    ToolDefinition(
        "business_info",
        "search_business_info",
        "Answer questions about the business (hours, address, policies, FAQ) from its knowledge articles.",
        _object({"query": {"type": "string", "minLength": 1, "maxLength": 500}}, ("query",)),
        KnowledgeAnswer,
        SEARCH_TIMEOUT_S,
    ),
    ToolDefinition(
        "business_details",
        "business_info",
        "The business's name, address and a spoken summary of its opening hours.",
        _object({}),
        BusinessInfo,
        READ_TIMEOUT_S,
    ),
)

TOOLS_BY_NAME: Final = {definition.name: definition for definition in TOOL_DEFINITIONS}
TIMEOUT_BY_METHOD: Final = {definition.method: definition.timeout_s for definition in TOOL_DEFINITIONS}


def parse_arguments(tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Check JSON `arguments` against the tool's schema; keyword arguments for its `ToolBox` method."""
    definition = TOOLS_BY_NAME.get(tool)
    if definition is None:
        raise InvalidRequest(f"unknown tool {tool!r}")
    properties: dict[str, JsonSchema] = definition.parameters["properties"]
    unknown = sorted(set(arguments) - set(properties))
    if unknown:
        raise InvalidRequest(f"{tool}: unexpected argument(s) {', '.join(unknown)}")
    missing = [name for name in definition.parameters["required"] if name not in arguments]
    if missing:
        raise InvalidRequest(f"{tool}: missing argument(s) {', '.join(missing)}")
    return {name: _parse_value(tool, name, properties[name], value) for name, value in arguments.items()}


def _parse_value(tool: str, name: str, schema: JsonSchema, value: Any) -> Any:
    where = f"{tool}.{name}"
    if schema["type"] == "integer":
        # bool is an int subclass in Python but not an integer in JSON.
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidRequest(f"{where} must be an integer")
        if value < schema.get("minimum", value):
            raise InvalidRequest(f"{where} must be at least {schema['minimum']}")
        return value
    if not isinstance(value, str):
        raise InvalidRequest(f"{where} must be a string")
    if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
        raise InvalidRequest(f"{where} has a bad length")
    parse = {
        "date": dt.date.fromisoformat,
        "date-time": dt.datetime.fromisoformat,
        "time": dt.time.fromisoformat,
    }
    parser = parse.get(schema.get("format", ""))
    if parser is None:
        return value
    try:
        parsed = parser(value)
    except ValueError as exc:
        raise InvalidRequest(f"{where}: {value!r} is not a valid {schema['format']}") from exc
    if isinstance(parsed, dt.datetime) and parsed.tzinfo is not None:
        raise InvalidRequest(f"{where} is business-local time: give it without an offset")
    return parsed
