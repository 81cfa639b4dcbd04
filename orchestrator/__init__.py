"""Supervised teams of LLM agents over the OpenAI Responses API WebSocket mode, on trio."""

from loguru import logger

from .errors import *  # noqa: F403
from .errors import __all__ as _errors_all

logger.disable(__name__)

__version__ = "0.1.0"

__all__ = [*_errors_all, "__version__"]
