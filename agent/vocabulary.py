"""The business's own words, gathered from the CRM, from which the speech model is built."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class DomainVocabulary:
    business_name: str
    services: tuple[str, ...]  # spoken service names, lower case: "oil change", "tire rotation"
    products: tuple[str, ...]  # spoken product names and aliases: "wiper blades", "brake pads"
    customer_names: tuple[str, ...] = field(default=())  # "dana whitfield"
    order_numbers: tuple[str, ...] = field(default=())  # "A1042" (letter + digits)
