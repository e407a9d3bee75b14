"""The deterministic dialogue policy: one per call, from greeting to goodbye.

Each turn is parsed by `agent.nlu` and handled in two steps: first against what the previous reply
asked for (`Expecting`: a yes/no, a name, a time...), then, if the utterance is not an answer to that,
by its intent. Every change to the CRM is read back and confirmed before it is made.

The booking, cancel and reschedule flows, and the call state they share, are in `agent.booking_flow`;
this module routes each turn and answers the questions about orders, parts, services and hours.

The policy is synchronous (the session runs it in a worker thread) and never raises: a `ToolError`
becomes a spoken recovery and anything unexpected is logged and answered with an apology.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable

from agent import nlu
from agent.booking_flow import ANYTHING_ELSE, BookingDraft, BookingFlow, Expecting
from agent.booking_flow import AgentReply as AgentReply
from agent.nlu import Intent, Understanding
from agent.phrasing import spoken_code, spoken_date, spoken_list, spoken_price, with_article
from tools.api import InvalidRequest, NotFound, ToolBox, ToolError

log = logging.getLogger(__name__)

MAX_MISUNDERSTANDINGS = 3  # then a person is offered
MAX_SILENCES = 3  # then the call is ended politely
MAX_ORDER_NUMBER_TRIES = 2
CAPABILITIES = (
    "I can book a service, check or cancel a booking, look up an order or a part, or tell you our hours "
    "and address."
)


_YES_NO_STATES = frozenset(
    {
        Expecting.BOOKING_CONFIRM,
        Expecting.CANCEL_CONFIRM,
        Expecting.OFFER_BOOKING,
        Expecting.TRANSFER_OFFER,
        Expecting.ANYTHING_ELSE,
        Expecting.SLOT_CHOICE,
    }
)


def _last_question(text: str) -> str | None:
    sentences = re.split(r"(?<=[.?!])\s+", text.strip())
    return sentences[-1] if sentences and sentences[-1].endswith("?") else None


class DialoguePolicy(BookingFlow):
    def __init__(
        self,
        tools: ToolBox,
        *,
        caller_phone: str | None,
        call_id: str | None,
        now: Callable[[], dt.datetime],
    ) -> None:
        super().__init__(tools, caller_phone=caller_phone, call_id=call_id, now=now)
        self._misunderstandings = 0
        self._order_tries = 0
        self._last: AgentReply | None = None

    # --- public API ------------------------------------------------------------------------------

    @property
    def facts(self) -> dict[str, str | int]:
        """Slots filled so far (service, date, time, booking_id, order_number...), for telemetry."""
        return dict(self._facts)

    def greet(self) -> AgentReply:
        reply = self._guarded(self._greet, "greet")
        if reply.intent == "error":  # the CRM is down: still answer the phone like a person would
            self._misunderstandings = 0
            reply = self._ask(
                "Hi, thanks for calling. How can I help you today?", Expecting.NOTHING, "greeting"
            )
            self._last = reply
        return reply

    def respond(self, text: str) -> AgentReply:
        return self._guarded(lambda: self._respond(text), text)

    def understands(self, text: str) -> bool:
        """Whether `text` is something this policy has a rule for, given what it just asked: a known
        intent, a slot value, an answer, or (when a part was asked for) any part name. The router sends
        everything else to the language model. Pure: no state changes, no CRM calls."""
        u = self._understand(text)
        return not u.text or u.intent is not Intent.UNKNOWN or self._expecting is Expecting.PRODUCT

    def on_silence(self, count: int) -> AgentReply:
        return self._guarded(lambda: self._silence(count), f"<silence {count}>")

    def on_dtmf(self, digit: str) -> AgentReply:
        return self._guarded(lambda: self._dtmf(digit), f"<dtmf {digit}>")

    # --- plumbing --------------------------------------------------------------------------------

    def _guarded(self, turn: Callable[[], AgentReply], what: str) -> AgentReply:
        try:
            reply = turn()
        except ToolError as exc:
            # Each flow catches the errors it can explain; this is what slipped through.
            log.warning("tool error in dialogue turn %r: %r", what, exc)
            reply = self._recovery()
        except Exception:
            log.exception("dialogue turn %r failed", what)
            reply = self._recovery()
        self._last = reply
        return reply

    def _recovery(self) -> AgentReply:
        self._expecting = Expecting.NOTHING
        self._misunderstandings += 1
        if self._misunderstandings >= MAX_MISUNDERSTANDINGS:
            return self._offer_person("Sorry, I had trouble with that.")
        return AgentReply("Sorry, I had trouble with that. Could you say it again?", intent="error")

    # --- turns -----------------------------------------------------------------------------------

    def _greet(self) -> AgentReply:
        try:
            business = self._business_info().name
        except ToolError:
            business = "us"
        customer = self._caller()
        hello = f"Hi {customer.name.split()[0]}" if customer else "Hi"
        return self._ask(
            f"{hello}, thanks for calling {business}. How can I help you today?",
            Expecting.NOTHING,
            "greeting",
        )

    def _silence(self, count: int) -> AgentReply:
        if count >= MAX_SILENCES:
            return AgentReply(
                "I'm sorry, I can't hear you. Please call us back any time. Goodbye.",
                intent="silence",
                hangup=True,
            )
        question = (_last_question(self._last.text) if self._last else None) or "How can I help you?"
        lead = "Are you still there?" if count <= 1 else "Sorry, I can't hear anything."
        return AgentReply(f"{lead} {question}", intent="silence")

    def _dtmf(self, digit: str) -> AgentReply:
        if digit == "0":
            return self._transfer()
        if digit in ("1", "2") and self._expecting is Expecting.SLOT_CHOICE and len(self._draft.offered) > 1:
            return self._respond("the first one" if digit == "1" else "the second one")
        if digit in ("1", "2") and self._expecting in _YES_NO_STATES:
            return self._respond("yes" if digit == "1" else "no")
        if digit == "*" and self._last is not None:
            return self._last
        return AgentReply("Please just tell me what you need, or press 0 to speak to someone.", intent="dtmf")

    def _understand(self, text: str) -> Understanding:
        return nlu.understand(
            text,
            self._today(),
            expect_time=self._expecting
            in (Expecting.BOOKING_DETAIL, Expecting.SLOT_CHOICE, Expecting.CHANGE_WHAT),
            expect_name=self._expecting is Expecting.NAME,
        )

    def _respond(self, text: str) -> AgentReply:
        u = self._understand(text)
        if not u.text:
            question = (_last_question(self._last.text) if self._last else None) or "How can I help you?"
            return AgentReply(f"Sorry, I didn't catch that. {question}", intent="unknown")
        if u.intent is Intent.PERSON:
            return self._transfer()
        if u.intent is Intent.GOODBYE:
            return self._goodbye()
        if u.intent is Intent.REPEAT and self._last is not None:
            return self._last
        reply = self._answer_to_question(u)
        not_an_answer = u.intent in (Intent.AFFIRM, Intent.DENY, Intent.INFORM, Intent.UNKNOWN)
        if (
            reply is None
            and not_an_answer
            and self._expecting not in (Expecting.NOTHING, Expecting.ANYTHING_ELSE)
        ):
            reply = self._not_understood()  # ask the question again
        if reply is None:
            reply = self._by_intent(u)
        if reply.intent != str(Intent.UNKNOWN):
            self._misunderstandings = 0
        return reply

    def _answer_to_question(self, u: Understanding) -> AgentReply | None:
        """`u` read as an answer to what was just asked; None when it is not one."""
        expecting = self._expecting
        booking_info = any((u.service, u.date, u.time, u.part_of_day, u.earliest))
        if expecting is Expecting.BOOKING_CONFIRM:
            if booking_info and self._draft.merge(u):
                return self._advance_booking()
            service = self._service(self._draft.service) if self._draft.service else None
            if service is not None and u.product is None and re.search(nlu.PRICE_WORDS, u.text):
                what = with_article(service.name).capitalize()
                text = f"{what} takes about {self._cost(service)} Shall I book it?"
                return self._ask_booking(text, Expecting.BOOKING_CONFIRM)
            if u.answer is True:
                return self._commit_booking()
            if u.answer is False:
                return self._ask(
                    "No problem. What would you like to change: the day, the time or the service?",
                    Expecting.CHANGE_WHAT,
                    Intent.BOOK,
                )
        elif expecting in (Expecting.BOOKING_DETAIL, Expecting.CHANGE_WHAT, Expecting.NAME):
            if expecting is Expecting.NAME and u.name:
                return self._take_name(u.name)
            if booking_info and self._draft.merge(u):
                return self._advance_booking()
            if expecting is Expecting.CHANGE_WHAT:
                return self._what_to_change(u)
            if u.intent is Intent.DENY:
                self._draft = BookingDraft()
                return self._done("Okay, I won't book anything.", Intent.BOOK)
        elif expecting is Expecting.SLOT_CHOICE:
            return self._choose_offered(u)
        elif expecting is Expecting.BOOKING_CHOICE:
            chosen = self._pick_booking(u, self._candidates)
            if chosen is not None:
                return self._confirm_cancel_or_move(chosen)
        elif expecting is Expecting.CANCEL_CONFIRM:
            if u.answer is True:
                return self._cancel(self._candidates[0])
            if u.answer is False:
                return self._done("Okay, I'll leave it as it is.", Intent.CANCEL_BOOKING)
        elif expecting is Expecting.ORDER_NUMBER:
            if u.order_number:
                return self._order_status(u.order_number)
            if u.intent in (Intent.UNKNOWN, Intent.INFORM, Intent.ORDER_STATUS):
                return self._retry_order_number()
        elif expecting is Expecting.PRODUCT:
            if u.intent in (Intent.UNKNOWN, Intent.INFORM, Intent.PART_AVAILABILITY):
                return self._inventory(u.product or u.text)
        elif expecting is Expecting.OFFER_BOOKING:
            if u.answer is True or booking_info:
                self._draft.merge(u)
                return self._advance_booking()
            if u.answer is False:
                self._draft = BookingDraft()
                return self._ask("Okay. Anything else I can help with?", Expecting.ANYTHING_ELSE, Intent.DENY)
        elif expecting is Expecting.TRANSFER_OFFER:
            if u.answer is True:
                return self._transfer()
            if u.answer is False:
                self._misunderstandings = 0
                return self._ask(f"Okay, let's try again. {CAPABILITIES}", Expecting.NOTHING, Intent.DENY)
        elif expecting is Expecting.ANYTHING_ELSE:
            if u.intent in (Intent.DENY, Intent.THANKS):
                return self._goodbye()
            if u.intent is Intent.AFFIRM:
                return self._ask("Sure, what can I help you with?", Expecting.NOTHING, Intent.AFFIRM)
        return None

    def _by_intent(self, u: Understanding) -> AgentReply:
        intent = u.intent
        if intent is Intent.BOOK or (intent is Intent.INFORM and (u.service or u.date or u.time)):
            # A draft left behind by a side question ("what are your hours?") is picked up again;
            # finished or abandoned drafts were already cleared.
            if intent is Intent.BOOK and self._draft.replacing is not None:
                self._draft = BookingDraft()
            self._draft.merge(u)
            return self._advance_booking()
        if intent in (Intent.INFORM, Intent.GREETING) and u.name:
            self._heard_name = u.name
            return self._ask(f"Hi {u.name.split()[0]}! How can I help you today?", Expecting.NOTHING, intent)
        if intent in (Intent.CANCEL_BOOKING, Intent.RESCHEDULE):
            return self._start_cancel_or_move(u, move=intent is Intent.RESCHEDULE)
        if intent is Intent.CHECK_BOOKING:
            return self._check_bookings()
        if intent is Intent.ORDER_STATUS or (intent is Intent.INFORM and u.order_number):
            self._order_tries = 0
            if u.order_number:
                return self._order_status(u.order_number)
            return self._ask(
                "Sure. What's the order number? It's a letter followed by four digits.",
                Expecting.ORDER_NUMBER,
                Intent.ORDER_STATUS,
            )
        if intent is Intent.PART_AVAILABILITY:
            if u.product:
                return self._inventory(u.product)
            return self._ask("Which part are you looking for?", Expecting.PRODUCT, intent)
        if intent is Intent.SERVICE_INFO:
            return self._service_info(u.service)
        if intent is Intent.HOURS:
            return self._hours(u.date)
        if intent is Intent.ADDRESS:
            info = self._business_info()
            return self._done(f"We're at {info.address}.", intent)
        if intent is Intent.THANKS:
            return self._ask(f"You're welcome. {ANYTHING_ELSE}", Expecting.ANYTHING_ELSE, intent)
        if intent is Intent.GREETING:
            return self._ask("Hi! How can I help you today?", Expecting.NOTHING, intent)
        if intent is Intent.AFFIRM:
            return self._ask("Sure, what can I help you with?", Expecting.NOTHING, intent)
        if intent is Intent.DENY:
            return self._ask("Okay. Is there anything I can help you with?", Expecting.ANYTHING_ELSE, intent)
        return self._not_understood()

    def _not_understood(self) -> AgentReply:
        self._misunderstandings += 1
        if self._misunderstandings >= MAX_MISUNDERSTANDINGS:
            return self._offer_person("Sorry, I'm having trouble understanding.")
        asked = self._last is not None and self._expecting is not Expecting.NOTHING
        question = _last_question(self._last.text) if self._last is not None and asked else None
        return AgentReply(f"Sorry, I didn't get that. {question or CAPABILITIES}", intent=str(Intent.UNKNOWN))

    def _goodbye(self) -> AgentReply:
        try:
            business = self._business_info().name
        except ToolError:
            business = "us"
        return AgentReply(f"Thanks for calling {business}. Goodbye!", intent=str(Intent.GOODBYE), hangup=True)

    # --- information -----------------------------------------------------------------------------

    def _order_status(self, number: str) -> AgentReply:
        self._facts["order_number"] = number
        try:
            order = self._tools.order_status(number)
        except (NotFound, InvalidRequest):
            self._order_tries += 1
            if self._order_tries >= MAX_ORDER_NUMBER_TRIES:
                return self._offer_person(
                    f"Sorry, I can't find order {spoken_code(number)}.", Intent.ORDER_STATUS
                )
            return self._ask(
                f"Sorry, I can't find order {spoken_code(number)}. Could you say the order number again?",
                Expecting.ORDER_NUMBER,
                Intent.ORDER_STATUS,
            )
        self._facts["order_status"] = order.status
        customer = self._caller()
        whose = "your" if customer is not None and order.customer_id == customer.id else "the"
        return self._done(
            f"Order {spoken_code(order.number)}, {whose} {order.description}, is {order.status}.",
            Intent.ORDER_STATUS,
        )

    def _retry_order_number(self) -> AgentReply:
        self._order_tries += 1
        if self._order_tries > MAX_ORDER_NUMBER_TRIES:
            return self._offer_person("Sorry, I didn't get the order number.", Intent.ORDER_STATUS)
        return self._ask(
            "Sorry, I didn't get that. The order number is a letter followed by four digits. What is it?",
            Expecting.ORDER_NUMBER,
            Intent.ORDER_STATUS,
        )

    def _inventory(self, product: str) -> AgentReply:
        self._facts["product"] = product
        try:
            item = self._tools.check_inventory(product)
        except (NotFound, InvalidRequest):
            return self._done(f"Sorry, I couldn't find {product} in our stock.", Intent.PART_AVAILABILITY)
        price = spoken_price(item.price)
        if item.quantity > 0:
            text = f"Yes, we have {item.quantity} {item.name} in stock at {price} each."
        else:
            text = f"Sorry, the {item.name} are out of stock right now. They're normally {price} each."
        return self._done(text, Intent.PART_AVAILABILITY)

    def _service_info(self, name: str | None) -> AgentReply:
        service = self._service(name) if name else None
        self._draft = BookingDraft(service=service.name if service else None)
        if service is None:
            names = spoken_list([with_article(n) for n in self._services_list()], "and")
            text = f"We offer {names}. Would you like to book one?"
        else:
            what = with_article(service.name).capitalize()
            text = f"{what} takes about {self._cost(service)} Would you like to book one?"
        return self._ask(text, Expecting.OFFER_BOOKING, Intent.SERVICE_INFO)

    def _hours(self, day: dt.date | None) -> AgentReply:
        hours = self._business_info().hours_text
        if day is None:
            return self._done(f"We're open {hours}.", Intent.HOURS)
        if self._tools.is_open(day):
            return self._done(f"We're open on {spoken_date(day)}. Our hours are {hours}.", Intent.HOURS)
        return self._done(f"We're closed on {spoken_date(day)}. Our hours are {hours}.", Intent.HOURS)
