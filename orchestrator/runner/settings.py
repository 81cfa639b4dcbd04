"""``RunSettings``: how a run reaches its model and copes with trouble."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from orchestrator.core.connection import ConnectionSettings
from orchestrator.core.logging import Secret
from orchestrator.core.rules import Transport
from orchestrator.core.session import ModelSettings
from orchestrator.jobs.resume import DEFAULT_MAX_RECOVERIES

if TYPE_CHECKING:
    from plans import Plan

__all__ = ["RunSettings", "connection_settings"]


@attrs.frozen(kw_only=True)
class RunSettings:
    """How a run reaches its model and copes with trouble; every field has a default.

    Attributes:
        api_key: the service key; default ``OPENAI_API_KEY``. Without any key the run uses
            the embedded server in-process (unless ``offline=False``).
        base_url: a compatible endpoint (``https://host/v1`` or ``wss://host/v1/responses``);
            default the plan's ``settings.base_url``, then the service.
        offline: force the embedded server (True) or the network (False).
        transport: how agents reach the endpoint: ``websocket`` (WebSocket mode), ``http``
            (one ``POST`` per turn, server-sent events) or ``auto`` (WebSocket, going on over
            HTTP when the endpoint has none); default ``connection.transport``, then the
            plan's ``settings.transport``, then ``websocket`` for the OpenAI service and
            ``auto`` for any other endpoint.
        connection: every agent's connection settings (timeouts, sizes, rotation, backoff).
        model: per-turn model settings for every agent (reasoning, temperature...), under the
            plan's own ``[settings]`` and each agent's.
        restart_intensity, restart_period: the supervisor's restart limit.
        max_recoveries: consecutive crashes without progress after which a job is ``dead``
            instead of resumed.
        allow_budget_change: accept a resume with a plan whose budgets differ (the way to
            give a job that ran out of budget more of it).
        requeue_on_stop: a job stopped by ``stop`` (or by cancelling the caller) goes back
            to the queue, released, for another worker to take at once, instead of ending
            ``interrupted`` (a worker shutting down; the result still says ``interrupted``).
    """

    api_key: str | Secret | None = attrs.field(default=None, repr=False)
    base_url: str | None = None
    offline: bool | None = None
    transport: Transport | None = None
    connection: ConnectionSettings = attrs.field(factory=ConnectionSettings)
    model: ModelSettings | None = None
    restart_intensity: int = 3
    restart_period: float = 60.0
    max_recoveries: int = DEFAULT_MAX_RECOVERIES
    allow_budget_change: bool = False
    requeue_on_stop: bool = False


def connection_settings(settings: RunSettings, plan: Plan) -> ConnectionSettings:
    """Every agent's connection settings, with the transport the run asks for: the run's
    own, else its connection settings', else the plan's (``None`` lets the endpoint decide)."""
    connection = settings.connection
    transport = settings.transport or connection.transport or plan.settings.transport
    if transport == connection.transport:
        return connection
    return attrs.evolve(connection, transport=transport)
