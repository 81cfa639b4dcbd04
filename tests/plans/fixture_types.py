"""Output types that test plans reference by import path (``tests.plans.fixture_types:...``)."""

from __future__ import annotations

import dataclasses
from typing import Literal, TypedDict

import msgspec


class Ticket(msgspec.Struct, frozen=True):
    """A triaged support ticket."""

    id: int
    priority: Literal["low", "normal", "urgent"]
    tags: list[str] = []


@dataclasses.dataclass
class Forecast:
    city: str
    high_c: float
    rain: bool | None = None


class Totals(TypedDict):
    count: int
    amount_eur: float


Tickets = list[Ticket]
NOT_A_TYPE = object()
