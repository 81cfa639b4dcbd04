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
    ├── ToolError(tool, call_id) ── ToolArgumentsInvalid / ToolTimedOut
    ├── BudgetExceeded(budget, limit, used)
    ├── OutputInvalid(agent, output, error)         an answer not of the declared output type
    ├── ActorDead(name) / DeliveryTimeout / UnknownRecipient
    ├── RestartLimitReached(child, restarts, window)
    ├── JobError(code)                              a durable job cannot do what was asked
    │   ├── JobNotFound / JobNotResumable / JobRunning / PlanDiverged
    │   └── JournalError                            its journal cannot be written: it stops
    │       ├── StorageUnavailable                  disk full, read-only, database down
    │       └── JobLost                             another owner took the job (fenced out)
    └── InternalError                               a bug in this project
"""

from __future__ import annotations

from orchestrator.core.redaction import redact

__all__ = [
    "ActorDead",
    "AuthenticationError",
    "BudgetExceeded",
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
    "OutputInvalid",
    "PlanDiverged",
    "PlanError",
    "ProtocolError",
    "RemoteProtocolError",
    "RestartLimitReached",
    "ServerError",
    "StorageUnavailable",
    "ToolArgumentsInvalid",
    "ToolError",
    "ToolTimedOut",
    "TurnFailed",
    "UnknownRecipient",
]


class OrchestratorError(Exception):
    """Base class of every error this project raises on purpose.

    Text arguments are redacted on the way in, so ``str``, ``repr`` and ``args`` never hold
    a credential.
    """

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
    """The server answered the WebSocket upgrade with an HTTP error status instead of 101."""

    def __init__(self, status: int, message: str, *, retry_after: float | None = None) -> None:
        self.status = status
        self.retry_after = retry_after
        super().__init__(message)


class AuthenticationError(HandshakeRejected):
    """The server rejected the credentials (HTTP 401 or 403). Retrying cannot help."""


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


class BudgetExceeded(OrchestratorError):
    """A budget (turns, tokens, wall-clock...) was reached."""

    def __init__(self, budget: str, limit: float, used: float, *, scope: str = "run") -> None:
        self.budget = budget
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
    """A supervisor saw more restarts than its intensity allows and gave up.

    Raised *from* the last failure, so ``__cause__`` holds the chain of exit reasons.
    """

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


class InternalError(OrchestratorError):
    """This is a bug in the orchestrator; please report it with the context below."""
