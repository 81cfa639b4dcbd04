"""The generic local model's arguments and answers (issue 13, items 1 and 9): numbers with
their meaning, places by role, dates, whole numbers as integers; tool results as prose, cut
at word boundaries, with one lead-in saying the local model wrote it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from orchestrator.core.protocol.events import FunctionTool
from orchestrator.core.server.generic import LEAD_IN, cut, render_output, summarise
from orchestrator.core.server.models import arguments_for

from .test_models import tool_schemas


def _schema(**properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _arguments(schema: dict[str, Any], text: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(arguments_for(FunctionTool("tool", schema), text))
    return decoded


STRING: dict[str, Any] = {"type": "string"}
DATE: dict[str, Any] = {"type": "string", "format": "date"}
COUNT: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": 9}
FLIGHTS = _schema(origin=STRING, destination=STRING, date=DATE, travellers=COUNT)
STAY = _schema(city=STRING, check_in=DATE, check_out=DATE, nights=COUNT, adults=COUNT)


# -- whole numbers ----------------------------------------------------------------------------


def test_whole_numbers_are_written_as_integers_for_number_parameters():
    """A ``"type": "number"`` parameter gets ``300``, not ``300.0`` (the Codex CLI refused
    the float); fractions stay fractions, defaults and minimums too."""
    schema = _schema(
        budget={"type": "number", "description": "budget in EUR"},
        ratio={"type": "number", "minimum": 0.25, "maximum": 0.75},
        floor={"type": "number", "minimum": 2},
    )
    text = arguments_for(FunctionTool("plan", schema), "Keep it under 300 EUR, ratio 0.5.")
    assert '{"budget":300,"ratio":0.5,"floor":2}' == text


def _no_whole_floats(value: str) -> float:
    number = float(value)
    assert not number.is_integer(), f"{value} is a whole number written as a float"
    return number


@settings(max_examples=150)
@given(schema=tool_schemas, text=st.text(max_size=80))
def test_no_whole_number_is_ever_written_with_a_decimal_point(schema, text):
    """Whatever the schema and the text, a whole number is written as an integer."""
    arguments = arguments_for(FunctionTool("tool", schema), text)
    json.loads(arguments, parse_float=_no_whole_floats)


# -- numbers, places and dates by meaning ------------------------------------------------------


@pytest.mark.parametrize(
    "goal",
    [
        "Plan a 2-night trip to Porto from Paris for 1 person, leaving on 2026-06-02.",
        "Plan a 2-night trip from Paris to Porto for 1 person, leaving on 2026-06-02.",
        "From Paris to Porto on 2 June 2026, one person, 2 nights.",
        "Leaving Paris on June 2, 2026 for 2 nights in Porto, 1 traveller.",
    ],
)
def test_places_follow_from_and_to_in_either_order(goal):
    """Origin is the place after "from" (or "leaving"), destination the place after "to"
    or "in", whatever their order; the count of people is the number of people, not the
    first number; dates are read in ISO and written-out forms."""
    expected = {"origin": "Paris", "destination": "Porto", "date": "2026-06-02", "travellers": 1}
    assert expected == _arguments(FLIGHTS, goal)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "A 3-night stay in Lisbon for two adults from 2026-05-14.",
            {"check_in": "2026-05-14", "check_out": "2026-05-17", "nights": 3, "adults": 2},
        ),
        (
            "Lisbon from 2 June 2026 to June 5, 2026 for 4 people, 3 nights.",
            {"check_in": "2026-06-02", "check_out": "2026-06-05", "nights": 3, "adults": 4},
        ),
        (
            "Somewhere in Lisbon, 2026-05-14.",  # no count given: the schema's minimum
            {"check_in": "2026-05-14", "check_out": "2026-05-14", "nights": 1, "adults": 1},
        ),
    ],
)
def test_counts_and_dates_take_their_meaning_from_the_words_around_them(text, expected):
    """ "3-night" fills nights and "two adults" the adults; the end date is the second
    date, or the first plus the stay; the city is the place after "in"."""
    assert {"city": "Lisbon", **expected} == _arguments(STAY, text)


@pytest.mark.parametrize(
    ("schema", "text", "expected"),
    [
        (_schema(days=COUNT), "A 2-night trip to Rome", {"days": 3}),
        (_schema(nights=COUNT), "Five days in Rome", {"nights": 4}),
        (_schema(limit=COUNT, year={"type": "integer"}), "Top 3 films of 1999", {"limit": 3}),
        (
            _schema(max_price_per_night={"type": "number"}, guests=COUNT),
            "2 guests, at most 120 EUR a night",
            {"max_price_per_night": 120, "guests": 2},
        ),
        (
            _schema(passengers={"type": "integer", "description": "how many people travel"}),
            "Flights for 3 adults and 2 children",
            {"passengers": 3},
        ),
        (_schema(hours=COUNT), "Book the room for 2 hours at 10:30", {"hours": 2}),
    ],
)
def test_numbers_by_the_parameter_they_are_meant_for(schema, text, expected):
    """A number goes to the parameter its unit names (nights, people, money, hours, "top"),
    never a time or a date; nights and days convert; a number with another meaning is
    left alone."""
    arguments = _arguments(schema, text)
    assert expected == {key: arguments[key] for key in expected}


def test_arguments_are_deterministic():
    """The same text and schema give the same arguments, character for character."""
    goal = "Plan a 2-night trip to Porto from Paris for 1 person, leaving on 2026-06-02."
    tool = FunctionTool("search", FLIGHTS)
    assert arguments_for(tool, goal) == arguments_for(tool, goal)


# -- prose from results ---------------------------------------------------------------------

FLIGHT_RESULTS = {
    "from": "Paris",
    "to": "Lisbon",
    "date": "2026-05-14",
    "flights": [
        {"flight": f"XX{n}", "stops": 0, "price_eur": 60 + n, "duration_h": 2.0} for n in range(5)
    ],
    "note": "prices are per person",
    "filters": {"airline": None, "max_stops": 1},
}


def test_json_objects_become_phrases_and_lists_of_objects_short_bullets():
    """Scalars read as "key: value" phrases with their units, a list of objects as at
    most three bullets and "and N more", a nested object inline, a note as a sentence."""
    assert [
        "from: Paris, to: Lisbon, date: 2026-05-14.",
        "Flights (5):",
        "- flight: XX0, stops: 0, price: 60 EUR, duration: 2 h",
        "- flight: XX1, stops: 0, price: 61 EUR, duration: 2 h",
        "- flight: XX2, stops: 0, price: 62 EUR, duration: 2 h",
        "- and 2 more",
        "Note: prices are per person",
        "Filters: airline: none, max stops: 1",
    ] == render_output(json.dumps(FLIGHT_RESULTS))


def test_nested_values_are_summarised_not_dumped():
    """Deeper values are counted or joined, never printed as JSON."""
    lines = render_output(
        json.dumps(
            {
                "site": "Lille",
                "regions": {"North": {"B": 3, "C": 3}, "East": {"A": 1, "B": 2}},
                "tags": ["a", "b", "c", "d", "e"],
                "matrix": [[1, 2], [3, 4]],
            }
        )
    )
    text = "\n".join(lines)
    assert "site: Lille." == lines[0]
    assert "Regions: North (B: 3, C: 3), East (A: 1, B: 2)" in lines
    assert "Tags: a / b / c / and 2 more" in lines
    assert "Matrix: 2 entries" in lines
    assert "{" not in text
    assert '"' not in text


@settings(max_examples=200)
@given(
    text=st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300),
    limit=st.integers(5, 200),
)
def test_text_is_cut_only_between_words(text, limit):
    """A cut text is a prefix of the text that ends at a word or sentence boundary (or is
    one word longer than the limit, cut with an ellipsis), never longer than asked."""
    result = cut(text, limit)
    stripped = text.strip()
    if len(stripped) <= limit:
        assert stripped == result
        return
    assert result.endswith("…")
    kept = result.removesuffix("…").rstrip()
    assert stripped.startswith(kept)
    assert len(result) <= limit + 2
    if " " in stripped[: limit + 1].strip():
        following = stripped[len(kept) : len(kept) + 1]
        assert following == "" or following.isspace() or kept[-1:] in ".!?,;:-"


def test_long_words_and_broken_json_are_quoted_not_cut_inside_a_word():
    """Output that is not JSON (a tool's output cut at its byte cap, say) is quoted as
    text; a long line is cut at the last space before the limit."""
    broken = '{"hotels": [{"name": "Casa do Largo", "neighbourhood": "Alfama", "price' + " x" * 400
    (line,) = render_output(broken)
    assert line.endswith(" …")
    assert broken.startswith(line.removesuffix(" …"))
    assert len(line) <= 302


def test_the_lead_in_appears_once_even_when_answers_quote_answers():
    """A worker's answer quoted by the planner loses its own lead-in: the final answer
    says once that the local model wrote it, in its first line."""
    worker = summarise([("search_flights", json.dumps(FLIGHT_RESULTS))])
    assert worker.startswith(LEAD_IN + "\n")
    planner = summarise(
        [("delegate_to_flights", worker), ("delegate_to_hotels", "No hotel is free then.")]
    )
    assert 1 == planner.count(LEAD_IN)
    assert planner.startswith(LEAD_IN + "\n")
    assert "\nhotels: No hotel is free then." in planner
    assert "\nflights:\nsearch_flights:\nfrom: Paris, to: Lisbon" in planner
    assert "delegate_to_" not in planner


def test_summaries_are_deterministic():
    """The same outputs give the same answer."""
    outputs = [("a", json.dumps(FLIGHT_RESULTS)), ("b", "plain text")]
    assert summarise(outputs) == summarise(list(outputs))
