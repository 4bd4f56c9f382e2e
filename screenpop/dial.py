"""Click-to-dial: the agent's device rings first, then the number is dialled (AMI ``Originate``).

``originate_fields`` is the pure part (what is sent); ``ClickToDial.dial`` checks the number and
the consent, sends the action and returns at once: with ``Async: true`` Asterisk answers
"Originate successfully queued" and the call shows up through the ordinary AMI events.

Rules:

Rule 1 (number). The number is read as a phone number in the default region (E.164,
        ``customers.identities.normalise_phone``); anything else is refused (400,
        ``field=number``).
Rule 2 (consent). ``CustomerStore.may_call(number, now)`` decides (number- and customer-level
        do-not-call, the call permission, quiet hours, the calling window in the callee's local
        time); a refusal is 403 ``may-not-call`` with every reason in the message.
Rule 3 (originate). ``Channel`` is the agent's device, ``Context`` the configured dial context,
        ``Exten`` the E.164 number, ``Priority`` 1, ``Timeout`` the ring time of the agent's
        device in ms, ``Async`` true, the configured ``CallerID`` when set, and the channel
        variables ``CALLBRIDGE_AGENT`` (the agent who clicked) and, when known, ``CUSTOMER_ID``
        (which ``manager.conf`` ``channelvars`` reports, so the call model and the pop know the
        customer). An Originate is never re-sent: a lost answer is reported, not retried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cti.ami.client import NotConnected
from cti.ami.codec import AMIError
from customers.identities import normalise_phone
from customers.store import CustomerStore, InvalidInput
from screenpop.refusal import Refusal

__all__ = ["AGENT_VARIABLE", "ClickToDial", "DialConfig", "DialError", "DialRequest", "originate_fields"]

log = logging.getLogger(__name__)

AGENT_VARIABLE = "CALLBRIDGE_AGENT"


class DialConfig(Protocol):
    """``callbridge.settings.DialSettings``."""

    @property
    def context(self) -> str: ...
    @property
    def caller_id(self) -> str: ...
    @property
    def timeout(self) -> float: ...


class DialError(Refusal):
    """A dial refused."""


@dataclass(frozen=True, slots=True)
class DialRequest:
    agent_id: str
    device: str
    number: str
    """E.164."""
    customer_id: str | None = None


def originate_fields(request: DialRequest, config: DialConfig) -> list[tuple[str, str]]:
    """The ``Originate`` headers for ``request`` (Rule 3); ``Variable`` repeats."""
    fields = [
        ("Channel", request.device),
        ("Context", config.context),
        ("Exten", request.number),
        ("Priority", "1"),
        ("Timeout", str(round(config.timeout * 1000))),
        ("Async", "true"),
    ]
    if config.caller_id:
        fields.append(("CallerID", config.caller_id))
    fields.append(("Variable", f"{AGENT_VARIABLE}={request.agent_id}"))
    if request.customer_id:
        fields.append(("Variable", f"CUSTOMER_ID={request.customer_id}"))
    return fields


class ClickToDial:
    def __init__(
        self,
        store: CustomerStore,
        send_action: Callable[..., Any],
        config: DialConfig,
        *,
        region: str = "US",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._send_action = send_action
        self.config = config
        self.region = region
        self.clock = clock

    async def dial(
        self, agent_id: str, device: str, number: str, customer_id: str | None = None
    ) -> dict[str, Any]:
        """Check, send the ``Originate``, return what was sent (module rules)."""
        try:
            e164 = normalise_phone(number, self.region, field="number").e164
        except InvalidInput as exc:
            raise DialError(400, "invalid-number", str(exc), "number") from None
        permission = await self.store.may_call(e164, self.clock())
        if not permission.allowed:
            raise DialError(
                403,
                "may-not-call",
                f"{e164} may not be called now: " + "; ".join(permission.reasons),
                "number",
            )
        if customer_id is None and len(permission.customer_ids) == 1:
            # The one holder of the number: its CUSTOMER_ID rides on the Originate, so the pop
            # shows the customer while the agent's device rings (the number itself only appears
            # in AMI once the agent answers).
            customer_id = permission.customer_ids[0]
        request = DialRequest(agent_id, device, e164, customer_id)
        fields = originate_fields(request, self.config)
        try:
            result = await self._send_action("Originate", fields)
        except NotConnected:
            raise DialError(503, "pbx-unavailable", "no link to the PBX; nothing was dialled") from None
        except AMIError as exc:
            # An Originate is never sent again: the PBX may have placed the call.
            raise DialError(503, "pbx-error", f"Originate not confirmed: {exc}") from None
        if not result.ok:
            raise DialError(503, "originate-refused", f"the PBX refused the Originate: {result.message}")
        log.info(
            "click-to-dial %s from %s",
            e164,
            device,
            extra={"agent_id": agent_id, "action_id": result.action_id},
        )
        return {
            "number": e164,
            "action_id": result.action_id,
            "originate": [[name, value] for name, value in fields],
            "message": result.message,
        }
