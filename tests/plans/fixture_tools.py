"""Tool functions that test plans reference by import path (``tests.plans.fixture_tools:...``)."""

from __future__ import annotations

NOT_CALLABLE = 3


def search(query: str) -> str:
    """Search the web."""
    return f"results for {query}"


def fetch(url: str) -> str:
    """Fetch a page."""
    return f"page {url}"


def search_hotels(city: str) -> str:
    """Search hotels."""
    return f"hotels in {city}"


def untyped(query):  # a mistake validation must catch: the model could not be told the type
    """Search without saying what a query is."""
    return query


def opaque(query: str, options: object) -> str:
    """Search with options no JSON schema can describe."""
    return query
