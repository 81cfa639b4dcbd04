"""Model names: which the service offers (as far as this version knows) and which the embedded
server reads as its own.

Only used for messages: a run never refuses a model name it does not know (the service may
have models newer than this list). Offline, an unknown name gets a warning, because the
embedded server answers whatever the name; live, the service's ``model_not_found`` becomes
``error[model.not_found]`` naming the agent and the model.
"""

from __future__ import annotations

import difflib
import re
from typing import Final

__all__ = ["KNOWN_MODELS", "closest_model", "is_known_model", "is_local_model"]

# Models of the Responses API, without their dated snapshots (gpt-4.1-2025-04-14).
KNOWN_MODELS: Final = frozenset(
    {
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "gpt-5-pro",
        "gpt-5-codex",
        "gpt-5-chat-latest",
        "gpt-5.1",
        "gpt-5.1-mini",
        "gpt-5.1-codex",
        "gpt-5.1-codex-mini",
        "gpt-5.1-chat-latest",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "gpt-4o",
        "gpt-4o-mini",
        "chatgpt-4o-latest",
        "gpt-4-turbo",
        "gpt-4",
        "gpt-3.5-turbo",
        "gpt-oss-120b",
        "gpt-oss-20b",
        "o1",
        "o1-pro",
        "o1-mini",
        "o3",
        "o3-pro",
        "o3-mini",
        "o3-deep-research",
        "o4-mini",
        "o4-mini-deep-research",
        "codex-mini-latest",
        "computer-use-preview",
    }
)
_SNAPSHOT: Final = re.compile(r"-\d{4}-\d{2}-\d{2}$")
# The embedded server picks its model by these words in the name (server.models).
_LOCAL_WORDS: Final = ("echo", "scripted", "generic", "local")


def is_local_model(name: str) -> bool:
    """Whether ``name`` is meant for the embedded server (``local-echo``, ``scripted``...)."""
    lowered = name.lower()
    return any(word in lowered for word in _LOCAL_WORDS)


def is_known_model(name: str) -> bool:
    """Whether ``name`` is a model of the service this version knows, a dated snapshot of one,
    or a fine-tuned model (``ft:...``, not checkable)."""
    return name.startswith("ft:") or _SNAPSHOT.sub("", name) in KNOWN_MODELS


def closest_model(name: str) -> str | None:
    """The known model ``name`` most likely misspells, if any."""
    matches = difflib.get_close_matches(name, sorted(KNOWN_MODELS), n=1, cutoff=0.75)
    return matches[0] if matches else None
