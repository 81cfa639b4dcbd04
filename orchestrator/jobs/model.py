"""What a job store holds: job rows, journal records, and the writes that change them.

Everything here is plain data (msgspec Structs): the store backends turn writes into SQL,
the runtime turns records back into sessions and agent memories (``orchestrator.jobs.resume``).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Final, Literal

import msgspec

from actors.journal import CallEntry

__all__ = [
    "ACTIVE",
    "FINAL",
    "AgentPrint",
    "Claim",
    "EventRecord",
    "JobJournal",
    "JobRecord",
    "JobStatus",
    "MessageRecord",
    "NewJob",
    "Owner",
    "ReplyRecord",
    "StepRecord",
    "TurnRecord",
    "Write",
]

JobStatus = Literal[
    "queued",
    "running",
    "interrupted",
    "needs_attention",
    "budget_exceeded",
    "completed",
    "partial",
    "failed",
    "cancelled",
    "dead",
]
# A job in one of these is over: resume refuses it (``jobs retry`` revives failed and dead).
FINAL: Final = frozenset({"completed", "partial", "failed", "cancelled", "dead"})
# A job in one of these may have a live owner.
ACTIVE: Final = frozenset({"queued", "running"})


class Owner(msgspec.Struct, frozen=True, kw_only=True):
    """The process driving a job: host name, pid and the process's start time (a pid is
    reused; the pair is not)."""

    host: str
    pid: int
    started: float

    @classmethod
    def this_process(cls) -> Owner:
        return cls(host=socket.gethostname(), pid=os.getpid(), started=_process_start())

    @property
    def label(self) -> str:
        return f"{self.host}:{self.pid}"

    def encode(self) -> str:
        return msgspec.json.encode(self).decode()

    @classmethod
    def decode(cls, text: str | None) -> Owner | None:
        if not text:
            return None
        try:
            return msgspec.json.decode(text, type=cls)
        except msgspec.MsgspecError:
            return None


_STARTED: Final = time.time()


def _process_start() -> float:
    """This process's start, as ``/proc`` tells it (so another process can check it)."""
    return _start_of(os.getpid()) or _STARTED


def _stat(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` after the command name (Linux), or ``None``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_of(pid: int) -> float | None:
    """When process ``pid`` started, in clock ticks since boot (Linux), or ``None``."""
    fields = _stat(pid)
    try:
        return float(fields[19]) if fields is not None else None
    except (IndexError, ValueError):
        return None


# The jobs this process drives right now: its own claims are alive only while listed here
# (a run that stopped because its store failed left its claim in place, and may resume).
DRIVEN: Final[set[str]] = set()


def owner_alive(owner: Owner, job: str) -> bool | None:
    """Whether ``owner`` still drives ``job``: ``None`` when it is on another host (ask its
    lease)."""
    if owner.host != socket.gethostname():
        return None
    if owner.pid == os.getpid() and owner.started == Owner.this_process().started:
        return job in DRIVEN
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, someone else's
    fields = _stat(owner.pid)
    if fields is not None and fields[0] in (b"Z", b"X"):
        return False  # killed, not yet reaped by its parent
    started = _start_of(owner.pid)
    return started is None or started == owner.started


class Claim(msgspec.Struct, frozen=True, kw_only=True):
    """The right to write a job's journal: every write is fenced by this epoch."""

    job: str
    epoch: int
    owner: Owner


class AgentPrint(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """What an agent was when the job started; a resume with another one is refused."""

    role: str
    model: str
    instructions: str
    store: bool
    tools: dict[str, str] = msgspec.field(default_factory=dict)  # name -> side effect:hash
    context: str = "agent"
    settings: str = ""  # the model settings that change behaviour, canonical JSON
    output: str = ""  # the declared output: name:schema hash


class NewJob(msgspec.Struct, frozen=True, kw_only=True):
    """A job as accepted: everything needed to run it again from the journal alone."""

    id: str
    name: str
    goal: str | None
    mode: str
    plan: str  # canonical JSON
    plan_hash: str
    plan_dir: str | None
    agents: dict[str, AgentPrint]
    options: dict[str, object] = msgspec.field(default_factory=dict)
    queue: str = "default"
    status: JobStatus = "running"


class JobRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A job's row. Times are seconds since the epoch (the store's clock)."""

    id: str
    name: str
    status: JobStatus
    queue: str
    goal: str | None
    mode: str
    plan: str
    plan_hash: str
    plan_dir: str | None
    agents: dict[str, AgentPrint]
    options: dict[str, object]
    created_at: float
    updated_at: float
    finished_at: float | None = None
    answer: str | None = None
    reason: str | None = None
    code: str | None = None
    failures: list[dict[str, object]] = msgspec.field(default_factory=list)
    epoch: int = 0
    owner: Owner | None = None
    lease_expires: float | None = None
    cancel_requested: bool = False
    recoveries: int = 0
    progress: int = 0
    progress_at_claim: int = 0
    active_seconds: float = 0.0
    # Filled by list/show queries: counts from the journal.
    turns: int = 0
    tool_calls: int = 0
    steps_done: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


class TurnRecord(msgspec.Struct, frozen=True, kw_only=True):
    agent: str
    seq: int
    message: str | None
    new_items: bytes  # JSON array, as the codec encodes items
    output: bytes
    response_id: str
    input_tokens: int
    output_tokens: int
    reply: str | None
    created_at: float


class ReplyRecord(msgspec.Struct, frozen=True, kw_only=True):
    agent: str
    message: str
    text: str


class MessageRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    sender: str
    recipient: str
    text: str
    step: str | None = None
    created_at: float = 0.0


class StepRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    agent: str
    status: Literal["started", "completed", "failed", "skipped"]
    result: str | None = None
    error: str | None = None
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None


class EventRecord(msgspec.Struct, frozen=True, kw_only=True):
    time: float
    kind: str
    detail: str = ""
    epoch: int | None = None  # the claim's epoch it was written under (read back only)


class JobJournal(msgspec.Struct, frozen=True, kw_only=True):
    """A job and its whole journal, as loaded for a resume or ``jobs show``."""

    job: JobRecord
    turns: list[TurnRecord]
    calls: list[CallEntry]
    replies: list[ReplyRecord]
    messages: list[MessageRecord]
    steps: list[StepRecord]
    events: list[EventRecord]


# -- writes: one journal transaction each (grouped commits keep their order) --------------------


class Write(msgspec.Struct, frozen=True, kw_only=True, tag_field="op"):
    """Base of the journal writes."""


class TurnWrite(Write, tag="turn", frozen=True, kw_only=True):
    turn: TurnRecord
    calls: list[CallEntry]


class CallStartedWrite(Write, tag="call_started", frozen=True, kw_only=True):
    call: CallEntry


class CallFinishedWrite(Write, tag="call_finished", frozen=True, kw_only=True):
    call: CallEntry


class ReplyWrite(Write, tag="reply", frozen=True, kw_only=True):
    reply: ReplyRecord


class MessageWrite(Write, tag="message", frozen=True, kw_only=True):
    message: MessageRecord


class StepWrite(Write, tag="step", frozen=True, kw_only=True):
    step: StepRecord


class StatusWrite(Write, tag="status", frozen=True, kw_only=True):
    """The job's status; a final one also ends the claim (owner and lease cleared)."""

    status: JobStatus
    answer: str | None = None
    reason: str | None = None
    code: str | None = None
    failures: list[dict[str, object]] = msgspec.field(default_factory=list)
    active_seconds: float | None = None
    release: bool = False


class EventWrite(Write, tag="event", frozen=True, kw_only=True):
    event: EventRecord
