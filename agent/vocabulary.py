"""The business's own words, gathered from the CRM, from which the speech model is built."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class DomainVocabulary:
    business_name: str
    services: tuple[str, ...]  # spoken service names, lower case: "oil change", "tire rotation"
    products: tuple[str, ...]  # spoken product names and aliases: "wiper blades", "brake pads"
    customer_names: tuple[str, ...] = field(default=())  # "dana whitfield"
    order_numbers: tuple[str, ...] = field(default=())  # "A1042" (letter + digits)

    def fingerprint(self) -> str:
        """A digest of what the speech model depends on: the same words, in any order and letter case,
        give the same fingerprint, so reordered or re-saved CRM rows do not trigger a rebuild."""

        def canonical(words: tuple[str, ...]) -> list[str]:
            return sorted({" ".join(word.lower().split()) for word in words})

        content = [
            canonical((self.business_name,)),
            canonical(self.services),
            canonical(self.products),
            canonical(self.customer_names),
            canonical(self.order_numbers),
        ]
        return hashlib.sha256(json.dumps(content).encode()).hexdigest()
