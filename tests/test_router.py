"""The router: names and roles to mailboxes, ids, per-pair order, dead letters
(docs/faults.md#routing)."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from actors.base import Actor
from orchestrator.core.observe import DeadLetter, EventBus, MessageRouted, RuntimeEvent
from orchestrator.core.router import Envelope, Mailbox, Router, RouterStatistics
from orchestrator.core.supervisor import Supervisor
from orchestrator.errors import ActorDead, DeliveryTimeout, UnknownRecipient


async def drain(mailbox: Mailbox) -> list[Envelope]:
    """Everything queued in ``mailbox`` right now."""
    received = []
    while True:
        try:
            received.append(mailbox.receive_nowait())
        except trio.WouldBlock:
            await trio.lowlevel.checkpoint()
            return received


async def test_an_unknown_recipient_is_rejected_with_the_known_names():
    """Sending to a name nobody registered raises UnknownRecipient listing the names."""
    router = Router()
    router.open_mailbox("planner")
    router.open_mailbox("worker-1")
    with pytest.raises(UnknownRecipient) as caught:
        await router.tell("planner", "wokrer-1", "hi")
    assert ("wokrer-1", ("planner", "worker-1")) == (caught.value.name, caught.value.known)
    assert "known actors: planner, worker-1" in str(caught.value)
    assert ["unknown recipient"] == [letter.reason for letter in router.dead_letters]


async def test_message_ids_increase_across_senders_and_recipients():
    """Every routed message gets the next id; tell returns it, the envelope carries it."""
    router = Router()
    a, b = router.open_mailbox("a"), router.open_mailbox("b")
    ids = [
        await router.tell("x", "a", 1),
        await router.tell("y", "b", 2),
        await router.tell("x", "b", 3),
    ]
    assert [1, 2, 3] == ids
    assert [(1, "x", "a", 1)] == [
        (e.message_id, e.sender, e.recipient, e.message) for e in await drain(a)
    ]
    assert [2, 3] == [e.message_id for e in await drain(b)]


async def test_order_is_kept_per_sender_and_recipient_under_backpressure():
    """Several senders pushing through a 2-slot mailbox: each sender's messages arrive in
    order with increasing ids, and none is lost."""
    router = Router()
    mailbox = router.open_mailbox("sink", capacity=2)
    received: list[Envelope] = []

    async def sender(name: str) -> None:
        for seq in range(50):
            await router.tell(name, "sink", seq)

    async def consumer() -> None:
        while len(received) < 5 * 50:
            received.append(await mailbox.receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        for n in range(5):
            nursery.start_soon(sender, f"s{n}")
    by_sender: dict[str, list[Envelope]] = defaultdict(list)
    for envelope in received:
        by_sender[envelope.sender].append(envelope)
    for envelopes in by_sender.values():
        assert list(range(50)) == [e.message for e in envelopes]
        ids = [e.message_id for e in envelopes]
        assert sorted(ids) == ids
    assert 5 == len(by_sender)


async def test_every_routed_message_emits_message_routed():
    """Each delivery emits MessageRouted with id, sender, recipient, kind and a summary."""
    bus = EventBus()
    events: list[RuntimeEvent] = []
    bus.add_listener(events.append)
    router = Router(events=bus)
    mailbox = router.open_mailbox("a")
    await router.tell("me", "a", "x" * 500)

    async def answer() -> None:
        envelope = await mailbox.receive()
        assert envelope.reply is not None
        envelope.reply.send("pong")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer)
        await drain(mailbox)
        assert "pong" == await router.ask("me", "a", "ping")
    routed = [e for e in events if isinstance(e, MessageRouted)]
    assert [(1, "me", "a", "tell"), (2, "me", "a", "ask")] == [
        (e.message_id, e.sender, e.recipient, e.kind) for e in routed
    ]
    assert len(routed[0].summary) < 80
    assert "'ping'" == routed[1].summary


async def test_a_closed_mailbox_refuses_messages_with_actor_dead():
    """Sending to a registered but closed mailbox raises ActorDead with the close reason."""
    bus = EventBus()
    events: list[RuntimeEvent] = []
    bus.add_listener(events.append)
    router = Router(events=bus)
    router.open_mailbox("a").close("crashed: Boom()")
    with pytest.raises(ActorDead) as caught:
        await router.tell("me", "a", 1)
    assert ("a", "crashed: Boom()") == (caught.value.name, caught.value.reason)
    assert [(1, "me", "a", "crashed: Boom()")] == [
        (e.message_id, e.sender, e.recipient, e.reason) for e in events if isinstance(e, DeadLetter)
    ]
    assert not router.is_running("a")


async def test_closing_a_mailbox_fails_queued_asks_and_takes_in_blocked_senders():
    """close() drops the queue: asks fail with ActorDead, tells become dead letters, and a
    sender blocked on the full mailbox is released rather than left hanging."""
    router = Router()
    mailbox = router.open_mailbox("a", capacity=1)
    outcomes: list[str] = []

    async def ask() -> None:
        try:
            await router.ask("asker", "a", "question")
        except ActorDead as exc:
            outcomes.append(f"ask: {exc.reason}")

    async def tell() -> None:
        await router.tell("teller", "a", "blocked")
        outcomes.append("tell: accepted")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(tell)
        await trio.testing.wait_all_tasks_blocked()
        assert 1 == mailbox.statistics().senders_waiting
        assert 2 == mailbox.close("stopped", cause=None)
    assert ["ask: stopped", "tell: accepted"] == sorted(outcomes)
    assert [("asker", "stopped"), ("teller", "stopped")] == [
        (letter.sender, letter.reason) for letter in router.dead_letters
    ]
    assert 0 == mailbox.close("again")
    with pytest.raises(trio.EndOfChannel):
        await mailbox.receive()


async def test_a_full_mailbox_times_out_the_sender_with_delivery_timeout(autojump_clock):
    """A sender waits on a full mailbox up to its timeout (or the router default)."""
    router = Router(delivery_timeout=7.0)
    router.open_mailbox("a", capacity=1)
    await router.tell("me", "a", 1)
    with pytest.raises(DeliveryTimeout) as caught:
        await router.tell("me", "a", 2)
    assert (7.0, 7.0) == (caught.value.timeout, trio.current_time())
    with pytest.raises(DeliveryTimeout):
        await router.ask("me", "a", 3, timeout=1.5)
    assert 8.5 == trio.current_time()
    assert ["delivery timeout", "delivery timeout"] == [d.reason for d in router.dead_letters]


async def test_the_dead_letter_log_is_bounded_but_every_letter_is_counted():
    """Only the newest dead letters are kept; statistics count them all."""
    router = Router(dead_letter_limit=3)
    for n in range(10):
        with pytest.raises(UnknownRecipient):
            await router.tell("me", "nobody", n)
    assert [8, 9, 10] == [letter.message_id for letter in router.dead_letters]
    assert RouterStatistics(registered=0, running=0, routed=0, dead_letters=10) == (
        router.statistics()
    )


async def test_a_restarted_actor_re_registers_its_name_with_a_fresh_mailbox():
    """Opening a mailbox for a name whose mailbox closed replaces it; messages flow again."""
    router = Router()
    first = router.open_mailbox("a", role="worker")
    first.close("crashed: Boom()")
    with pytest.raises(ActorDead):
        await router.tell("me", "a", "lost")
    second = router.open_mailbox("a", role="worker")
    await router.tell("me", "a", "found")
    assert ["found"] == [e.message for e in await drain(second)]
    assert router.is_running("a")


async def test_a_running_name_cannot_be_registered_twice():
    """Two open mailboxes under one name would split its messages: refused."""
    router = Router()
    router.open_mailbox("a")
    with pytest.raises(ValueError, match="already running"):
        router.open_mailbox("a")


async def test_names_can_be_listed_by_role_and_unregistered():
    """names() lists registration order, filtered by role; unregister forgets a name."""
    router = Router()
    router.open_mailbox("planner", role="planner")
    router.open_mailbox("w1", role="worker")
    router.open_mailbox("w2", role="worker")
    assert ("planner", "w1", "w2") == router.names()
    assert ("w1", "w2") == router.names(role="worker")
    assert "worker" == router.role_of("w2")
    router.unregister("w1")
    assert ("w2",) == router.names(role="worker")
    with pytest.raises(UnknownRecipient):
        router.role_of("w1")
    with pytest.raises(UnknownRecipient):
        router.mailbox("w1")


@pytest.mark.parametrize("capacity", [0, -1])
async def test_a_mailbox_must_be_bounded_and_non_empty(capacity):
    """Capacity must be a positive number of messages."""
    with pytest.raises(ValueError, match="capacity"):
        Router().open_mailbox("a", capacity=capacity)


@attrs.define(eq=False)
class Peer(Actor):
    """Records (sender, payload, message id) of every message it receives."""

    received: list[tuple[str, int, int]] = attrs.field(factory=list)

    async def handle(self, message: Any) -> Any:
        if message == "count":
            return len(self.received)
        envelope = self.current_envelope
        assert envelope is not None
        self.received.append((envelope.sender, message, envelope.message_id))
        return None


async def test_a_thousand_actors_exchange_messages_without_loss():
    """1000 supervised actors, 20 messages each to random peers through 4-slot mailboxes:
    every message arrives exactly once, in order per sender and recipient."""
    count, per_actor = 1000, 20
    router = Router()
    peers = [Peer(f"p{n}", router=router, mailbox_size=4) for n in range(count)]
    supervisor = Supervisor("team", peers)
    rng = random.Random(1234)
    plan = {peer.name: [rng.randrange(count) for _ in range(per_actor)] for peer in peers}

    async def send_all(name: str) -> None:
        for seq, target in enumerate(plan[name]):
            await router.tell(name, f"p{target}", seq)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            async with trio.open_nursery() as senders:
                for peer in peers:
                    senders.start_soon(send_all, peer.name)
            counts = [await peer.ask("count") for peer in peers]
            supervisor.stop()

    assert count * per_actor == sum(counts)
    expected: dict[tuple[str, str], list[int]] = defaultdict(list)
    for name, targets in plan.items():
        for seq, target in enumerate(targets):
            expected[(name, f"p{target}")].append(seq)
    actual: dict[tuple[str, str], list[int]] = defaultdict(list)
    for peer in peers:
        last_id: dict[str, int] = {}
        for sender, seq, message_id in peer.received:
            actual[(sender, peer.name)].append(seq)
            assert message_id > last_id.get(sender, 0)
            last_id[sender] = message_id
    assert expected == actual
    assert () == router.dead_letters
    assert count * per_actor + count == router.statistics().routed
