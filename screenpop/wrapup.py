"""The wrap-up desk: the agent's disposition and notes for a call, on the customer's timeline,
and the wrap-up pause in the queues while the agent writes them.

``WrapupDesk`` is the pure core: it is fed the pop commands of the tracker (with the assembled
payload of each ``ShowPop``) and the call snapshots, validates a submit, and returns
``PauseAgent`` commands; ``now`` is passed in. ``WrapupService`` is the asyncio shell: the
customer store writes, the AMI ``QueuePause`` actions (one worker task, in order) and the
``max_seconds`` timer.

Rules:

Rule 1 (memory). The desk remembers each pop it was shown, by pop id, with its agent, call facts
        and customer. A pop retracted while it still rang was never the agent's call: it is
        forgotten. A call the agent answered stays wrap-able after its retract, for
        ``keep_seconds`` after it ended (and at most ``max_per_agent`` per agent, oldest out).
Rule 2 (submit). Checked in this order: the body (disposition in the configured list: 400
        ``field=disposition``; notes when the disposition requires them: 400 ``field=notes``),
        then the pop (unknown, or another agent's: 404 ``field=pop_id``, never saying which),
        then its state (still ringing: 409 ``not-answered``; wrapped up already or being
        wrapped up: 409 ``already-wrapped-up``).
Rule 3 (timeline). A submit appends ONE ``call`` interaction to the customer's timeline with
        ``source="agent:<agent id>"`` and ``external_id=<call id>``: a retried submit (its
        answer lost) returns the stored one instead of writing twice, and two agents who both
        took the call (a transfer) get one each. The notes go in as an agent note after it. The
        customer is the one named in the submit, else the one the pop resolved to (or was
        created or linked from the pop). Without one (an unknown caller nobody created) nothing
        is written to the store: the outcome is logged and sent to the ``wrapup`` webhooks.
Rule 4 (pause). With ``pause`` on, an agent is paused (``PauseAgent(paused=True)``) when an
        answered call of theirs ends without a wrap-up yet, and resumed when their last such
        call is wrapped up or ``max_seconds`` after the latest of those calls ended (0: no
        limit). A call wrapped up before it ends causes no pause. The shell leaves alone an
        agent already paused for another reason (and never resumes them), and tries a resume
        that failed (the PBX link down) again every ``resume_retry`` seconds: an AMI error is
        logged and reported in the submit's answer, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from cti.ami.codec import AMIError
from cti.model import Agent, Call, CallModel, CallState
from customers.store import CustomerStore, NotFound
from screenpop.refusal import Refusal
from screenpop.tracker import PopCommand, RetractPop, ShowPop, UpdatePop

__all__ = [
    "DispositionConfig",
    "PauseAgent",
    "TakenCall",
    "WrapupDesk",
    "WrapupError",
    "WrapupPlan",
    "WrapupService",
]

log = logging.getLogger(__name__)

MAX_NOTES: Final = 4000
_ACTION_TIMEOUT: Final = 10.0


class DispositionConfig(Protocol):
    """``callbridge.settings.Disposition``."""

    @property
    def code(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def notes_required(self) -> bool: ...


class WrapupError(Refusal):
    """A submit refused."""


@dataclass(frozen=True, slots=True)
class PauseAgent:
    """Pause (or resume) the agent in its queues with ``reason`` (AMI ``QueuePause``)."""

    agent_id: str
    paused: bool
    reason: str


@dataclass(slots=True)
class TakenCall:
    """One pop the desk remembers (Rule 1)."""

    pop_id: str
    agent_id: str
    call_id: str
    facts_json: str
    """The pop's last facts, encoded: the desk keeps an hour of calls, and as dicts their facts
    were most of what the garbage collector walked (``facts`` decodes them when needed)."""
    customer_id: str | None
    shown_at: float
    answered: bool = False
    answered_at: float | None = None
    ended_at: float | None = None
    wait_time: float | None = None
    talk_time: float | None = None
    submitting: bool = False
    outcome: dict[str, Any] | None = None
    """Set once wrapped up: what was submitted and stored."""

    @property
    def facts(self) -> dict[str, Any]:
        facts: dict[str, Any] = json.loads(self.facts_json)
        return facts

    @property
    def number(self) -> str | None:
        """The customer's number: the caller inbound, the dialled number outbound."""
        facts = self.facts
        key = "remote_num" if facts.get("direction") == "outbound" else "caller_num"
        value = facts.get(key) or facts.get("remote_num")
        return value.strip() or None if isinstance(value, str) else None

    def talk_seconds(self, now: float) -> float | None:
        """Asterisk's ``TalkTime`` when it came, else from the answer to the end (or now)."""
        if self.talk_time is not None:
            return self.talk_time
        if self.answered_at is None:
            return None
        end = self.ended_at if self.ended_at is not None else now
        return round(max(0.0, end - self.answered_at), 3)


@dataclass(frozen=True, slots=True)
class WrapupPlan:
    """A validated submit: what ``WrapupService`` writes."""

    call: TakenCall
    disposition: DispositionConfig
    notes: str
    customer_id: str | None


@dataclass(slots=True)
class _PauseState:
    awaiting: set[str] = field(default_factory=set)
    """Pop ids whose call ended without a wrap-up."""
    deadline: float = math.inf


class WrapupDesk:
    """The pure core (module rules)."""

    def __init__(
        self,
        dispositions: Sequence[DispositionConfig],
        *,
        pause: bool = False,
        reason: str = "Wrap-up",
        max_seconds: float = 120.0,
        keep_seconds: float = 3600.0,
        max_per_agent: int = 200,
    ) -> None:
        self.dispositions = {d.code: d for d in dispositions}
        self.pause = pause
        self.reason = reason
        self.max_seconds = max_seconds
        self.keep_seconds = keep_seconds
        self.max_per_agent = max_per_agent
        self._calls: dict[str, TakenCall] = {}
        self._by_agent: dict[str, OrderedDict[str, None]] = {}
        self._by_call: dict[str, set[str]] = {}
        self._paused: dict[str, _PauseState] = {}
        self._pruned_at = -math.inf

    def __len__(self) -> int:
        return len(self._calls)

    def get(self, agent_id: str, pop_id: str) -> TakenCall:
        """The agent's pop; 404 for an unknown pop and for another agent's alike (Rule 2)."""
        call = self._calls.get(pop_id)
        if call is None or call.agent_id != agent_id:
            raise WrapupError(404, "pop-not-found", f"no call of yours with pop id {pop_id!r}", "pop_id")
        return call

    def pending(self, agent_id: str) -> list[TakenCall]:
        """The agent's answered calls that ended and wait for a wrap-up, oldest first."""
        calls = (self._calls[p] for p in self._by_agent.get(agent_id, ()))
        return [c for c in calls if c.answered and c.ended_at is not None and c.outcome is None]

    def paused(self, agent_id: str) -> bool:
        return agent_id in self._paused

    def observe(self, command: PopCommand, payload: Mapping[str, Any] | None, now: float) -> list[PauseAgent]:
        """Take one tracker command (and the payload of a ``ShowPop``)."""
        self._prune(now)
        if isinstance(command, ShowPop):
            customer = payload.get("customer") if payload is not None else None
            customer_id = customer.get("id") if isinstance(customer, Mapping) else None
            call = TakenCall(
                command.pop_id,
                command.agent_id,
                command.call_id,
                json.dumps(command.facts),
                customer_id if isinstance(customer_id, str) else None,
                shown_at=now,
            )
            self._calls[command.pop_id] = call
            agent_pops = self._by_agent.setdefault(command.agent_id, OrderedDict())
            agent_pops[command.pop_id] = None
            self._by_call.setdefault(command.call_id, set()).add(command.pop_id)
            self._take_facts(call, command.facts, now)
            while len(agent_pops) > self.max_per_agent:
                self._forget(next(iter(agent_pops)))
            return []
        call_record = self._calls.get(command.pop_id)
        if call_record is None:
            return []
        if isinstance(command, UpdatePop):
            call_record.facts_json = json.dumps(command.facts)
            self._take_facts(call_record, command.facts, now)
            return []
        assert isinstance(command, RetractPop)
        if not call_record.answered:
            self._forget(command.pop_id)
            return []
        if call_record.ended_at is None:
            call_record.ended_at = now
        if not self.pause or call_record.outcome is not None or call_record.submitting:
            return []
        state = self._paused.get(call_record.agent_id)
        fresh = state is None
        if state is None:
            state = self._paused[call_record.agent_id] = _PauseState()
        state.awaiting.add(call_record.pop_id)
        state.deadline = now + self.max_seconds if self.max_seconds > 0 else math.inf
        return [PauseAgent(call_record.agent_id, True, self.reason)] if fresh else []

    def observe_call(self, call: Call, now: float) -> None:
        """The call facts the pops do not carry (talk time, the end) for calls with a record."""
        pop_ids = self._by_call.get(call.id)
        if not pop_ids:
            return
        for pop_id in pop_ids:
            record = self._calls[pop_id]
            if call.wait_time is not None:
                record.wait_time = call.wait_time
            if call.talk_time is not None and call.agent == record.agent_id:
                record.talk_time = call.talk_time
            if call.state is CallState.ENDED and record.answered and record.ended_at is None:
                record.ended_at = call.ended_at if call.ended_at is not None else now

    def customer_found(self, pop_id: str, customer_id: str) -> None:
        """The pop's caller turned out to be ``customer_id`` (its payload is assembled after the
        desk saw the pop); a customer set already, by the agent, stays."""
        record = self._calls.get(pop_id)
        if record is not None and record.customer_id is None:
            record.customer_id = customer_id

    def set_customer(self, agent_id: str, pop_id: str, customer_id: str) -> None:
        self.get(agent_id, pop_id).customer_id = customer_id

    def begin(
        self, agent_id: str, pop_id: str, disposition: str, notes: str, customer_id: str | None
    ) -> WrapupPlan:
        """Validate a submit (Rule 2) and mark it in progress; ``finish`` or ``abort`` follows."""
        chosen = self.dispositions.get(disposition)
        if chosen is None:
            known = ", ".join(self.dispositions)
            raise WrapupError(
                400,
                "invalid-disposition",
                f"unknown disposition {disposition!r}; one of {known}",
                "disposition",
            )
        notes = notes.strip()
        if chosen.notes_required and not notes:
            raise WrapupError(400, "notes-required", f"the disposition {chosen.label!r} needs notes", "notes")
        if len(notes) > MAX_NOTES:
            raise WrapupError(400, "notes-too-long", f"notes: at most {MAX_NOTES} characters", "notes")
        call = self.get(agent_id, pop_id)
        if call.outcome is not None or call.submitting:
            raise WrapupError(409, "already-wrapped-up", f"the call of pop {pop_id} is wrapped up already")
        if not call.answered:
            raise WrapupError(409, "not-answered", f"the call of pop {pop_id} was not answered", "pop_id")
        call.submitting = True
        return WrapupPlan(call, chosen, notes, customer_id or call.customer_id)

    def abort(self, plan: WrapupPlan) -> None:
        """The writes failed: the call can be wrapped up again."""
        plan.call.submitting = False

    def finish(self, plan: WrapupPlan, outcome: dict[str, Any], now: float) -> list[PauseAgent]:
        """The submit is stored: remember its outcome; resume the agent after its last one (Rule 4)."""
        call = plan.call
        call.submitting = False
        call.outcome = outcome
        state = self._paused.get(call.agent_id)
        if state is None:
            return []
        state.awaiting.discard(call.pop_id)
        if state.awaiting:
            return []
        del self._paused[call.agent_id]
        return [PauseAgent(call.agent_id, False, self.reason)]

    def next_deadline(self) -> float | None:
        deadlines = [s.deadline for s in self._paused.values() if s.deadline != math.inf]
        return min(deadlines, default=None)

    def tick(self, now: float) -> list[PauseAgent]:
        """Resume the agents whose ``max_seconds`` passed (Rule 4)."""
        due = [agent for agent, state in self._paused.items() if state.deadline <= now]
        for agent in due:
            del self._paused[agent]
        return [PauseAgent(agent, False, self.reason) for agent in due]

    def _take_facts(self, call: TakenCall, facts: Mapping[str, Any], now: float) -> None:
        if facts.get("state") in ("answered", "held"):
            call.answered = True
            answered_at = facts.get("answered_at")
            if call.answered_at is None:
                call.answered_at = answered_at if isinstance(answered_at, (int, float)) else now
        wait = facts.get("wait_time")
        if isinstance(wait, (int, float)) and call.answered:
            call.wait_time = float(wait)

    def _prune(self, now: float) -> None:
        """Rule 1, at most once a minute: calls that ended more than ``keep_seconds`` ago go, and
        so do pops shown four times that long ago whose end never came (a resync lost it)."""
        if now - self._pruned_at < 60.0:
            return
        self._pruned_at = now
        ended_before, shown_before = now - self.keep_seconds, now - 4 * self.keep_seconds
        stale = [
            pop_id
            for pop_id, call in self._calls.items()
            if not call.submitting
            and (call.ended_at < ended_before if call.ended_at is not None else call.shown_at < shown_before)
        ]
        for pop_id in stale:
            self._forget(pop_id)

    def _forget(self, pop_id: str) -> None:
        call = self._calls.pop(pop_id, None)
        if call is None:
            return
        agent_pops = self._by_agent.get(call.agent_id)
        if agent_pops is not None:
            agent_pops.pop(pop_id, None)
            if not agent_pops:
                del self._by_agent[call.agent_id]
        pops = self._by_call.get(call.call_id)
        if pops is not None:
            pops.discard(pop_id)
            if not pops:
                del self._by_call[call.call_id]
        state = self._paused.get(call.agent_id)
        if state is not None:
            state.awaiting.discard(pop_id)


@dataclass(slots=True)
class _PauseJob:
    command: PauseAgent
    done: asyncio.Future[dict[str, Any]] | None


class WrapupService:
    """The asyncio shell around ``WrapupDesk``: store writes, ``QueuePause``, the timer.

    ``observe`` and ``observe_call`` never await (the pop pipeline calls them); the AMI actions
    they cause run on the worker task, one at a time, in the order they were decided."""

    def __init__(
        self,
        desk: WrapupDesk,
        store: CustomerStore,
        send_action: Callable[..., Any],
        model: CallModel,
        *,
        agent_names: Mapping[str, str] | None = None,
        on_outcome: Callable[[dict[str, Any]], object] | None = None,
        clock: Callable[[], float] = time.time,
        resume_retry: float = 5.0,
    ) -> None:
        """``resume_retry``: seconds between attempts to resume an agent whose resume failed (the
        PBX link was down): the pause is real in Asterisk and must not outlive the wrap-up."""
        self.desk = desk
        self.store = store
        self._send_action = send_action
        self._model = model
        self._names: Mapping[str, str] = agent_names if agent_names is not None else {}
        """Read at each wrap-up, so agents renamed at run time are written under their new name."""
        self._on_outcome = on_outcome
        self._clock = clock
        self._jobs: asyncio.Queue[_PauseJob] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._paused_by_us: set[str] = set()
        self._resume_failed: dict[str, tuple[str, float]] = {}
        """Agents whose resume failed: the reason and when to try again."""
        self._resume_retry = resume_retry

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._work(), name="wrapup-pause"),
            asyncio.create_task(self._time(), name="wrapup-timer"),
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def observe(self, command: PopCommand, payload: Mapping[str, Any] | None, now: float) -> None:
        self._queue_pauses(self.desk.observe(command, payload, now))

    def observe_call(self, call: Call, now: float) -> None:
        self.desk.observe_call(call, now)

    def customer_found(self, pop_id: str, customer_id: str) -> None:
        self.desk.customer_found(pop_id, customer_id)

    async def submit(
        self,
        agent_id: str,
        pop_id: str,
        disposition: str,
        notes: str = "",
        customer_id: str | None = None,
    ) -> dict[str, Any]:
        """Store one wrap-up (Rules 2, 3); the answer says what was stored and the pause result."""
        plan = self.desk.begin(agent_id, pop_id, disposition, notes, customer_id)
        try:
            outcome = await self._store(plan)
        except BaseException:
            self.desk.abort(plan)
            raise
        now = self._clock()
        resumes = self.desk.finish(plan, outcome, now)
        pause: dict[str, Any] = {"paused": self.desk.paused(agent_id) or agent_id in self._paused_by_us}
        if resumes:
            pause = await self._run_now(resumes[0])
        self._queue_pauses(resumes[1:])
        outcome_event = {
            **outcome,
            "notes": plan.notes,
            "caller_num": plan.call.number,
            "direction": plan.call.facts.get("direction"),
        }
        if self._on_outcome is not None:
            try:
                self._on_outcome(outcome_event)
            except Exception:
                log.exception("wrap-up of pop %s: the outcome was not published", pop_id)
        return {**outcome, "pause": pause}

    async def _store(self, plan: WrapupPlan) -> dict[str, Any]:
        call = plan.call
        now = self._clock()
        customer_id = plan.customer_id
        if customer_id is not None:
            try:
                customer_id = (await self.store.get_customer(customer_id)).id
            except NotFound:
                raise WrapupError(
                    404, "customer-not-found", f"no customer {plan.customer_id!r}", "customer_id"
                ) from None
        talk = call.talk_seconds(now)
        facts = call.facts
        data = {
            "call_id": call.call_id,
            "pop_id": call.pop_id,
            "queue": facts.get("queue"),
            "agent": call.agent_id,
            "agent_name": self._names.get(call.agent_id, call.agent_id),
            "wait": call.wait_time,
            "talk": talk,
            "disposition": plan.disposition.code,
            "disposition_label": plan.disposition.label,
            "number": call.number,
        }
        outcome: dict[str, Any] = {
            "pop_id": call.pop_id,
            "call_id": call.call_id,
            "agent_id": call.agent_id,
            "customer_id": customer_id,
            "disposition": plan.disposition.code,
            "queue": data["queue"],
            "wait": call.wait_time,
            "talk": talk,
            "interaction_id": None,
            "note_id": None,
            "stored": False,
        }
        if customer_id is None:
            log.info(
                "wrap-up of an unknown caller: %s, nothing stored on a timeline",
                plan.disposition.code,
                extra={"call_id": call.call_id, "agent_id": call.agent_id, "pop_id": call.pop_id},
            )
            return outcome
        queue = f" ({data['queue']})" if data["queue"] else ""
        interaction = await self.store.append_interaction(
            customer_id,
            "call",
            at=call.answered_at if call.answered_at is not None else call.shown_at,
            direction=str(facts.get("direction") or ""),
            summary=f"Call{queue}: {plan.disposition.label}",
            data=data,
            source=f"agent:{call.agent_id}",
            external_id=call.call_id,
        )
        outcome["interaction_id"] = interaction.id
        outcome["stored"] = True
        if plan.notes:
            note = await self.store.add_note(customer_id, call.agent_id, plan.notes)
            outcome["note_id"] = note.id
        log.info(
            "wrap-up %s stored for customer %s",
            plan.disposition.code,
            customer_id,
            extra={"call_id": call.call_id, "agent_id": call.agent_id, "pop_id": call.pop_id},
        )
        return outcome

    # --- the pause ------------------------------------------------------------------------------

    def _queue_pauses(self, commands: Iterable[PauseAgent]) -> None:
        queued = False
        for command in commands:
            self._jobs.put_nowait(_PauseJob(command, None))
            queued = True
        if queued:
            self._wake.set()

    async def _run_now(self, command: PauseAgent) -> dict[str, Any]:
        """Run ``command`` behind the ones queued before it, and wait for its result."""
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._jobs.put_nowait(_PauseJob(command, done))
        try:
            async with asyncio.timeout(_ACTION_TIMEOUT * 2):
                return await asyncio.shield(done)
        except TimeoutError:
            return {"paused": True, "ok": False, "error": "the PBX did not answer QueuePause in time"}

    async def _work(self) -> None:
        while True:
            job = await self._jobs.get()
            try:
                result = await self._apply(job.command)
            except Exception as exc:
                log.exception("QueuePause for agent %s failed", job.command.agent_id)
                result = {"paused": not job.command.paused, "ok": False, "error": str(exc)}
            if job.done is not None and not job.done.done():
                job.done.set_result(result)

    async def _time(self) -> None:
        while True:
            deadline = self.desk.next_deadline()
            due = [
                *([deadline] if deadline is not None else []),
                *(d for _, d in self._resume_failed.values()),
            ]
            timeout = max(0.0, min(due) - self._clock()) if due else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            now = self._clock()
            retries = []
            for agent, (reason, at) in list(self._resume_failed.items()):
                if at <= now:
                    del self._resume_failed[agent]
                    retries.append(PauseAgent(agent, False, reason))
            self._queue_pauses([*self.desk.tick(now), *retries])

    async def _apply(self, command: PauseAgent) -> dict[str, Any]:
        """``QueuePause`` on each of the agent's queue-member interfaces (no ``Queue``: Asterisk
        then pauses "the member in all the queues it is a member of")."""
        agent_id = command.agent_id
        agent = self._model.agent(agent_id)
        interfaces = _member_interfaces(agent)
        if command.paused:
            # A pause of the agent's own (lunch, training) is left alone; a late event of our
            # previous pause still shows our reason.
            if agent is not None and agent.paused_queues and agent.paused_reason != command.reason:
                log.info(
                    "agent %s already paused (%s); no wrap-up pause",
                    agent_id,
                    agent.paused_reason,
                    extra={"agent_id": agent_id},
                )
                return {
                    "paused": True,
                    "ok": True,
                    "skipped": f"already paused ({agent.paused_reason or ''})",
                }
        elif agent_id not in self._paused_by_us:
            return {"paused": False, "ok": True}
        if not interfaces:
            return {"paused": False, "ok": False, "error": "the agent is in no queue the PBX reported"}
        errors = []
        for interface in interfaces:
            fields = {"Interface": interface, "Paused": "true" if command.paused else "false"}
            if command.paused:
                fields["Reason"] = command.reason
            try:
                result = await self._send_action("QueuePause", fields, timeout=_ACTION_TIMEOUT)
            except AMIError as exc:
                errors.append(f"{interface}: {exc}")
                continue
            if not result.ok:
                errors.append(f"{interface}: {result.message or result.response.name}")
        if command.paused:
            self._paused_by_us.add(agent_id)
            self._resume_failed.pop(agent_id, None)
        elif errors:
            self._resume_failed[agent_id] = (command.reason, self._clock() + self._resume_retry)
            self._wake.set()
        else:
            self._paused_by_us.discard(agent_id)
        verb = "paused" if command.paused else "resumed"
        if errors:
            log.warning(
                "wrap-up: agent %s not %s: %s",
                agent_id,
                verb,
                "; ".join(errors),
                extra={"agent_id": agent_id},
            )
            return {"paused": command.paused, "ok": False, "error": "; ".join(errors)}
        log.info("wrap-up: agent %s %s (%s)", agent_id, verb, command.reason, extra={"agent_id": agent_id})
        return {"paused": command.paused, "ok": True, "interfaces": interfaces}


def _member_interfaces(agent: Agent | None) -> list[str]:
    if agent is None:
        return []
    return list(dict.fromkeys(m.interface for m in agent.memberships))
