"""Tools of the trip planner: searches over small data sets bundled in ``data/``.

The data are a weekly flight schedule, hotels with their booked dates, activities with the
weekdays they close, and monthly climate normals for eight European cities. Each file is read
once, on first use. Every tool is read-only and returns a compact JSON-ready dict: at most
``MAX_RESULTS`` entries, best first, and a ``note`` instead of an error when nothing matches,
so that a model can adjust its next call. Cities may be given by name or airport code, in any
case (``lisbon``, ``LIS``).
"""

from __future__ import annotations

import calendar
import datetime
import functools
import math
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec

from actors.tools import tool

__all__ = [
    "MAX_RESULTS",
    "Interest",
    "search_activities",
    "search_flights",
    "search_hotels",
    "typical_weather",
]

MAX_RESULTS: Final = 5
DATA: Final = Path(__file__).with_name("data")

Interest = Literal["culture", "food", "outdoors", "nightlife", "family"]

Passengers = Annotated[int, msgspec.Meta(ge=1, le=9)]
Nights = Annotated[int, msgspec.Meta(ge=1, le=30)]
Guests = Annotated[int, msgspec.Meta(ge=1, le=8)]
Price = Annotated[float, msgspec.Meta(gt=0)]

_T = TypeVar("_T")


# -- the data sets -----------------------------------------------------------------------------


class Flight(msgspec.Struct, frozen=True, kw_only=True):
    """One scheduled flight; ``days`` are ISO weekdays (1 = Monday) it operates on."""

    flight: str
    airline: str
    origin: str
    origin_airport: str
    destination: str
    destination_airport: str
    departure: str
    arrival: str
    stops: int
    days: tuple[int, ...]
    price_eur: int


class Hotel(msgspec.Struct, frozen=True, kw_only=True):
    """One hotel; ``unavailable`` holds booked ``[first night, day after last night)`` ranges."""

    name: str
    city: str
    neighbourhood: str
    stars: int
    rating: float
    price_per_night_eur: int
    max_guests: int
    amenities: tuple[str, ...]
    unavailable: tuple[tuple[datetime.date, datetime.date], ...]


class Activity(msgspec.Struct, frozen=True, kw_only=True):
    """One activity; ``closed`` are ISO weekdays it does not run on."""

    name: str
    city: str
    category: Interest
    duration_h: float
    price_eur: int
    rating: float
    closed: tuple[int, ...]


class Climate(msgspec.Struct, frozen=True, kw_only=True):
    """Monthly climate normals of one city, January first."""

    high_c: tuple[int, ...]
    low_c: tuple[int, ...]
    rain_days: tuple[int, ...]


def _load(name: str, kind: type[_T]) -> _T:
    return msgspec.json.decode((DATA / name).read_bytes(), type=kind)


@functools.cache
def flights() -> tuple[Flight, ...]:
    """The bundled flight schedule."""
    return _load("flights.json", tuple[Flight, ...])


@functools.cache
def hotels() -> tuple[Hotel, ...]:
    """The bundled hotels."""
    return _load("hotels.json", tuple[Hotel, ...])


@functools.cache
def activities() -> tuple[Activity, ...]:
    """The bundled activities."""
    return _load("activities.json", tuple[Activity, ...])


@functools.cache
def climate() -> dict[str, Climate]:
    """The bundled climate normals, by city."""
    return _load("weather.json", dict[str, Climate])


@functools.cache
def _city_names() -> dict[str, str]:
    """Every spelling we accept (name or airport code, casefolded) -> the city's name."""
    names: dict[str, str] = {"par": "Paris"}  # the metropolitan code covers CDG and ORY
    for flight in flights():
        names[flight.origin_airport.casefold()] = flight.origin
        names[flight.destination_airport.casefold()] = flight.destination
    for city in {*climate(), *(h.city for h in hotels()), *(a.city for a in activities())}:
        names[city.casefold()] = city
    return names


def _city(name: str) -> str | None:
    return _city_names().get(name.strip().casefold())


def _unknown_city(name: str) -> str:
    known = sorted(set(_city_names().values()))
    return f"unknown city {name[:60]!r}; known cities: {', '.join(known)}"


# -- the tools ---------------------------------------------------------------------------------


@tool(side_effect="read_only", timeout=10)
def search_flights(
    destination: str, origin: str, date: datetime.date, passengers: Passengers
) -> dict[str, Any]:
    """Search direct and one-stop flights between two cities on a date, cheapest first.

    Args:
        destination: the city to fly to, e.g. Lisbon (name or airport code).
        origin: the city to fly from, e.g. Paris (name or airport code).
        date: the day of departure, YYYY-MM-DD.
        passengers: how many people travel; prices are per person and in total.
    """
    query: dict[str, Any] = {"from": origin, "to": destination, "date": date.isoformat()}
    start, end = _city(origin), _city(destination)
    if start is None or end is None:
        return {
            **query,
            "flights": [],
            "note": _unknown_city(origin if start is None else destination),
        }
    weekday = date.isoweekday()
    route = [f for f in flights() if f.origin == start and f.destination == end]
    found = sorted((f for f in route if weekday in f.days), key=lambda f: f.price_eur)
    result: dict[str, Any] = {
        "from": start,
        "to": end,
        "date": date.isoformat(),
        "weekday": date.strftime("%A"),
        "flights": [
            {
                "flight": f.flight,
                "airline": f.airline,
                "from": f.origin_airport,
                "to": f.destination_airport,
                "departure": f.departure,
                "arrival": f.arrival,
                "stops": f.stops,
                "price_eur": f.price_eur,
                "total_eur": f.price_eur * passengers,
            }
            for f in found[:MAX_RESULTS]
        ],
    }
    if len(found) > MAX_RESULTS:
        result["more"] = len(found) - MAX_RESULTS
    if not found:
        if route:
            days = sorted({d for f in route for d in f.days})
            result["note"] = f"no flight on {date.strftime('%A')}s; this route flies on " + (
                ", ".join(calendar.day_name[d - 1] for d in days)
            )
        else:
            served = sorted({f.destination for f in flights() if f.origin == start})
            result["note"] = f"no flights from {start} to {end}; from {start}: " + (
                ", ".join(served) or "none"
            )
    return result


@tool(side_effect="read_only", timeout=10)
def search_hotels(
    city: str,
    check_in: datetime.date,
    nights: Nights,
    guests: Guests,
    max_price_per_night: Price | None = None,
) -> dict[str, Any]:
    """Search hotels with rooms free for every night of a stay, best rated first.

    Args:
        city: where to stay, e.g. Lisbon.
        check_in: the day of arrival, YYYY-MM-DD.
        nights: how many nights to stay.
        guests: how many people; several rooms are booked when one is too small.
        max_price_per_night: an optional cap on the price of one room per night, in euros.
    """
    check_out = check_in + datetime.timedelta(days=nights)
    stay = {"check_in": check_in.isoformat(), "check_out": check_out.isoformat(), "nights": nights}
    name = _city(city)
    if name is None:
        return {"city": city, **stay, "hotels": [], "note": _unknown_city(city)}
    in_city = [h for h in hotels() if h.city == name]
    free = [
        h
        for h in in_city
        if not any(start < check_out and check_in < end for start, end in h.unavailable)
    ]
    affordable = [
        h
        for h in free
        if max_price_per_night is None or h.price_per_night_eur <= max_price_per_night
    ]
    affordable.sort(key=lambda h: (-h.rating, h.price_per_night_eur))
    result: dict[str, Any] = {
        "city": name,
        **stay,
        "guests": guests,
        "hotels": [_offer(hotel, guests, nights) for hotel in affordable[:MAX_RESULTS]],
    }
    if len(affordable) > MAX_RESULTS:
        result["more"] = len(affordable) - MAX_RESULTS
    if booked := len(in_city) - len(free):
        result["booked_out"] = booked
    if not affordable:
        if not in_city:
            result["note"] = f"no hotels in {name} in this data set"
        elif not free:
            result["note"] = f"every hotel in {name} is booked on some night of this stay"
        else:
            cheapest = min(h.price_per_night_eur for h in free)
            result["note"] = f"nothing at or under {max_price_per_night:g} EUR; from {cheapest}"
    return result


def _offer(hotel: Hotel, guests: int, nights: int) -> dict[str, Any]:
    """A hotel as offered for a stay: the rooms the guests need and the total price."""
    rooms = math.ceil(guests / hotel.max_guests)
    return {
        "name": hotel.name,
        "neighbourhood": hotel.neighbourhood,
        "stars": hotel.stars,
        "rating": hotel.rating,
        "price_per_night_eur": hotel.price_per_night_eur,
        "rooms": rooms,
        "total_eur": hotel.price_per_night_eur * rooms * nights,
        "amenities": list(hotel.amenities),
    }


@tool(side_effect="read_only", timeout=10)
def search_activities(
    city: str, interests: list[Interest] | None = None, day: datetime.date | None = None
) -> dict[str, Any]:
    """Search things to do in a city, best rated first.

    Args:
        city: where, e.g. Lisbon.
        interests: keep only these categories (default: all of them).
        day: keep only activities open on this day, YYYY-MM-DD (default: any day).
    """
    name = _city(city)
    if name is None:
        return {"city": city, "activities": [], "note": _unknown_city(city)}
    wanted = set(interests) if interests else None
    found = [
        a
        for a in activities()
        if a.city == name
        and (wanted is None or a.category in wanted)
        and (day is None or day.isoweekday() not in a.closed)
    ]
    found.sort(key=lambda a: (-a.rating, a.price_eur))
    result: dict[str, Any] = {
        "city": name,
        "activities": [
            {
                "name": a.name,
                "category": a.category,
                "duration_h": a.duration_h,
                "price_eur": a.price_eur,
                "rating": a.rating,
            }
            for a in found[:MAX_RESULTS]
        ],
    }
    if len(found) > MAX_RESULTS:
        result["more"] = len(found) - MAX_RESULTS
    if not found:
        result["note"] = f"no matching activities in {name}; try fewer interests or another day"
    return result


@tool(side_effect="read_only", timeout=10)
def typical_weather(city: str, date: datetime.date) -> dict[str, Any]:
    """The usual weather of a city in the month of a date (climate normals, not a forecast).

    Args:
        city: which city, e.g. Lisbon.
        date: any day of the month of interest, YYYY-MM-DD.
    """
    name = _city(city)
    normals = climate().get(name) if name is not None else None
    if name is None or normals is None:
        return {"city": city, "note": _unknown_city(city)}
    month = date.month - 1
    high, low, rain = normals.high_c[month], normals.low_c[month], normals.rain_days[month]
    advice = []
    if high >= 27:
        advice.append("hot afternoons: sun cream and water")
    if low <= 5:
        advice.append("cold nights: a warm coat")
    if rain >= 9:
        advice.append("frequent rain: an umbrella")
    return {
        "city": name,
        "month": date.strftime("%B"),
        "high_c": high,
        "low_c": low,
        "rain_days": rain,
        "advice": "; ".join(advice) or "mild: light layers",
    }
