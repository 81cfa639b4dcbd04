"""The whole exception tree of the project.

This module imports only ``orchestrator.core.redaction`` (which imports nothing of ours), so every
layer may import it. Every message is redacted when the error is made: text from a server or
a peer that quotes a key (``invalid key sk-...``) never reaches a log, a report or a repr.
The tree:

    OrchestratorError
    ├── ProtocolError ── LocalProtocolError (our bug) / RemoteProtocolError (peer sent garbage)
    ├── ConnectionLost(code, reason, retryable)   the peer or the network broke the socket
    ├── HandshakeRejected(status)                  the server refused the WebSocket upgrade
    │   └── AuthenticationError                    401/403: never retried
    ├── ServerError(code, message, status, param)  an ``error`` event or a failed response
    ├── TurnFailed                                 a turn could not be completed, with the cause
    ├── ConfigurationError(ValueError)             bad settings (URL, limits, key)
    ├── PlanError(ValueError)                      a plan file or plan object is invalid
    ├── ToolError(tool, call_id)
    │   ├── ToolArgumentsInvalid ── ArgumentsRejected(code)   the model's arguments
    │   ├── ToolTimedOut / ToolCallEnded
    │   ├── ToolDefinitionError                    a callable that cannot be a tool
    │   └── ToolRepairBudgetExceeded               the same mistake once too often
    ├── PathOutsideWorkspace(ValueError)           confine() refused a path
    ├── BudgetExceeded(budget, limit, used)
    ├── OutputError(ValueError) / OutputMismatch   an output type that cannot be used /
    │                                              a text that is not of it
    ├── OutputInvalid(agent, output, error)         an answer not of the declared output type
    ├── StepsFailed(failed)                        steps of a run failed for good
    ├── ActorDead(name) / DeliveryTimeout / UnknownRecipient
    ├── RestartLimitReached(child, restarts, window)
    ├── JobError(code)                              a durable job cannot do what was asked
    │   ├── JobNotFound / JobNotResumable / JobRunning / PlanDiverged
    │   ├── CallsParked(calls)                     calls in doubt: a person must decide
    │   └── JournalError                            its journal cannot be written: it stops
    │       ├── StorageUnavailable                  disk full, read-only, database down
    │       └── JobLost                             another owner took the job (fenced out)
    └── InternalError                               a bug in this project

Each error says what it is with ``code``, a machine-readable name in our namespace
(``tool.repair_budget``, ``job.lost``...), which the runner and the command line report as
they are. Two classes carry the peer's code under that name instead: ``ConnectionLost.code``
is the WebSocket close code, ``ServerError.code`` the service's error code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.core.redaction import redact

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "ActorDead",
    "ArgumentsRejected",
    "AuthenticationError",
    "BudgetExceeded",
    "CallsParked",
    "ConfigurationError",
    "ConnectionLost",
    "DeliveryTimeout",
    "HandshakeRejected",
    "InternalError",
    "JobError",
    "JobLost",
    "JobNotFound",
    "JobNotResumable",
    "JobRunning",
    "JournalError",
    "LocalProtocolError",
    "OrchestratorError",
    "OutputError",
    "OutputInvalid",
    "OutputMismatch",
    "PathOutsideWorkspace",
    "PlanDiverged",
    "PlanError",
    "ProtocolError",
    "RemoteProtocolError",
    "RestartLimitReached",
    "ServerError",
    "StepsFailed",
    "StorageUnavailable",
    "ToolArgumentsInvalid",
    "ToolCallEnded",
    "ToolDefinitionError",
    "ToolError",
    "ToolRepairBudgetExceeded",
    "ToolTimedOut",
    "TurnFailed",
    "UnknownRecipient",
]


class OrchestratorError(Exception):
    """Base class of every error this project raises on purpose.

    Text arguments are redacted on the way in, so ``str``, ``repr`` and ``args`` never hold
    a credential. ``code`` names the error for machines (see the module docstring).
    """

    code: Any = "run.failed"

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(arg) if isinstance(arg, str) else arg for arg in args))


class ProtocolError(OrchestratorError):
    """The wire protocol was violated. See the two subclasses for whose fault it is."""


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol forbids: a bug in the caller or in this project."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something malformed or out of order.

    The stream can no longer be trusted: the turn fails and the socket is dropped.
    """


# Close codes after which docs/recovery.md#lost-sockets says a reconnect is worth trying.
RECOVERABLE_CLOSE_CODES = frozenset({1001, 1005, 1006, 1011, 1012, 1013, 1015})


class ConnectionLost(OrchestratorError):
    """The peer or the network ended the WebSocket; ``trio.ClosedResourceError`` means *we* did.

    Attributes:
        code: the WebSocket close code (1006 when no close frame arrived).
        reason: the close reason sent by the peer, or a description of the network error.
        retryable: whether reconnecting and replaying is the documented recovery.
    """

    def __init__(
        self, code: int, reason: str | None = None, *, retryable: bool | None = None
    ) -> None:
        self.code = code
        self.reason = reason = redact(reason) if reason else reason
        self.retryable = code in RECOVERABLE_CLOSE_CODES if retryable is None else retryable
        detail = f": {reason}" if reason else ""
        super().__init__(f"connection lost with close code {code}{detail}")


class HandshakeRejected(OrchestratorError):
    """The server answered the WebSocket upgrade with an HTTP error status instead of 101.

    ``explained``: the answer's body was an error saying why (``{"error": ...}``); a bare
    refusal (an empty or HTML body) says nothing about the request itself."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        retry_after: float | None = None,
        explained: bool = True,
    ) -> None:
        self.status = status
        self.retry_after = retry_after
        self.explained = explained
        super().__init__(message)


class AuthenticationError(HandshakeRejected):
    """The server rejected the credentials (HTTP 401 or 403). Retrying cannot help.

    ``code``: ``auth.rejected`` (401) or ``auth.forbidden`` (403)."""

    @property
    def code(self) -> str:
        return "auth.rejected" if self.status == 401 else "auth.forbidden"

    @classmethod
    def refused(
        cls, status: int, url: str, fingerprint: str, *, explained: bool = True
    ) -> AuthenticationError:
        """The refusal of ``url`` (401 or 403, to an upgrade or a request), naming the key by
        its ``fingerprint`` only."""
        what = "rejected the API key" if status == 401 else "refused access"
        return cls(
            status,
            f"server {what} (HTTP {status}) for {url}; key fingerprint {fingerprint}",
            explained=explained,
        )


class ServerError(OrchestratorError):
    """The server reported an error for a request: an ``error`` event or ``response.failed``.

    Attributes:
        code: the machine-readable code (``previous_response_not_found``, ``server_error``...).
        status: the HTTP status the same failure would have had, when known.
        param: the offending request field, when known.
        retry_after: seconds to wait before retrying, from ``retry-after`` when the server sent it.
    """

    def __init__(
        self,
        code: str | None,
        message: str,
        *,
        status: int | None = None,
        param: str | None = None,
        error_type: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.code = code
        self.message = message = redact(message)
        self.status = status
        self.param = param = redact(param) if param else param
        self.error_type = error_type
        self.retry_after = retry_after
        where = f" (param {param!r})" if param else ""
        status_text = f"{status} " if status is not None else ""
        super().__init__(f"server error {status_text}{code or 'unknown'}: {message}{where}")


class TurnFailed(OrchestratorError):
    """A turn could not be completed; ``__cause__`` holds the last underlying error."""


class ConfigurationError(OrchestratorError, ValueError):
    """A setting is invalid: an insecure URL, a missing API key, a limit out of range."""

    def __init__(self, message: str, *, code: str = "config.value") -> None:
        self.code = code
        super().__init__(message)


class PlanError(OrchestratorError, ValueError):
    """A plan is invalid. ``issues`` lists every problem found, not only the first.

    Each issue is an object with ``code``, ``path``, ``location``, ``message`` and
    ``suggestion``; see ``plans.validate``.
    """

    def __init__(self, message: str, issues: tuple[object, ...] = ()) -> None:
        self.issues = issues
        super().__init__(message)


class ToolError(OrchestratorError):
    """A tool call could not be executed as asked."""

    def __init__(self, message: str, *, tool: str, call_id: str | None = None) -> None:
        self.tool = tool
        self.call_id = call_id
        super().__init__(message)


class ToolArgumentsInvalid(ToolError):
    """The model called a tool with arguments that do not match its schema."""


class ToolTimedOut(ToolError):
    """A tool did not finish within its deadline."""


class ArgumentsRejected(ToolArgumentsInvalid):
    """The model's arguments cannot be used; ``code`` says why (``invalid_json``,
    ``invalid_arguments``, ``arguments_too_large``...), as the model's output names it."""

    def __init__(self, code: str, message: str, *, tool: str, call_id: str | None = None) -> None:
        self.code = code
        super().__init__(message, tool=tool, call_id=call_id)


class ToolCallEnded(ToolError):
    """A tool tried to start a child process after its call ended (timed out or cancelled):
    the child was killed at once. Raised in the tool's abandoned thread, read by no one."""


class ToolDefinitionError(ToolError):
    """A callable cannot be a tool (no type hints, unsupported type, bad name or path).

    Raised while building tools, before any run: a mistake in the tool or the plan, which
    ``orchestrator validate`` reports as ``plan.tool``.

    Attributes:
        parameter: the offending parameter, when one is to blame.
        suggestion: what to write instead, when there is a clear fix.
    """

    code = "plan.tool"

    def __init__(
        self,
        message: str,
        *,
        tool: str,
        call_id: str | None = None,
        parameter: str | None = None,
        suggestion: str | None = None,
    ) -> None:
        self.parameter = parameter
        self.suggestion = suggestion
        super().__init__(message, tool=tool, call_id=call_id)


class ToolRepairBudgetExceeded(ToolError):
    """The model kept calling a tool wrongly past the repair budget: stop the turn.

    Attributes:
        attempts: consecutive invalid calls of ``tool``.
        budget: how many were allowed.
        error: the last error code (``invalid_arguments``...).
        outputs: the ``function_call_output`` items of the calls just executed, in call
            order, in case the runtime wants to journal or send them.
    """

    code = "tool.repair_budget"

    def __init__(
        self,
        *,
        tool: str,
        call_id: str | None,
        attempts: int,
        budget: int,
        error: str,
        outputs: tuple[Any, ...],
    ) -> None:
        self.attempts = attempts
        self.budget = budget
        self.error = error
        self.outputs = outputs
        super().__init__(
            f"error[tool.repair_budget]: tool {tool!r} was called wrongly {attempts} times "
            f"in a row (repair budget {budget}); last error: {error}",
            tool=tool,
            call_id=call_id,
        )


class PathOutsideWorkspace(OrchestratorError, ValueError):
    """A path argument resolves outside the workspace. Raised by ``confine``."""

    code = "tool.path_outside_workspace"


class OutputError(OrchestratorError, ValueError):
    """An output declaration that cannot be used: a type path that does not import, a type
    msgspec cannot describe, a schema keyword that is not understood.

    Attributes:
        location: where in the schema (``.properties.price``), ``""`` for the whole.
        message: what is wrong.
        suggestion: how to fix it, or None.
    """

    code = "plan.output"

    def __init__(self, message: str, location: str = "", suggestion: str | None = None) -> None:
        super().__init__(f"{location}: {message}" if location else message)
        self.location = location
        self.message = message
        self.suggestion = suggestion


class OutputMismatch(OrchestratorError, ValueError):
    """The model's text is not JSON of the declared output.

    ``str()`` says where and why (``$.price: expected int, got str``): the repair turn
    sends it to the model as it is.
    """

    code = "output.invalid"


class StepsFailed(OrchestratorError):
    """Steps of a run failed for good (their agents crashed on them, asked again, crashed
    again). ``failed``: their reports."""

    code = "run.step_failed"

    def __init__(self, failed: Sequence[Any]) -> None:
        self.failed = list(failed)
        names = ", ".join(f"{report.id} ({report.error})" for report in self.failed)
        super().__init__(f"steps failed: {names}")


class BudgetExceeded(OrchestratorError):
    """A budget (turns, tokens, wall-clock...) was reached."""

    def __init__(self, budget: str, limit: float, used: float, *, scope: str = "run") -> None:
        self.budget = budget
        self.code = f"budget.{budget}"
        self.limit = limit
        self.used = used
        self.scope = scope
        super().__init__(f"{scope} budget {budget} reached: used {used:g} of {limit:g}")


class OutputInvalid(OrchestratorError):
    """An agent's final answer did not match its declared output type, also after the repair
    turn that told the model what was wrong. It ends the run (code ``output.invalid``).

    Attributes:
        agent: the agent.
        output: the output type's name.
        error: what is wrong with the last answer (``$.price: expected int, got str``).
        text: the last answer, cut to 2000 characters, for debugging (not in ``str()``).
    """

    code = "output.invalid"

    def __init__(self, agent: str, output: str, error: str, *, text: str = "") -> None:
        self.agent = agent
        self.output = output
        self.error = error = redact(error)
        self.text = redact(text[:2000])
        super().__init__(
            f"agent {agent!r} answered with output that does not match {output!r}, also "
            f"after a repair turn: {error}"
        )


class ActorDead(OrchestratorError):
    """The actor is not running; pending and new asks to it fail with this, never hang."""

    def __init__(
        self, name: str, reason: str | None = None, *, cause: BaseException | None = None
    ) -> None:
        self.name = name
        self.reason = reason = redact(reason) if reason else reason
        detail = f": {reason}" if reason else ""
        super().__init__(f"actor {name!r} is not running{detail}")
        if cause is not None:
            self.__cause__ = cause


class DeliveryTimeout(OrchestratorError):
    """A message could not be put in a full mailbox before the sender's deadline."""

    def __init__(self, recipient: str, timeout: float) -> None:
        self.recipient = recipient
        self.timeout = timeout
        super().__init__(f"mailbox of {recipient!r} stayed full for {timeout:g} s")


class UnknownRecipient(OrchestratorError, LookupError):
    """A message was addressed to a name the router does not know."""

    def __init__(self, name: str, known: tuple[str, ...] = ()) -> None:
        self.name = name
        self.known = known
        listing = ", ".join(known) if known else "none"
        super().__init__(f"no actor named {name!r}; known actors: {listing}")


class RestartLimitReached(OrchestratorError):
    """A supervisor saw more restarts than its intensity allows and gave up (code
    ``run.restart_limit``).

    Raised *from* the last failure, so ``__cause__`` holds the chain of exit reasons.
    """

    code = "run.restart_limit"

    def __init__(
        self, child: str, restarts: int, window: float, *, supervisor: str = "root"
    ) -> None:
        self.child = child
        self.restarts = restarts
        self.window = window
        self.supervisor = supervisor
        super().__init__(
            f"supervisor {supervisor!r}: child {child!r} exceeded {restarts} restarts "
            f"in {window:g} s"
        )


class JobError(OrchestratorError):
    """A durable job cannot do what was asked. ``code`` names the case (``job.*``)."""

    code: str = "job.error"

    def __init__(self, message: str, *, job: str | None = None) -> None:
        self.job = job
        super().__init__(message)


class JobNotFound(JobError):
    """No job with this id in the store."""

    code = "job.not_found"


class CallsParked(JobError):
    """Calls were found in doubt whose tools may not run twice: a person must decide.

    Attributes:
        calls: the parked calls (``actors.journal.CallEntry``).
    """

    code = "job.needs_attention"

    def __init__(self, calls: Sequence[Any]) -> None:
        self.calls = tuple(calls)
        listing = ", ".join(f"{c.agent}:{c.name} ({c.call_id})" for c in self.calls)
        super().__init__(
            f"{len(self.calls)} tool call(s) may or may not have run and cannot safely run "
            f"again: {listing}"
        )


class JobNotResumable(JobError):
    """The job ended (completed, failed, cancelled, dead...) or needs a person first."""

    code = "job.not_resumable"


class JobRunning(JobError):
    """Another live process owns the job: two writers must never drive one job."""

    code = "job.running"


class PlanDiverged(JobError):
    """The plan given to resume a job differs from the journaled one in what matters."""

    code = "job.plan_diverged"

    def __init__(
        self, message: str, *, job: str | None = None, changes: tuple[str, ...] = ()
    ) -> None:
        self.changes = changes
        super().__init__(message, job=job)


class JournalError(JobError):
    """The job's journal cannot be written; the job stops where it is, nothing is lost."""

    code = "job.journal"


class StorageUnavailable(JournalError):
    """The store refused a write (disk full, read-only file, database unreachable)."""

    code = "job.storage_unavailable"


class JobLost(JournalError):
    """Another owner claimed the job (a newer epoch): this process must stop driving it."""

    code = "job.lost"


# -- MCP servers ---------------------------------------------------------------------------------


class McpServerFailed(OrchestratorError):
    """An MCP server could not be started, or kept failing: the run ends.

    Attributes:
        server: the server's name in the plan.
        code: ``mcp.server_failed``.
    """

    code = "mcp.server_failed"

    def __init__(self, server: str, message: str) -> None:
        self.server = server
        super().__init__(message)


class McpToolFailed(ToolError):
    """The server answered a call with an error result (``isError``): its text is what the
    model reads."""


class InternalError(OrchestratorError):
    """This is a bug in the orchestrator; please report it with the context below."""
