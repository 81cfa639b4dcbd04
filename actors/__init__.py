"""Actors: the Actor base, the agent actor owning one connection, planner and worker roles."""

from loguru import logger

logger.disable(__name__)
