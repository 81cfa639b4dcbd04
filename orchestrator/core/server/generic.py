"""The ``generic`` local model's two skills: arguments from a text, and prose from results.

Both are deterministic (same input, same output) and know nothing of any plan's data.

**Arguments.** :func:`arguments_for` fills a tool's JSON schema from the conversation's
text. The text is read once into :class:`Facts`: dates (``2026-06-02``, ``2 June 2026``,
``June 2, 2026``), quantities with the word that follows them (``for 1 person``,
``2-night``, ``3 nights``, ``top 3``, ``500 EUR``) and places with the preposition before
them (``to Porto``, ``from Paris``). A parameter is matched by its name and description:
a count of people takes the number of people, ``nights`` the number of nights, ``origin``
the place after "from", ``destination`` or ``city`` the place after "to" or "in", a start
date the first date and an end date the second (or the first plus the stay). Whatever the
text says, the value validates against the schema (ranges, lengths, enums, multiples).

**Prose.** :func:`summarise` turns tool outputs into a short answer: JSON objects become
``key: value`` phrases, lists of objects short bullet lines (at most three, then "and N
more"), nested values a summary; plain text (a worker's answer) is quoted. Text is cut at a
sentence or word boundary, never inside a word. The answer says once, in its first line,
that the local model wrote it.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = [
    "LEAD_IN",
    "Facts",
    "answer_for_schema",
    "arguments_for_schema",
    "cut",
    "known_values",
    "render_json",
    "render_output",
    "summarise",
]

# -- reading the text ----------------------------------------------------------------------------


def _set(words: str) -> frozenset[str]:
    return frozenset(words.split())


_MONTHS: Final = {
    name: number
    for number, names in enumerate(
        (
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ),
        start=1,
    )
    for name in names
}
_MONTH: Final = "|".join(sorted(_MONTHS, key=len, reverse=True))
_ISO_DATE: Final = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_DAY_MONTH: Final = re.compile(
    rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+({_MONTH})\.?,?\s+(\d{{4}})\b", re.IGNORECASE
)
_MONTH_DAY: Final = re.compile(
    rf"\b({_MONTH})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+(\d{{4}})\b", re.IGNORECASE
)
_TIME: Final = re.compile(r"\b\d{1,2}:\d{2}(?::\d{2})?\b")
# A number standing alone; a full stop after it ends the sentence ("top 3.") and does not
# make it part of a version or a word ("v1.2", "3.x").
_NUMBER: Final = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?!\.?\w)")
_SPELLED: Final = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
}
_SPELLED_NUMBER: Final = re.compile(rf"\b({'|'.join(_SPELLED)})\b", re.IGNORECASE)
_UNIT_AFTER: Final = re.compile(r"\s*(?:-\s*)?([A-Za-z%]+|[€$£])")
_WORD_BEFORE: Final = re.compile(r"([A-Za-z€$£]+)\s*$")
_PROPER: Final = re.compile(
    r"\b[A-Z][a-zA-Z\-']*(?:\s+(?:(?:de|da|do|del|la|le|of|am)\s+)?[A-Z][a-zA-Z\-']*)*"
)
_SENTENCE_START: Final = re.compile(r"(?:^|[.!?]\s+|\n\s*)$")
# Capitalised words that are not names.
_NOT_NAMES: Final = _set(
    "I The A An Plan Please Find Make Use Book Search Show Give Get Tell What Where "
    "When How Which Who Why Is Are Can Could Would My We Our It This That Monday "
    "Tuesday Wednesday Thursday Friday Saturday Sunday "
    # Verbs a task starts with ("Send from Faro", "Look Lisbon up"): never a place.
    "Send Post Save Store Look Check Count Audit Report List Write Read Run Call Fetch "
    "Compute Compare Summarise Summarize Analyse Analyze Review Update Create Delete "
    "Add Remove Tour Visit Now Then Next Also And But Results Result"
) | {m.capitalize() for m in _MONTHS}

# What a quantity's unit word means; a parameter whose name or description says the same
# takes that quantity.
_GROUPS: Final[dict[str, frozenset[str]]] = {
    "people": _set(
        "person people persons adult guest traveller traveler passenger pax participant "
        "attendee party seat ticket visitor tourist member"
    ),
    "children": _set("child children kid infant baby"),
    "nights": _set("night"),
    "days": _set("day"),
    "weeks": _set("week"),
    "rooms": _set("room bedroom"),
    "stars": _set("star"),
    "hours": _set("hour h hr"),
    "minutes": _set("minute min"),
    "money": _set("eur euro € usd dollar $ gbp pound £ chf price budget cost"),
    "percent": _set("percent % pct"),
    "limit": _set("top best first limit result option max count"),
}
_UNIT_GROUP: Final = {word: group for group, words in _GROUPS.items() for word in words}
# Parameter name words that name a group without being one of its units.
_PARAMETER_GROUP: Final = {
    **_UNIT_GROUP,
    "duration": "nights",
    "length": "nights",
    "stay": "nights",
    "size": "people",
    "occupancy": "people",
    "k": "limit",
    "n": "limit",
    "number": "limit",
    "results": "limit",
    "amount": "money",
    "fare": "money",
}
_ORIGIN_WORDS: Final = _set("origin from source departure depart start home leaving")
_DESTINATION_WORDS: Final = _set(
    "destination to dest arrival arrive city where location place target town region country area"
)
_ORIGIN_PREPOSITIONS: Final = _set("from leaving departing out")
_DESTINATION_PREPOSITIONS: Final = _set("to in at into visit visiting towards near around for")
_END_WORDS: Final = _set("end out checkout until till return back last")


def _words(text: str) -> list[str]:
    """Lower-case words of a parameter's name (snake_case, camelCase) or description."""
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", text)
    return [word.lower() for word in re.findall(r"[A-Za-z]+|[€$£%]", spaced)]


def _singular(word: str) -> str:
    word = word.lower()
    if word in ("people", "children", "persons"):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


@attrs.frozen
class Quantity:
    """A number in the text, the word after it (its unit) and the word before it."""

    value: float
    unit: str | None
    before: str | None
    group: str | None


@attrs.frozen
class Place:
    """A proper name in the text and the preposition before it. A ``weak`` one is a single
    capitalised word starting a sentence: a name only if nothing better is found."""

    name: str
    preposition: str | None
    weak: bool = False
    quoted: bool = False  # inside a result the text quotes (after our lead-in)


def _mask(text: str, pattern: re.Pattern[str]) -> str:
    return pattern.sub(lambda match: " " * len(match.group(0)), text)


@attrs.frozen
class Facts:
    """What a text says, read once: dates, quantities and places, in order."""

    text: str
    dates: tuple[datetime.date, ...]
    quantities: tuple[Quantity, ...]
    places: tuple[Place, ...]

    @classmethod
    def read(cls, text: str) -> Facts:
        # Our own lead-in, quoted back in a task ("The count: {{steps...}}"), says nothing.
        masked = text.replace(LEAD_IN, " " * len(LEAD_IN))
        dates: list[tuple[int, datetime.date]] = []
        for pattern, order in ((_ISO_DATE, "ymd"), (_DAY_MONTH, "dmy"), (_MONTH_DAY, "mdy")):
            for match in pattern.finditer(masked):
                date = _date(match.groups(), order)
                if date is not None:
                    dates.append((match.start(), date))
            masked = _mask(masked, pattern)
        masked = _mask(masked, _TIME)
        return cls(
            text=text,
            dates=tuple(date for _, date in sorted(dates, key=lambda pair: pair[0])),
            quantities=tuple(_quantities(masked)),
            places=tuple(_places(masked, quoted_from=text.find(LEAD_IN))),
        )


def _date(groups: Sequence[str | Any], order: str) -> datetime.date | None:
    parts = dict(zip(order, groups, strict=True))
    month = parts["m"]
    month_number = int(month) if month.isdigit() else _MONTHS.get(month.lower().rstrip("."), 0)
    try:
        return datetime.date(int(parts["y"]), month_number, int(parts["d"]))
    except ValueError:
        return None


def _quantities(text: str) -> Iterable[Quantity]:
    found: list[tuple[int, Quantity]] = []
    for match in _NUMBER.finditer(text):
        unit, before = _context(text, match.start(), match.end())
        found.append((match.start(), _quantity(float(match.group(0)), unit, before)))
    for match in _SPELLED_NUMBER.finditer(text):
        unit, before = _context(text, match.start(), match.end())
        quantity = _quantity(float(_SPELLED[match.group(1).lower()]), unit, before)
        # "one" alone is as often a pronoun as a number: only with a unit it means one.
        if quantity.group is not None and quantity.unit is not None:
            found.append((match.start(), quantity))
    return [quantity for _, quantity in sorted(found, key=lambda pair: pair[0])]


def _context(text: str, start: int, end: int) -> tuple[str | None, str | None]:
    after = _UNIT_AFTER.match(text, end)
    before = _WORD_BEFORE.search(text, max(0, start - 24), start)
    return (
        _singular(after.group(1)) if after else None,
        before.group(1).lower() if before else None,
    )


def _quantity(value: float, unit: str | None, before: str | None) -> Quantity:
    group = _UNIT_GROUP.get(unit) if unit is not None else None
    if group is None and before in ("€", "$", "£"):
        group = "money"
    if group is None and before is not None and _UNIT_GROUP.get(before) in ("limit", "money"):
        group = _UNIT_GROUP[before]  # "top 3", "budget 500"
    return Quantity(value, unit if group is not None else None, before, group)


_CONNECTORS: Final = _set("de da do del la le of am")


def _places(text: str, quoted_from: int = -1) -> Iterable[Place]:
    for match in _PROPER.finditer(text):
        words = [(word.start(), word.group(0)) for word in re.finditer(r"\S+", match.group(0))]
        weak = False
        if _SENTENCE_START.search(text, 0, match.start()):
            # The first word's capital may only mean that a sentence starts there
            # ("Audit Lille": Lille is the name; "Lisbon from Paris": perhaps).
            if len(words) > 1:
                words.pop(0)
            else:
                weak = True
        while words and (words[0][1] in _NOT_NAMES or words[0][1] in _CONNECTORS):
            words.pop(0)
        if not words or (len(words) == 1 and words[0][1].lower() in _UNIT_GROUP):
            continue  # nothing left, or a unit ("EUR")
        start = match.start() + words[0][0]
        before = _WORD_BEFORE.search(text, max(0, start - 24), start)
        name = " ".join(word for _, word in words).rstrip("-'")
        if len(name) < 2:
            continue  # "T-1042" is an id, not a place called "T"
        quoted = 0 <= quoted_from < start
        yield Place(name, before.group(1).lower() if before else None, weak, quoted)


# -- filling a schema ------------------------------------------------------------------------------

_LONG_TEXT_NAMES: Final = _set(
    "query task text question prompt message description request goal topic "
    "instructions content input summary body details answer"
)


@attrs.define
class _Drawer:
    """Draws argument values from the facts of a text, each fact used once if possible."""

    facts: Facts
    whole_text: bool = False
    # For answers (text.format): values the tools returned, by field name, used where a
    # property has the same name and the value fits; the text of free-form fields; and
    # every property filled, not only the required ones.
    known: Mapping[str, Any] = attrs.field(factory=dict)
    long_text: str | None = None
    complete: bool = False
    _used_places: set[str] = attrs.field(factory=set)
    _used_quantities: set[int] = attrs.field(factory=set)

    def place(self, role: str | None) -> str | None:
        """The place for ``role``: origin (after "from"), destination (after "to", "in"...),
        or None for any name. A sentence's first word counts as a place only for a role.
        The text's own words come before the results it quotes."""
        own = [place for place in self.facts.places if not place.quoted]
        quoted = [place for place in self.facts.places if place.quoted]
        for places in (own, quoted):
            found = self._place_among(places, role)
            if found is not None:
                return found
        return None

    def _place_among(self, places: Sequence[Place], role: str | None) -> str | None:
        strong = [place for place in places if not place.weak]
        weak = [place for place in places if place.weak]
        if role == "origin":
            # "Paris to Lisbon": the name before "to" that starts the sentence is the origin.
            wanted = [p for p in strong if p.preposition in _ORIGIN_PREPOSITIONS] + weak
            wanted += [p for p in strong if p.preposition not in _DESTINATION_PREPOSITIONS]
            wanted += strong
        elif role == "destination":
            wanted = [p for p in strong if p.preposition in _DESTINATION_PREPOSITIONS]
            wanted += [p for p in strong if p.preposition not in _ORIGIN_PREPOSITIONS] + weak
            wanted += strong  # a place after "from" is still a place ("Send from Faro")
        else:
            wanted = strong
        for place in wanted:
            if place.name not in self._used_places:
                self._used_places.add(place.name)
                return place.name
        return wanted[0].name if wanted else None

    def number(
        self,
        group: str | None,
        low: float | None,
        high: float | None,
        *,
        integer: bool,
        claim: bool = True,
    ) -> float | None:
        """The quantity meant for a parameter of ``group`` that fits the range; with
        ``claim`` it is not offered again while another one fits."""

        def fits(value: float) -> bool:
            return (
                (low is None or value >= low)
                and (high is None or value <= high)
                and (not integer or value == int(value))
            )

        quantities = self.facts.quantities
        candidates: list[tuple[int, float]] = []
        if group is not None:
            candidates = [(i, q.value) for i, q in enumerate(quantities) if q.group == group]
            if not candidates and group in ("nights", "days"):
                # A 2-night stay lasts 3 days, and the other way round.
                other, shift = ("days", -1) if group == "nights" else ("nights", 1)
                candidates = [
                    (i, q.value + shift) for i, q in enumerate(quantities) if q.group == other
                ]
        if not candidates:
            # A number that means nothing in particular ("limit 3", "level 2").
            candidates = [(i, q.value) for i, q in enumerate(quantities) if q.group is None]
        for index, value in candidates:
            if index not in self._used_quantities and fits(value):
                if claim:
                    self._used_quantities.add(index)
                return value
        for _, value in candidates:
            if fits(value):
                return value
        return None

    def date(self, end: bool) -> str | None:
        dates = self.facts.dates
        if not dates:
            return None
        if end:
            if len(dates) > 1:
                return dates[1].isoformat()
            stay = self.number("nights", 1, 365, integer=True, claim=False)
            return (dates[0] + datetime.timedelta(days=int(stay or 0))).isoformat()
        return dates[0].isoformat()


# When a name says several things ("max_price_per_night"), the first of these wins.
_GROUP_PRIORITY: Final = (
    "money",
    "people",
    "children",
    "rooms",
    "stars",
    "nights",
    "days",
    "weeks",
    "hours",
    "minutes",
    "percent",
    "limit",
)


def _parameter_group(name: str, description: str) -> str | None:
    """What a numeric parameter counts, from its name, else from "how many ..." in its
    description."""
    groups = {
        group
        for word in _words(name)
        if (group := _PARAMETER_GROUP.get(_singular(word)) or _PARAMETER_GROUP.get(word))
    }
    if not groups and "how many" in description.lower():
        groups = {
            group
            for word in _words(description)
            if (group := _UNIT_GROUP.get(_singular(word))) and group != "limit"
        }
    return next((group for group in _GROUP_PRIORITY if group in groups), None)


def _place_role(name: str, description: str) -> str | None:
    words = set(_words(name))
    if words & _ORIGIN_WORDS:
        return "origin"
    if words & _DESTINATION_WORDS:
        return "destination"
    lowered = description.lower()
    if re.search(r"\b(?:from|departure|origin|leave|leaving)\b", lowered) and not re.search(
        r"\bto\b", lowered
    ):
        return "origin"
    if re.search(r"\b(?:city|place|where|destination|location|country)\b", lowered):
        return "destination"
    return None


def _resolve(schema: Any, root: Mapping[str, Any]) -> Any:
    seen = 0
    while isinstance(schema, dict) and "$ref" in schema and seen < 32:
        ref = schema["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            return {}
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        schema, seen = target, seen + 1
    return schema


def _value_for(
    name: str, schema: Any, root: Mapping[str, Any], drawer: _Drawer, depth: int = 0
) -> Any:
    schema = _resolve(schema, root)
    if not isinstance(schema, dict) or depth > 8:
        return None
    if name in drawer.known and _fits(drawer.known[name], schema, root):
        return drawer.known[name]
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        options = schema["enum"]
        lowered = drawer.facts.text.lower()
        for option in options:
            if isinstance(option, str) and option.lower() in lowered:
                return option
        return options[0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf"):
        variants = schema.get(key)
        if isinstance(variants, list) and variants:
            non_null = [
                v for v in variants if _resolve(v, root).get("type") not in ("null", None)
            ] or variants
            inner = _resolve(non_null[0], root)
            if isinstance(inner, dict) and "description" not in inner and "description" in schema:
                inner = {**inner, "description": schema["description"]}
            return _value_for(name, inner, root, drawer, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "string":
        return _string_for(name, schema, drawer)
    if kind in ("integer", "number"):
        return _number_for(name, schema, drawer, integer=kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if kind == "array":
        minimum = schema.get("minItems", 1)
        items = schema.get("items", {})
        return [_value_for(name, items, root, drawer, depth + 1) for _ in range(max(1, minimum))][
            : schema.get("maxItems", max(1, minimum))
        ]
    if kind == "object" or "properties" in schema:
        return _object_for(schema, root, drawer, depth + 1)
    return _string_for(name, schema, drawer)


def _is_date(name: str, schema: Mapping[str, Any]) -> bool:
    if schema.get("format") == "date":
        return True
    words = _words(name)
    return bool(words) and (
        words[-1].endswith("date")
        or "date" in words
        or bool({"check", "checkin", "checkout"} & set(words))
    )


def _string_for(name: str, schema: Mapping[str, Any], drawer: _Drawer) -> str:
    lowered = name.lower()
    description = str(schema.get("description", ""))
    value: str | None = None
    fixed = _FORMATTED.get(str(schema.get("format")))
    if _is_date(name, schema) or schema.get("format") == "date-time":
        end = bool(set(_words(name)) & _END_WORDS)
        value = drawer.date(end) or "2026-01-01"
        if schema.get("format") == "date-time":
            value += "T00:00:00Z"
    elif fixed is not None:
        value = fixed
    elif (
        drawer.whole_text
        or lowered in _LONG_TEXT_NAMES
        or lowered.endswith(("_query", "_text", "_task"))
    ):
        value = (drawer.long_text or drawer.facts.text).strip() or name
    else:
        role = _place_role(name, description)
        if role is None and drawer.long_text is not None:
            value = drawer.long_text.strip() or name  # an answer's free text: the prose
        else:
            value = drawer.place(role) or drawer.facts.text.strip() or name
    minimum = schema.get("minLength", 0)
    maximum = schema.get("maxLength")
    if isinstance(minimum, int) and len(value) < minimum:
        value = value.ljust(minimum, "x")
    if isinstance(maximum, int) and len(value) > maximum:
        value = value[:maximum]
    return value


def _number_for(
    name: str, schema: Mapping[str, Any], drawer: _Drawer, *, integer: bool
) -> int | float:
    low = schema.get("minimum")
    high = schema.get("maximum")
    exclusive_low = schema.get("exclusiveMinimum")
    exclusive_high = schema.get("exclusiveMaximum")
    step = 1 if integer else 0.5
    if isinstance(exclusive_low, int | float):
        low = exclusive_low + step if low is None else max(low, exclusive_low + step)
    if isinstance(exclusive_high, int | float):
        high = exclusive_high - step if high is None else min(high, exclusive_high - step)
    group = _parameter_group(name, str(schema.get("description", "")))
    found = drawer.number(group, low, high, integer=integer)
    value: float
    if found is not None:
        value = found
    elif low is not None:
        value = low
    elif high is not None and high < 1:
        value = high
    else:
        value = 1
    multiple = schema.get("multipleOf")
    if isinstance(multiple, int | float) and multiple > 0:
        if integer and isinstance(multiple, int):
            # Integer arithmetic: a float loses exactness past 2**53 (10000000000000004).
            value = multiple * max(1, -(-math.ceil(value) // multiple))
            if high is not None and value > high:
                value = multiple * (math.floor(high) // multiple)
        else:
            value = multiple * max(1, -(-value // multiple))
            if high is not None and value > high:
                value = multiple * (high // multiple)
    # Whole numbers are written as integers, as models write them ("1", not "1.0"), also
    # for "type": "number" (some clients compare the JSON text).
    if integer or float(value).is_integer():
        return int(value)
    return float(value)


def _object_for(
    schema: Mapping[str, Any], root: Mapping[str, Any], drawer: _Drawer, depth: int
) -> dict[str, Any]:
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        return {}
    required = schema.get("required")
    names = list(required) if isinstance(required, list) else []
    if drawer.complete:
        names += [name for name in properties if name not in names]
    return {
        name: _value_for(name, properties.get(name, {}), root, drawer, depth)
        for name in names
        if isinstance(name, str)
    }


# Strings of a format the text cannot supply, written the same way every time.
_FORMATTED: Final = {
    "time": "00:00:00",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "duration": "P1D",
    "email": "someone@example.com",
    "uri": "https://example.com/",
    "hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
}


def _fits(value: Any, schema: Any, root: Mapping[str, Any], depth: int = 0) -> bool:
    """Whether ``value`` (a tool's result) validates against ``schema``: a small checker for
    what answers use, erring on no (then the value is drawn as usual)."""
    schema = _resolve(schema, root)
    if not isinstance(schema, dict) or depth > 8:
        return False
    if "const" in schema:
        return bool(value == schema["const"])
    if "enum" in schema:
        return value in schema["enum"] and not isinstance(value, dict | list)
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            return any(_fits(value, option, root, depth + 1) for option in schema[key])
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    return any(_fits_kind(value, k, schema, root, depth) for k in kinds)


def _fits_kind(value: Any, kind: Any, schema: Mapping[str, Any], root: Any, depth: int) -> bool:
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if kind in ("integer", "number"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if kind == "integer" and not (isinstance(value, int) or value.is_integer()):
            return False
        low, high = schema.get("minimum"), schema.get("maximum")
        above, below = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        return (
            (low is None or value >= low)
            and (high is None or value <= high)
            and (above is None or value > above)
            and (below is None or value < below)
            and "multipleOf" not in schema
        )
    if kind == "string":
        return (
            isinstance(value, str)
            and "pattern" not in schema
            and "format" not in schema
            and schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value))
        )
    if kind == "array":
        return (
            isinstance(value, list)
            and schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value))
            and all(_fits(item, schema.get("items", {}), root, depth + 1) for item in value)
        )
    if kind == "object":
        properties = schema.get("properties", {})
        return (
            isinstance(value, dict)
            and all(name in value for name in schema.get("required", []))
            and all(
                (name in properties and _fits(item, properties[name], root, depth + 1))
                or (name not in properties and schema.get("additionalProperties") is not False)
                for name, item in value.items()
            )
        )
    return False


def _flatten(value: Any, into: dict[str, Any], depth: int = 0) -> None:
    """Every field of a JSON value by name, the first occurrence winning."""
    if depth > 6:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            into.setdefault(str(key), item)
        for item in value.values():
            _flatten(item, into, depth + 1)
    elif isinstance(value, list):
        for item in value[:20]:
            _flatten(item, into, depth + 1)


def known_values(texts: Iterable[str]) -> dict[str, Any]:
    """The fields of the JSON objects among ``texts`` (tool outputs), by name."""
    known: dict[str, Any] = {}
    for text in texts:
        stripped = text.strip()
        if stripped[:1] in ("{", "["):
            try:
                _flatten(json.loads(stripped), known)
            except ValueError:
                continue
    return known


def answer_for_schema(
    schema: Any, text: str, *, prose: str, known: Mapping[str, Any] | None = None
) -> str:
    """An answer (JSON text) valid against ``schema`` (a ``text.format`` JSON Schema): each
    property filled from what the tools returned when a field of that name fits, else drawn
    from ``text`` as for arguments, free-form text fields getting ``prose``."""
    if not isinstance(schema, dict) or not schema:
        return "{}"
    drawer = _Drawer(Facts.read(text), known=dict(known or {}), long_text=prose, complete=True)
    value = _value_for("answer", schema, schema, drawer)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def arguments_for_schema(schema: Any, text: str, *, prefer_text: bool = False) -> str:
    """Arguments (JSON text) that validate against ``schema``, drawn from ``text``."""
    if not isinstance(schema, dict) or not schema:
        return "{}"
    drawer = _Drawer(Facts.read(text), whole_text=prefer_text)
    value = _object_for(schema, schema, drawer, 0)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# -- writing prose -----------------------------------------------------------------------------

LEAD_IN: Final = "Written by the local model (offline, rule-based) from what the tools returned:"
MAX_ITEMS: Final = 3  # list entries shown before "and N more"
MAX_LINES: Final = 24  # lines of quoted text
MAX_LINE: Final = 300  # characters of one quoted line
MAX_VALUE: Final = 80  # characters of one string value
MAX_FIELDS: Final = 10  # fields of one object
_UNITS: Final = {
    "eur": "EUR",
    "usd": "USD",
    "gbp": "GBP",
    "chf": "CHF",
    "c": "°C",
    "f": "°F",
    "h": "h",
    "min": "min",
    "km": "km",
    "kg": "kg",
    "pct": "%",
    "percent": "%",
}
_SENTENCE_END: Final = re.compile(r"[.!?](?=\s|$)")


def cut(text: str, limit: int) -> str:
    """``text`` at most ``limit`` characters long, cut at a sentence end if one is near,
    else at a word boundary, with an ellipsis; never inside a word."""
    text = text.strip()
    if len(text) <= limit:
        return text
    head = text[: limit + 1]
    ends = [match.end() for match in _SENTENCE_END.finditer(head) if match.end() <= limit]
    if ends and ends[-1] >= limit // 2:
        return head[: ends[-1]].rstrip() + " …"
    space = head.rfind(" ", 0, limit)
    if space <= 0:
        return head[:limit].rstrip() + "…"  # a single word longer than the limit
    return head[:space].rstrip(" ,;:-") + " …"


def _label(key: str) -> tuple[str, str | None]:
    """A field name as words, and the unit its suffix names (``price_eur``: price, EUR).
    A key that is one word stays as written (it may be a name: "North", "B")."""
    words = _words(key)
    if len(words) <= 1:
        return key, None
    unit = None
    if words[-1] in _UNITS:
        unit = _UNITS[words.pop()]
    return " ".join(words), unit


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "none"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:g}"
    if isinstance(value, int):
        return str(value)
    return cut(" ".join(str(value).split()), MAX_VALUE)


def _inline(value: Any) -> str:
    """A value inside a phrase: scalars as they are, short lists joined, the rest counted."""
    if isinstance(value, dict):
        if not value:
            return "none"
        if len(value) <= 4 and all(not isinstance(v, dict | list) for v in value.values()):
            return f"({_phrase(value)})"
        return f"{len(value)} fields"
    if isinstance(value, list):
        if not value:
            return "none"
        if all(not isinstance(item, dict | list) for item in value):
            shown = " / ".join(_scalar(item) for item in value[:MAX_ITEMS])
            more = len(value) - MAX_ITEMS
            return shown + (f" / and {more} more" if more > 0 else "")
        return f"{len(value)} entries"
    return _scalar(value)


def _phrase(fields: Mapping[str, Any]) -> str:
    """An object as ``key: value`` phrases, units after their values."""
    parts = []
    for key, value in list(fields.items())[:MAX_FIELDS]:
        label, unit = _label(str(key))
        shown = _inline(value)
        if unit and shown != "none":
            shown = f"{shown} {unit}"
        parts.append(f"{label} {shown}" if shown.startswith("(") else f"{label}: {shown}")
    if len(fields) > MAX_FIELDS:
        more = len(fields) - MAX_FIELDS
        parts.append(f"and {more} more field{'s' if more > 1 else ''}")
    return ", ".join(parts)


_NOTE_KEYS: Final = _set("note notes message warning error hint")


def render_json(value: Any) -> list[str]:
    """Lines of prose for a decoded JSON value."""
    if isinstance(value, dict):
        scalars = {
            k: v for k, v in value.items() if not isinstance(v, list | dict) and k not in _NOTE_KEYS
        }
        lines = [_phrase(scalars) + "."] if scalars else []
        for key, item in value.items():
            if key in _NOTE_KEYS and not isinstance(item, list | dict):
                lines.append(f"{_label(key)[0].capitalize()}: {_scalar(item)}")
            elif isinstance(item, list) and item and all(isinstance(i, dict) for i in item):
                lines.append(f"{_label(key)[0].capitalize()} ({len(item)}):")
                lines.extend(_bullets(item))
            elif isinstance(item, list | dict):
                lines.append(f"{_label(key)[0].capitalize()}: {_nested(item)}")
        return lines or ["(nothing)"]
    if isinstance(value, list):
        if value and all(isinstance(item, dict) for item in value):
            return _bullets(value)
        return [_inline(value)]
    return [_scalar(value)]


def _nested(value: Any) -> str:
    if isinstance(value, dict):
        return _phrase(value) or "none"
    return _inline(value)


def _bullets(items: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [f"- {_phrase(item)}" for item in items[:MAX_ITEMS]]
    if len(items) > MAX_ITEMS:
        lines.append(f"- and {len(items) - MAX_ITEMS} more")
    return lines


def render_output(text: str) -> list[str]:
    """Lines of prose for one tool output: JSON rendered, text quoted (cut if long)."""
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        try:
            decoded = json.loads(stripped)
        except ValueError:
            pass  # cut by the tool's output cap, or not JSON at all: quote it
        else:
            return render_json(decoded)
    if stripped.startswith(LEAD_IN):  # a worker's answer: our own words, said once
        stripped = stripped[len(LEAD_IN) :].strip()
    if not stripped:
        return ["(empty)"]
    kept: list[str] = []
    for line in stripped.splitlines():
        line = " ".join(line.split())
        if not line and (not kept or not kept[-1]):
            continue  # one blank line at most, none first
        if len(kept) == MAX_LINES:
            kept.append("…")
            break
        kept.append(cut(line, MAX_LINE))
    while not kept[-1]:
        kept.pop()
    return kept


def _tool_label(name: str) -> str:
    if name.startswith("delegate_to_"):
        return name.removeprefix("delegate_to_")
    return name


def summarise(outputs: Sequence[tuple[str, str]]) -> str:
    """The answer after tool outputs (``(tool name, output text)`` in call order): the
    lead-in, then one line per short output and a block per longer one."""
    lines = [LEAD_IN]
    for name, text in outputs:
        rendered = render_output(text)
        label = _tool_label(name)
        if len(rendered) == 1 and len(rendered[0]) <= 100:
            lines.append(f"{label}: {rendered[0]}")
        else:
            if lines[-1]:
                lines.append("")
            lines += [f"{label}:", *rendered, ""]
    while not lines[-1]:
        lines.pop()
    return "\n".join(lines)
