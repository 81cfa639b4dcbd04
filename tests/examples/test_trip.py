"""The trip planner example: its tools on the bundled data, and what the model sees and sends."""

from __future__ import annotations

import datetime
import json

import pytest

from actors.tools import ToolSpec
from orchestrator.core.server.generic import LEAD_IN
from orchestrator.core.server.models import arguments_for
from orchestrator.examples.trip import tools
from plans import load_plan

from .offline import delegate_tool, run_planner
from .test_plans import PLANS

PLAN = load_plan(PLANS["trip"])
GOAL = PLAN.goal or ""
THURSDAY = datetime.date(2026, 5, 14)


def spec(name: str) -> ToolSpec:
    return ToolSpec.from_callable(getattr(tools, name))


# -- the data ----------------------------------------------------------------------------------


def test_data_sets_are_small_and_cover_several_cities():
    """Each data set decodes into its typed records and holds 10-30 entries."""
    assert 10 <= len(tools.flights()) <= 30
    assert 10 <= len(tools.hotels()) <= 30
    assert 10 <= len(tools.activities()) <= 30
    assert 8 == len(tools.climate())
    assert all(
        12 == len(c.high_c) == len(c.low_c) == len(c.rain_days) for c in tools.climate().values()
    )
    assert len({hotel.city for hotel in tools.hotels()}) >= 5
    assert len({activity.city for activity in tools.activities()}) >= 5


# -- search_flights ----------------------------------------------------------------------------


def test_flights_on_a_thursday_cheapest_first():
    """Only flights operating that weekday, cheapest first, priced for the whole party."""
    result = tools.search_flights("Lisbon", "Paris", THURSDAY, 2)
    assert "Thursday" == result["weekday"]
    numbers = [f["flight"] for f in result["flights"]]
    assert "TP433" not in numbers  # flies on Fridays and Sundays only
    assert "TO7602" == numbers[0]
    prices = [f["price_eur"] for f in result["flights"]]
    assert sorted(prices) == prices
    assert all(f["total_eur"] == 2 * f["price_eur"] for f in result["flights"])
    assert "more" not in result  # all five that fly on Thursdays are shown
    friday = tools.search_flights("Lisbon", "Paris", THURSDAY + datetime.timedelta(days=1), 2)
    assert "TP433" in [f["flight"] for f in friday["flights"]]


def test_flights_take_airport_codes_in_any_case():
    """Cities may be given as airport codes or in lower case."""
    by_name = tools.search_flights("Lisbon", "Paris", THURSDAY, 1)
    assert by_name == tools.search_flights("lis", "PAR", THURSDAY, 1)
    assert by_name == tools.search_flights("LISBON", "ory", THURSDAY, 1)


def test_flights_say_which_days_a_route_flies():
    """A route without a flight that day gets a note naming the days it flies."""
    monday = datetime.date(2026, 5, 11)
    result = tools.search_flights("Porto", "Paris", monday, 1)
    assert [] == result["flights"]
    assert "Tuesday, Thursday, Saturday" in result["note"]


def test_flights_without_a_route_or_a_city_get_a_note():
    """No route: the note lists where the origin flies; unknown city: the known cities."""
    no_route = tools.search_flights("Rome", "Lisbon", THURSDAY, 1)
    assert [] == no_route["flights"]
    assert "from Lisbon: Paris, Porto" in no_route["note"]
    unknown = tools.search_flights("Atlantis", "Paris", THURSDAY, 1)
    assert [] == unknown["flights"]
    assert "'Atlantis'" in unknown["note"]
    assert "Lisbon" in unknown["note"]


# -- search_hotels -----------------------------------------------------------------------------


def test_hotels_booked_on_some_night_are_left_out():
    """Casa do Largo is booked 13-16 May: gone for 14-16 May, back a week later."""
    stay = tools.search_hotels("Lisbon", THURSDAY, 2, 2)
    names = [h["name"] for h in stay["hotels"]]
    assert "Casa do Largo" not in names
    assert 1 == stay["booked_out"]
    assert "2026-05-16" == stay["check_out"]
    later = tools.search_hotels("Lisbon", datetime.date(2026, 5, 21), 2, 2, 150)
    assert "Casa do Largo" in [h["name"] for h in later["hotels"]]


def test_hotels_best_rated_first_with_rooms_for_everyone():
    """Sorted by rating; a party larger than a room books several rooms."""
    result = tools.search_hotels("Lisbon", THURSDAY, 3, 3)
    ratings = [h["rating"] for h in result["hotels"]]
    assert sorted(ratings, reverse=True) == ratings
    for hotel in result["hotels"]:
        assert hotel["total_eur"] == hotel["price_per_night_eur"] * hotel["rooms"] * 3
    memmo = next(h for h in result["hotels"] if h["name"] == "Memmo Alfama")
    assert 2 == memmo["rooms"]  # two guests per room


def test_hotels_nothing_found_says_why():
    """A price cap below every room, or a city without hotels, gets a note."""
    cheap = tools.search_hotels("Lisbon", THURSDAY, 2, 2, max_price_per_night=40)
    assert [] == cheap["hotels"]
    assert "from 62" in cheap["note"]
    assert "unknown city" in tools.search_hotels("Gotham", THURSDAY, 2, 2)["note"]


# -- search_activities and typical_weather -----------------------------------------------------


def test_activities_filtered_by_interest_and_opening_day():
    """Interests keep only their categories; a day drops what is closed then."""
    everything = tools.search_activities("Lisbon")
    assert tools.MAX_RESULTS == len(everything["activities"])
    assert 5 == everything["more"]
    food = tools.search_activities("Lisbon", ["food"])
    assert {"food"} == {a["category"] for a in food["activities"]}
    monday = tools.search_activities("Lisbon", ["culture"], datetime.date(2026, 5, 11))
    assert "Jeronimos Monastery" not in [a["name"] for a in monday["activities"]]
    thursday = tools.search_activities("Lisbon", ["culture"], THURSDAY)
    assert "Jeronimos Monastery" in [a["name"] for a in thursday["activities"]]


def test_activities_nothing_found_gets_a_note():
    """No match is a note, not an error."""
    result = tools.search_activities("Amsterdam", ["nightlife"])
    assert [] == result["activities"]
    assert "note" in result


def test_weather_is_the_month_normal_with_advice():
    """May in Lisbon is mild; January in Berlin is cold."""
    assert {
        "city": "Lisbon",
        "month": "May",
        "high_c": 23,
        "low_c": 14,
        "rain_days": 6,
        "advice": "mild: light layers",
    } == tools.typical_weather("Lisbon", THURSDAY)
    assert "warm coat" in tools.typical_weather("Berlin", datetime.date(2026, 1, 10))["advice"]
    assert "note" in tools.typical_weather("Atlantis", THURSDAY)


# -- what the model sees and sends -------------------------------------------------------------


def test_schemas_the_model_sees():
    """Destination first, dates as format: date, counts bounded, optional filters optional."""
    flights = spec("search_flights")
    assert flights.strict
    assert ["destination", "origin", "date", "passengers"] == flights.parameters["required"]
    properties = flights.parameters["properties"]
    assert {"type": "string", "format": "date"} == {
        k: v for k, v in properties["date"].items() if k != "description"
    }
    assert (1, 9) == (properties["passengers"]["minimum"], properties["passengers"]["maximum"])

    hotels = spec("search_hotels")
    assert ["city", "check_in", "nights", "guests"] == hotels.parameters["required"]
    assert "max_price_per_night" in hotels.parameters["properties"]

    activities = spec("search_activities")
    assert ["city"] == activities.parameters["required"]
    interests = activities.parameters["properties"]["interests"]["anyOf"][0]
    assert {"culture", "food", "outdoors", "nightlife", "family"} == set(interests["items"]["enum"])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "search_flights",
            {"destination": "Lisbon", "origin": "Paris", "date": "2026-05-14", "passengers": 2},
        ),
        ("search_hotels", {"city": "Lisbon", "check_in": "2026-05-14", "nights": 2, "guests": 2}),
        ("search_activities", {"city": "Lisbon"}),
        ("typical_weather", {"city": "Lisbon", "date": "2026-05-14"}),
    ],
)
def test_generic_model_arguments_from_the_goal_hit_data(name, expected):
    """Offline, the arguments drawn from the default goal are the intended ones and find
    something: the model's call decodes and the tool returns results, not a note."""
    tool = spec(name)
    arguments = arguments_for(tool.to_wire(), GOAL)
    assert expected == json.loads(arguments)
    decoded = tool.decode_arguments(arguments)
    result = tools.__dict__[name](**{k: getattr(decoded, k) for k in decoded.__struct_fields__})
    assert "note" not in result
    assert any(isinstance(v, list) and v for v in result.values()) or name == "typical_weather"


@pytest.mark.parametrize(
    "goal",
    [
        "Plan a 2-night trip to Porto from Paris for 1 person, leaving on 2026-06-02.",
        "Plan a 2-night trip from Paris to Porto for 1 person, leaving on 2026-06-02.",
    ],
)
def test_generic_model_arguments_follow_the_goal_in_either_order(goal):
    """The README's own goal, with "from" and "to" in either order: the flight goes from
    Paris to Porto for one passenger, the hotel is in Porto for 2 nights and 1 guest, and
    both find something."""
    flights = json.loads(arguments_for(spec("search_flights").to_wire(), goal))
    hotels = json.loads(arguments_for(spec("search_hotels").to_wire(), goal))
    assert {
        "destination": "Porto",
        "origin": "Paris",
        "date": "2026-06-02",
        "passengers": 1,
    } == flights
    assert {"city": "Porto", "check_in": "2026-06-02", "nights": 2, "guests": 1} == hotels
    june_2 = datetime.date(2026, 6, 2)
    assert tools.search_flights("Porto", "Paris", june_2, 1)["flights"]
    assert tools.search_hotels("Porto", june_2, 2, 1)["hotels"]


def test_delegation_passes_the_goal_to_workers():
    """The planner's generic delegate_to_<worker>(task) call carries the goal verbatim."""
    for worker in PLAN.workers:
        arguments = arguments_for(delegate_tool(worker.name, worker.description), GOAL)
        assert {"task": GOAL} == json.loads(arguments)


async def test_offline_run_reaches_every_worker_and_finishes():
    """Planner, three workers, one round of tool calls each, then the planner's summary."""
    run = await run_planner(PLAN, GOAL)
    assert {"flights", "hotels", "activities"} == set(run.workers)
    assert 8 == run.turns
    assert "TO7602" == run.workers["flights"].outputs["search_flights"]["flights"][0]["flight"]
    assert run.workers["hotels"].outputs["search_hotels"]["hotels"]
    assert "May" == run.workers["activities"].outputs["typical_weather"]["month"]
    for name in ("flights", "hotels", "activities"):
        assert f"\n{name}:" in run.answer
    # Prose, not JSON; said once to be the local model's.
    assert run.answer.startswith(LEAD_IN)
    assert 1 == run.answer.count(LEAD_IN)
    assert '{"' not in run.answer
    assert "- flight: TO7602, airline: Transavia, from: ORY, to: LIS" in run.answer
