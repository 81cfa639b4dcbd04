"""The Actor base: mailbox loop, asks and replies, lifecycle hooks, dead actors
(docs/faults.md#routing)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio
import trio.testing
from loguru import logger

from actors.base import Actor, ActorStatistics
from orchestrator.core.router import EXTERNAL_SENDER, Router
from orchestrator.core.supervisor import Backoff, Supervisor
from orchestrator.errors import ActorDead, DeliveryTimeout, UnknownRecipient

if TYPE_CHECKING:
    from collections.abc import Iterator


class Boom(Exception):
    pass


@attrs.define(eq=False)
class Recorder(Actor):
    """Records hooks and messages; ``"boom"`` crashes it, ``("wait", event)`` blocks on event."""

    history: list[Any] = attrs.field(factory=list)
    total: int = 0
    fail_on_start: bool = False

    async def on_start(self) -> None:
        self.history.append("on_start")
        if self.fail_on_start:
            raise Boom("cannot start")

    async def on_failure(self, error: Exception) -> None:
        self.history.append(("on_failure", repr(error)))

    async def on_stop(self) -> None:
        self.history.append("on_stop")

    async def handle(self, message: Any) -> Any:
        self.history.append(message)
        if message == "boom":
            raise Boom("boom")
        if isinstance(message, tuple) and message[0] == "wait":
            await message[1].wait()
            return "waited"
        if message == "stop":
            self.stop()
            return "stopping"
        if isinstance(message, int):
            self.total += message
            return self.total
        return message


async def test_ask_returns_the_reply_and_tells_are_handled_in_order(nursery):
    """Tells are handled in send order; an ask returns what handle() returned."""
    actor = Recorder("a")
    await nursery.start(actor.run)
    for n in (1, 2, 3):
        await actor.tell(n)
    assert 10 == await actor.ask(4)
    assert ["on_start", 1, 2, 3, 4] == actor.history


async def test_current_envelope_exposes_sender_and_message_id(nursery):
    """Inside handle(), the envelope tells who sent the message and its id."""

    @attrs.define(eq=False)
    class Echo(Actor):
        async def handle(self, message: Any) -> Any:
            envelope = self.current_envelope
            assert envelope is not None
            return (envelope.sender, envelope.message_id, envelope.message)

    actor = Echo("echo")
    await nursery.start(actor.run)
    assert ("me", 1, "hi") == await actor.ask("hi", sender="me")
    assert (EXTERNAL_SENDER, 2, "again") == await actor.ask("again")
    assert actor.current_envelope is None


async def test_the_ask_in_flight_fails_with_actor_dead_when_the_actor_crashes(nursery):
    """A crash in handle() fails the pending ask with ActorDead caused by the crash."""
    actor = Recorder("a")
    nursery.start_soon(_expect_crash, actor)
    await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(ActorDead) as caught:
        await actor.ask("boom")
    assert "a" == caught.value.name
    assert isinstance(caught.value.__cause__, Boom)
    assert "crashed: Boom('boom')" == caught.value.reason


async def _expect_crash(actor: Actor) -> None:
    with pytest.raises(Boom):
        await actor.run()


async def test_queued_asks_fail_with_actor_dead_when_the_actor_crashes(nursery):
    """Asks waiting in the mailbox of a crashing actor fail at once; none hangs."""
    actor = Recorder("a")
    release = trio.Event()
    nursery.start_soon(_expect_crash, actor)
    await trio.testing.wait_all_tasks_blocked()
    outcomes: list[str] = []

    async def ask(message: Any) -> None:
        try:
            outcomes.append(await actor.ask(message))
        except ActorDead as exc:
            outcomes.append(f"dead: {exc.reason}")

    async with trio.open_nursery() as askers:
        askers.start_soon(ask, ("wait", release))
        await trio.testing.wait_all_tasks_blocked()
        askers.start_soon(ask, "boom")
        await trio.testing.wait_all_tasks_blocked()
        askers.start_soon(ask, "never handled")
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert ["waited", "dead: crashed: Boom('boom')", "dead: crashed: Boom('boom')"] == outcomes
    assert [
        "on_start",
        ("wait", release),
        "boom",
        ("on_failure", "Boom('boom')"),
        "on_stop",
    ] == actor.history


async def test_stop_finishes_the_current_message_and_fails_the_queued_asks(nursery):
    """stop() lets the message being handled complete; queued asks get ActorDead."""
    actor = Recorder("a")
    release = trio.Event()
    await nursery.start(actor.run)
    outcomes: dict[str, Any] = {}

    async def ask(key: str, message: Any) -> None:
        try:
            outcomes[key] = await actor.ask(message)
        except ActorDead as exc:
            outcomes[key] = exc.reason

    async with trio.open_nursery() as askers:
        askers.start_soon(ask, "first", ("wait", release))
        await trio.testing.wait_all_tasks_blocked()
        askers.start_soon(ask, "queued", 5)
        await trio.testing.wait_all_tasks_blocked()
        actor.stop()
        await trio.testing.wait_all_tasks_blocked()
        assert {"queued": "stopped"} == outcomes
        release.set()
    assert {"first": "waited", "queued": "stopped"} == outcomes
    assert not actor.running
    assert ["on_start", ("wait", release), "on_stop"] == actor.history


async def test_an_actor_can_stop_itself_and_run_returns_normally():
    """stop() from inside handle() ends the incarnation after the reply is sent."""
    actor = Recorder("a")
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        assert "stopping" == await actor.ask("stop")
    assert ["on_start", "stop", "on_stop"] == actor.history


async def test_sending_to_a_stopped_actor_raises_actor_dead_and_records_a_dead_letter():
    """A known but stopped actor refuses messages with ActorDead; each is a dead letter."""
    router = Router()
    actor = Recorder("a", router=router)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        actor.stop()
    with pytest.raises(ActorDead, match="not running: stopped"):
        await actor.tell(1)
    with pytest.raises(ActorDead):
        await actor.ask(2)
    assert [(1, "stopped"), (2, "stopped")] == [
        (letter.message_id, letter.reason) for letter in router.dead_letters
    ]


async def test_an_actor_that_never_ran_is_unknown_to_its_router():
    """The mailbox is registered when the actor first starts, not when it is built."""
    actor = Recorder("a")
    with pytest.raises(UnknownRecipient):
        await actor.tell(1)


async def test_a_full_mailbox_makes_the_sender_wait_then_raise_delivery_timeout(
    autojump_clock, nursery
):
    """With the mailbox full, tell waits exactly its timeout, then DeliveryTimeout."""
    router = Router()
    actor = Recorder("a", router=router, mailbox_size=1)
    release = trio.Event()
    await nursery.start(actor.run)
    await actor.tell(("wait", release))  # being handled
    await trio.testing.wait_all_tasks_blocked()
    await actor.tell(1)  # fills the mailbox
    start = trio.current_time()
    with pytest.raises(DeliveryTimeout) as caught:
        await actor.tell(2, timeout=3.0)
    assert 3.0 == trio.current_time() - start
    assert ("a", 3.0) == (caught.value.recipient, caught.value.timeout)
    assert ["delivery timeout"] == [letter.reason for letter in router.dead_letters]
    release.set()
    assert 4 == await actor.ask(3)
    assert ["on_start", ("wait", release), 1, 3] == actor.history


async def test_a_sender_blocked_on_a_full_mailbox_proceeds_when_space_frees(
    autojump_clock, nursery
):
    """A blocked sender is delivered as soon as the actor takes a message."""
    actor = Recorder("a", mailbox_size=1)
    release = trio.Event()
    await nursery.start(actor.run)
    await actor.tell(("wait", release))
    await trio.testing.wait_all_tasks_blocked()
    await actor.tell(1)

    async def release_later() -> None:
        await trio.sleep(2)
        release.set()

    nursery.start_soon(release_later)
    start = trio.current_time()
    await actor.tell(2, timeout=10)
    assert 2 == trio.current_time() - start
    assert 3 == await actor.ask(0)


async def test_an_ask_without_a_reply_by_its_deadline_raises_too_slow(autojump_clock, nursery):
    """A delivered ask whose reply does not come within the timeout raises TooSlowError."""
    actor = Recorder("a")
    await nursery.start(actor.run)
    with pytest.raises(trio.TooSlowError):
        await actor.ask(("wait", trio.Event()), timeout=5)
    assert 5 == trio.current_time()


async def test_cancelling_an_actor_fails_its_asks_and_runs_on_stop_shielded(autojump_clock):
    """Cancellation ends the incarnation: pending asks fail, on_stop still gets to await."""

    @attrs.define(eq=False)
    class SlowStop(Recorder):
        async def on_stop(self) -> None:
            await trio.sleep(1)
            self.history.append("on_stop done")

    actor = SlowStop("a")
    errors: list[str | None] = []

    async def ask() -> None:
        try:
            await actor.ask(("wait", trio.Event()))
        except ActorDead as exc:
            errors.append(exc.reason)

    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def run_actor(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await actor.run(task_status=task_status)

        await nursery.start(run_actor)
        nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()
    assert ["cancelled"] == errors
    assert "on_stop done" == actor.history[-1]


async def test_hooks_run_in_order_across_a_crash_and_a_stop(autojump_clock):
    """on_start, handle, on_failure, on_stop per incarnation; state stays on the object."""
    actor = Recorder("a")
    sup = Supervisor("sup", [actor], backoff=Backoff(0))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        assert 5 == await actor.ask(5)
        with pytest.raises(ActorDead):
            await actor.ask("boom")
        await trio.testing.wait_all_tasks_blocked()
        assert 12 == await actor.ask(7)
        sup.stop()
    assert [
        "on_start",
        5,
        "boom",
        ("on_failure", "Boom('boom')"),
        "on_stop",
        "on_start",
        7,
        "on_stop",
    ] == actor.history
    assert ActorStatistics("a", False, 0, 64, 2, 1, 1) == actor.statistics()


async def test_a_failure_in_on_start_is_a_failure_to_start_without_on_stop():
    """Raising in on_start fails run() before started(); on_stop is not called."""
    actor = Recorder("a", fail_on_start=True)
    async with trio.open_nursery() as nursery:
        with pytest.raises(Boom):
            await nursery.start(actor.run)
    assert ["on_start", ("on_failure", "Boom('cannot start')")] == actor.history
    assert not actor.running


async def test_each_incarnation_gets_a_fresh_mailbox_and_nothing_is_replayed(autojump_clock):
    """After a restart the name maps to a new mailbox; the old one's messages are gone."""
    router = Router()
    actor = Recorder("a", router=router, mailbox_size=4)
    release = trio.Event()
    sup = Supervisor("sup", [actor], backoff=Backoff(1.0))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        first = router.mailbox("a")
        await actor.tell(("wait", release))
        await trio.testing.wait_all_tasks_blocked()
        await actor.tell("boom")
        await actor.tell(1)
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        # Crashed, waiting for its backoff: known but not running.
        assert first.closed
        with pytest.raises(ActorDead):
            await actor.tell(2)
        await trio.sleep(1)  # the backoff, in virtual time
        await trio.testing.wait_all_tasks_blocked()
        assert router.mailbox("a") is not first
        assert 3 == await actor.ask(3)
        sup.stop()
    assert 1 not in actor.history
    assert [(3, "crashed: Boom('boom')"), (4, "crashed: Boom('boom')")] == [
        (letter.message_id, letter.reason) for letter in router.dead_letters
    ]


async def test_running_an_actor_twice_at_once_is_refused(nursery):
    """One actor object runs one incarnation at a time."""
    actor = Recorder("a")
    await nursery.start(actor.run)
    with pytest.raises(trio.BusyResourceError):
        await actor.run()


async def test_a_stopped_actor_cannot_run_again_until_its_last_message_is_done(nursery):
    """After stop() the incarnation still finishes its message: run() is refused till then."""
    actor = Recorder("a")
    release = trio.Event()
    await nursery.start(actor.run)
    await actor.tell(("wait", release))
    await trio.testing.wait_all_tasks_blocked()
    actor.stop()
    with pytest.raises(trio.BusyResourceError):
        await actor.run()
    release.set()
    await trio.testing.wait_all_tasks_blocked()
    await nursery.start(actor.run)
    assert 1 == await actor.ask(1)


async def test_two_running_actors_cannot_share_a_name_on_a_router(nursery):
    """A second actor registering a running name is a bug, reported as ValueError."""
    router = Router()
    await nursery.start(Recorder("a", router=router).run)
    with pytest.raises(ValueError, match="already running"):
        await Recorder("a", router=router).run()


async def test_statistics_report_mailbox_depth_and_processed_messages(nursery):
    """statistics() is a snapshot of depth, capacity, processed, failures and restarts."""
    actor = Recorder("a", mailbox_size=8)
    release = trio.Event()
    assert ActorStatistics("a", False, 0, 8, 0, 0, 0) == actor.statistics()
    await nursery.start(actor.run)
    await actor.tell(("wait", release))
    await trio.testing.wait_all_tasks_blocked()
    await actor.tell(1)
    await actor.tell(2)
    assert ActorStatistics("a", True, 2, 8, 0, 0, 0) == actor.statistics()
    release.set()
    await trio.testing.wait_all_tasks_blocked()
    assert ActorStatistics("a", True, 0, 8, 3, 0, 0) == actor.statistics()


@pytest.fixture
def log_messages() -> Iterator[list[Any]]:
    messages: list[Any] = []
    logger.enable("actors")
    handler = logger.add(messages.append, level="DEBUG", format="{message}")
    yield messages
    logger.remove(handler)
    logger.disable("actors")


async def test_log_records_carry_the_actor_name_and_role(log_messages):
    """Every record an actor logs is bound to its name and role (loguru extra)."""
    actor = Recorder("worker-1", role="worker")
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        actor.stop()
    assert log_messages
    assert all({"actor": "worker-1", "role": "worker"} == m.record["extra"] for m in log_messages)
