"""The booking, cancel and reschedule flows, and the call state they share with the rest of the dialogue.

`BookingFlow` holds what one call knows (the caller, the draft booking, what the last reply asked for)
and the turns that put a booking together over several replies, read it back and make it, or find one
of the caller's bookings and cancel or move it. `agent.dialogue.DialoguePolicy` extends it with the
routing of each turn and the information answers; the flows call back into the shared helpers here
(`_ask`, `_done`, `_offer_person`), never into the routing.

`AgentReply` and `Expecting` live here because the flows produce them; `agent.dialogue` re-exports
`AgentReply` as part of its public API.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from agent import nlu
from agent.nlu import Intent, Understanding
from agent.phrasing import spoken_date, spoken_duration, spoken_list, spoken_price, spoken_time, with_article
from tools.api import (
    BookingInfo,
    BusinessInfo,
    CustomerInfo,
    InvalidRequest,
    NotFound,
    ServiceInfo,
    Slot,
    SlotUnavailable,
    ToolBox,
    ToolError,
)

log = logging.getLogger(__name__)

EARLIEST_SEARCH_DAYS = 14
ANYTHING_ELSE = "Anything else I can help with?"

# Prices that are labour only; the caller should hear it before agreeing to one.
PRICE_NOTES = {"battery replacement": ", plus the battery"}
_BOOKING_LIVE = ("held", "confirmed", "needs_review")


@dataclass(frozen=True, slots=True)
class AgentReply:
    text: str  # what to say; several short sentences, the first one short (it is synthesised first)
    intent: str | None = None  # recognised intent name, for telemetry
    hangup: bool = False  # say text, then end the call
    transfer: bool = False  # say text, then hand over to a human


class Expecting(enum.Enum):
    """What the last reply asked the caller for."""

    NOTHING = "nothing"
    BOOKING_DETAIL = "booking_detail"  # a service, a day or a time
    SLOT_CHOICE = "slot_choice"  # one of the times offered
    NAME = "name"
    BOOKING_CONFIRM = "booking_confirm"
    CHANGE_WHAT = "change_what"  # the day, the time or the service, after a "no" to the read-back
    BOOKING_CHOICE = "booking_choice"  # which of the caller's bookings to cancel or move
    CANCEL_CONFIRM = "cancel_confirm"
    ORDER_NUMBER = "order_number"
    PRODUCT = "product"
    OFFER_BOOKING = "offer_booking"  # "Would you like to book one?"
    TRANSFER_OFFER = "transfer_offer"
    ANYTHING_ELSE = "anything_else"


@dataclass(slots=True)
class BookingDraft:
    """The booking being put together over several turns."""

    service: str | None = None
    date: dt.date | None = None
    time: dt.time | None = None
    part_of_day: str | None = None
    earliest: bool = False
    offered: list[Slot] = field(default_factory=list)
    chosen: Slot | None = None
    replacing: BookingInfo | None = None  # set when moving an existing booking

    def merge(self, u: Understanding) -> bool:
        """Take what `u` says about the booking; True when it said anything."""
        changed = False
        if u.service is not None:
            self.service, changed = u.service, True
        if u.date is not None:  # a time already given stays: "at ten" ... "tomorrow"
            self.date, changed = u.date, True
        if u.time is not None:
            self.time, changed = u.time, True
        if u.part_of_day is not None and u.time is None:
            self.part_of_day, self.time, changed = u.part_of_day, None, True
        if u.earliest:
            self.earliest, changed = True, True
        if changed:
            self.chosen = None
        return changed


def _in_part_of_day(slot: Slot, part_of_day: str | None) -> bool:
    hour = slot.start.hour
    if part_of_day == "morning":
        return hour < 12
    if part_of_day == "afternoon":
        # Callers who ask for the afternoon mean after lunch; 12:30 on a Saturday is not what they want.
        return 13 <= hour < 17
    if part_of_day == "evening":
        return hour >= 17
    return True


class BookingFlow:
    """The booking flows of one call and the state they share with `DialoguePolicy`."""

    def __init__(
        self,
        tools: ToolBox,
        *,
        caller_phone: str | None,
        call_id: str | None,
        now: Callable[[], dt.datetime],
    ) -> None:
        self._tools = tools
        self._caller_phone = caller_phone
        self._call_id = call_id
        self._now = now
        self._customer: CustomerInfo | None = None
        self._customer_looked_up = False
        self._business: BusinessInfo | None = None
        self._services: dict[str, ServiceInfo] | None = None
        self._expecting = Expecting.NOTHING
        self._draft = BookingDraft()
        self._candidates: list[BookingInfo] = []  # bookings being chosen between, or the one to cancel
        self._rescheduling = False
        self._heard_name: str | None = None  # "this is Jordan" from a caller we do not know
        self._facts: dict[str, str | int] = {}

    # --- shared helpers --------------------------------------------------------------------------

    def _ask(self, text: str, expecting: Expecting, intent: Intent | str | None) -> AgentReply:
        self._expecting = expecting
        return AgentReply(text, intent=str(intent) if intent is not None else None)

    def _ask_booking(self, text: str, expecting: Expecting = Expecting.BOOKING_DETAIL) -> AgentReply:
        intent = Intent.RESCHEDULE if self._draft.replacing is not None else Intent.BOOK
        return self._ask(text, expecting, intent)

    def _done(self, text: str, intent: Intent | str | None) -> AgentReply:
        """An answer that completes a request. A booking interrupted by a side question ("what are
        your hours?") is resumed; otherwise the caller is asked whether there is more."""
        if self._draft.service is not None or self._draft.date is not None:
            follow = self._advance_booking()
            return AgentReply(f"{text} {follow.text}", intent=str(intent), transfer=follow.transfer)
        return self._ask(f"{text} {ANYTHING_ELSE}", Expecting.ANYTHING_ELSE, intent)

    def _today(self) -> dt.date:
        return self._now().date()

    def _business_info(self) -> BusinessInfo:
        if self._business is None:
            self._business = self._tools.business_info()
        return self._business

    def _service(self, name: str) -> ServiceInfo | None:
        if self._services is None:
            self._services = {s.name: s for s in self._tools.list_services()}
        return self._services.get(name)

    def _caller(self) -> CustomerInfo | None:
        if not self._customer_looked_up and self._caller_phone:
            self._customer_looked_up = True
            try:
                self._customer = self._tools.lookup_customer(self._caller_phone)
            except ToolError as exc:  # an unusable caller ID: treat the caller as unknown
                log.info("caller lookup failed for %r: %r", self._caller_phone, exc)
            if self._customer is not None:
                self._facts.update(customer_id=self._customer.id, customer_name=self._customer.name)
        return self._customer

    def _offer_person(self, lead: str, intent: Intent = Intent.UNKNOWN) -> AgentReply:
        text = f"{lead} Would you like me to connect you to someone from our team?"
        return self._ask(text, Expecting.TRANSFER_OFFER, intent)

    def _transfer(self) -> AgentReply:
        self._expecting = Expecting.NOTHING
        self._facts["transfer"] = "requested"
        return AgentReply(
            "Let me connect you to someone from our team.", intent=str(Intent.PERSON), transfer=True
        )

    @staticmethod
    def _cost(service: ServiceInfo) -> str:
        """ "30 minutes and costs $49." (the tail of "It takes about ...")."""
        price = f"{spoken_price(service.price)}{PRICE_NOTES.get(service.name, '')}"
        return f"{spoken_duration(service.duration_min)} and costs {price}."

    # --- booking ---------------------------------------------------------------------------------

    def _advance_booking(self) -> AgentReply:
        """Ask for whatever the draft still lacks, or read it back for confirmation."""
        draft = self._draft
        draft.offered = []
        if draft.service is None:
            names = [with_article(name) for name in self._services_list()]
            return self._ask_booking(f"Sure. Which service would you like: {spoken_list(names)}?")
        service = self._service(draft.service)
        if service is None:  # the shop no longer offers what the recogniser heard
            draft.service = None
            return self._advance_booking()
        self._facts["service"] = service.name
        if draft.date is None and draft.earliest:
            draft.date = self._first_day_with_slots(service.name)
        if draft.date is None:
            return self._ask_booking(
                f"Sure, {with_article(service.name)}. What day would you like to come in?"
            )
        day = draft.date
        if day < self._today():
            draft.date = None
            return self._ask_booking("That day has already passed. What day would you like?")
        if not self._tools.is_open(day):
            draft.date = None
            return self._ask_booking(f"Sorry, we're closed on {spoken_date(day)}. Would another day work?")
        self._facts["date"] = day.isoformat()
        slots = self._tools.find_slots(service.name, day)
        if not slots:
            draft.date = None
            return self._ask_booking(
                f"Sorry, we're fully booked on {spoken_date(day)}. Would another day work?"
            )
        if draft.time is None:
            return self._offer_times(service, day, slots)
        start = dt.datetime.combine(day, draft.time)
        exact = next((slot for slot in slots if slot.start == start), None)
        if exact is None:
            return self._offer_alternatives(start, slots)
        draft.chosen = exact
        self._facts["time"] = exact.start.time().isoformat(timespec="minutes")
        return self._read_back(service, exact)

    def _first_day_with_slots(self, service: str) -> dt.date | None:
        """For "the earliest you have": the first open day with a free slot in the next two weeks."""
        today = self._today()
        for offset in range(EARLIEST_SEARCH_DAYS):
            day = today + dt.timedelta(days=offset)
            if self._tools.is_open(day) and self._tools.find_slots(service, day):
                return day
        return None

    def _services_list(self) -> list[str]:
        if self._services is None:
            self._services = {s.name: s for s in self._tools.list_services()}
        return list(self._services)

    def _offer_times(self, service: ServiceInfo, day: dt.date, slots: list[Slot]) -> AgentReply:
        """No time given yet: the earliest slot if asked for, else two to choose from."""
        draft = self._draft
        if draft.earliest:
            draft.chosen = slots[0]
            draft.time = slots[0].start.time()
            self._facts["time"] = draft.time.isoformat(timespec="minutes")
            return self._read_back(service, slots[0])
        wanted = [slot for slot in slots if _in_part_of_day(slot, draft.part_of_day)]
        if not wanted:
            hours = self._business_info().hours_text
            morning = draft.part_of_day == "morning"
            draft.offered = slots[:1] if morning else slots[-1:]
            edge = f"The {'earliest' if morning else 'latest'} I can do that day is"
            times = spoken_time(draft.offered[0].start.time())
            return self._ask_booking(
                f"Sorry, I have nothing in the {draft.part_of_day} on {spoken_date(day)}. "
                f"We're open {hours}. {edge} {times}. Would that work?",
                Expecting.SLOT_CHOICE,
            )
        draft.offered = wanted[:2]
        times = spoken_list([spoken_time(s.start.time()) for s in draft.offered])
        return self._ask_booking(
            f"On {spoken_date(day)} I can do {times}. What time works for you?", Expecting.SLOT_CHOICE
        )

    def _offer_alternatives(
        self, start: dt.datetime, slots: list[Slot], lead: str | None = None
    ) -> AgentReply:
        """The asked-for time cannot be booked: the nearest one or two free times that day."""
        draft = self._draft
        draft.time = None
        draft.chosen = None
        day = spoken_date(start.date())
        asked = spoken_time(start.time())
        if start < self._now():
            lead = lead or f"Sorry, {asked} has already passed."
        if start > slots[-1].start or start < slots[0].start:
            # Beyond every free slot: most likely outside opening hours, so say them.
            edge = slots[-1] if start > slots[-1].start else slots[0]
            draft.offered = [edge]
            which = "latest" if edge is slots[-1] else "earliest"
            if lead is None:
                lead = f"Sorry, we can't do {asked} on {day}. We're open {self._business_info().hours_text}."
            return self._ask_booking(
                f"{lead} The {which} I can do that day is {spoken_time(edge.start.time())}. Would that work?",
                Expecting.SLOT_CHOICE,
            )
        nearest = sorted(slots, key=lambda slot: (abs(slot.start - start), slot.start))[:2]
        draft.offered = sorted(nearest, key=lambda slot: slot.start)
        times = spoken_list([spoken_time(s.start.time()) for s in draft.offered], "and")
        nearest_text = f"The nearest free times are {times}. Would either of those work?"
        if len(draft.offered) == 1:
            nearest_text = f"The nearest free time is {times}. Would that work?"
        lead = lead or f"Sorry, {asked} on {day} is already taken."
        return self._ask_booking(f"{lead} {nearest_text}", Expecting.SLOT_CHOICE)

    def _choose_offered(self, u: Understanding) -> AgentReply | None:
        draft = self._draft
        offered = draft.offered
        chosen: Slot | None = None
        if draft.merge(u):
            return self._advance_booking()
        if offered and re.search(r"\b(?:anything|something|any other|other times?)\b", u.text):
            return self._offer_more(later=not re.search(r"\bearlier\b", u.text))
        if (
            re.search(r"\b(?:first|earlier|earliest|either|whichever|any of (?:them|those))\b", u.text)
            and offered
        ):
            chosen = offered[0]
        elif re.search(r"\b(?:second|later|last|latter)\b", u.text) and offered:
            chosen = offered[-1]
        elif u.answer is True and len(offered) == 1:
            chosen = offered[0]
        elif u.answer is True and offered:
            times = spoken_list([spoken_time(s.start.time()) for s in offered])
            return self._ask_booking(f"Which one would you like: {times}?", Expecting.SLOT_CHOICE)
        elif u.answer is False:
            draft.offered, draft.time = [], None
            return self._ask_booking("Okay. What other day or time would suit you?")
        if chosen is None:
            return None
        draft.time = chosen.start.time()
        return self._advance_booking()

    def _offer_more(self, *, later: bool) -> AgentReply:
        """ "Anything later?": the next free times past (or before) the ones offered."""
        draft = self._draft
        offered = draft.offered
        slots = self._tools.find_slots(offered[0].service, offered[0].start.date())
        if later:
            more = [slot for slot in slots if slot.start > offered[-1].start][:2]
        else:
            more = [slot for slot in slots if slot.start < offered[0].start][-2:]
        day = spoken_date(offered[0].start.date())
        if not more:
            edge = "latest" if later else "earliest"
            return self._ask_booking(
                f"Sorry, that's the {edge} I have on {day}. Would that work, or shall I look at another day?",
                Expecting.SLOT_CHOICE,
            )
        draft.offered = more
        times = spoken_list([spoken_time(slot.start.time()) for slot in more])
        return self._ask_booking(f"I can also do {times} on {day}. Would that work?", Expecting.SLOT_CHOICE)

    def _what_to_change(self, u: Understanding) -> AgentReply | None:
        draft = self._draft
        if re.search(r"\b(?:day|date)\b", u.text):
            draft.date = None
            return self._ask_booking("Sure. What day would you like instead?")
        if re.search(r"\btime\b", u.text):
            draft.time = None
            return self._ask_booking("Sure. What time would you like instead?")
        if re.search(r"\bservice\b", u.text):
            draft.service = None
            return self._advance_booking()
        if u.answer is False or u.intent is Intent.DENY or re.search(r"\bnothing\b", u.text):
            self._draft = BookingDraft()
            return self._done("Okay, I won't book anything.", Intent.BOOK)
        return None

    def _read_back(self, service: ServiceInfo, slot: Slot) -> AgentReply:
        """Confirm before booking; an unknown caller is asked for a name first."""
        if self._caller() is None:
            if not self._caller_phone:
                # Without a caller number there is no customer record to attach a booking to.
                self._facts["transfer"] = "no caller id"
                return AgentReply(
                    "I can't see your phone number, so let me connect you to someone from our team.",
                    intent=str(Intent.BOOK),
                    transfer=True,
                )
            if self._heard_name is not None:
                return self._take_name(self._heard_name)
            return self._ask("Can I have your name for the booking, please?", Expecting.NAME, Intent.BOOK)
        when = f"{spoken_date(slot.start.date())} at {spoken_time(slot.start.time())}"
        replacing = self._draft.replacing
        if replacing is not None:
            return self._ask(
                f"I can move your {replacing.service} to {when}. Shall I do that?",
                Expecting.BOOKING_CONFIRM,
                Intent.RESCHEDULE,
            )
        offer = f"I can book {with_article(service.name)} for you on {when}."
        return self._ask_booking(
            f"{offer} It takes about {self._cost(service)} Shall I book it?", Expecting.BOOKING_CONFIRM
        )

    def _take_name(self, name: str) -> AgentReply:
        if not self._caller_phone:  # never asked without a number; kept safe for the keypad path
            return self._transfer()
        try:
            self._customer = self._tools.create_customer(self._caller_phone, name)
        except InvalidRequest:
            return self._ask("Sorry, could you tell me your name again?", Expecting.NAME, Intent.BOOK)
        self._facts.update(customer_id=self._customer.id, customer_name=self._customer.name)
        reply = self._advance_booking()
        return AgentReply(
            f"Thanks, {name.split()[0]}. {reply.text}", intent=reply.intent, transfer=reply.transfer
        )

    def _commit_booking(self) -> AgentReply:
        draft = self._draft
        customer = self._caller()
        if draft.chosen is None or draft.service is None or customer is None:
            return self._advance_booking()
        slot = draft.chosen
        try:
            booking = self._tools.book(customer.id, draft.service, slot.start, self._call_id)
        except SlotUnavailable:
            # Someone else took the bay between the read-back and the "yes".
            service = self._service(draft.service)
            slots = self._tools.find_slots(draft.service, slot.start.date())
            if service is None or not slots:
                draft.date = draft.time = None
                return self._ask_booking(
                    "Sorry, that time was just taken and that day is now full. Would another day work?"
                )
            return self._offer_alternatives(slot.start, slots, "Sorry, that time was just taken.")
        except (InvalidRequest, NotFound) as exc:
            log.warning("booking refused: %r", exc)
            return self._offer_person("Sorry, I couldn't make that booking.", Intent.BOOK)
        self._facts.update(booking_id=booking.id, date=booking.start.date().isoformat())
        self._facts["time"] = booking.start.time().isoformat(timespec="minutes")
        when = f"{spoken_date(booking.start.date())} at {spoken_time(booking.start.time())}"
        replacing = draft.replacing
        self._draft = BookingDraft()
        if booking.status == "held" and booking.id == 0:
            # The CRM was unreachable: the request is spooled durably and applied when it returns, so
            # promise what is true - noted, confirmed later - never "you're all set".
            self._facts["pending_confirmation"] = when
            if replacing is not None:
                self._facts["needs_follow_up"] = f"cancel booking {replacing.id}"
            return self._done(
                f"I've noted {with_article(booking.service)} for {when}. Our system is slow to confirm "
                "right now, so we'll confirm it with you shortly.",
                Intent.RESCHEDULE if replacing is not None else Intent.BOOK,
            )
        if replacing is not None:
            try:
                self._tools.cancel_booking(replacing.id)
            except ToolError as exc:
                # The new booking stands; a person tidies up the old one rather than the caller.
                log.warning("moved booking %s but could not cancel it: %r", replacing.id, exc)
                self._facts["needs_follow_up"] = f"cancel booking {replacing.id}"
                return self._done(
                    f"You're booked for {when}. I couldn't release your old time, so our team will do it.",
                    Intent.RESCHEDULE,
                )
            self._facts["cancelled_booking_id"] = replacing.id
            return self._done(f"You're all set. Your {booking.service} is now on {when}.", Intent.RESCHEDULE)
        return self._done(
            f"You're all set. {with_article(booking.service).capitalize()} on {when}.", Intent.BOOK
        )

    # --- existing bookings -----------------------------------------------------------------------

    def _upcoming(self) -> list[BookingInfo] | None:
        """The caller's live bookings from now on; None for a caller we do not know."""
        customer = self._caller()
        if customer is None:
            return None
        now = self._now()
        bookings = self._tools.upcoming_bookings(customer.id)
        return sorted(
            (b for b in bookings if b.status in _BOOKING_LIVE and b.end > now), key=lambda b: b.start
        )

    def _describe(self, booking: BookingInfo) -> str:
        when = f"{spoken_date(booking.start.date())} at {spoken_time(booking.start.time())}"
        return f"{with_article(booking.service)} on {when}"

    def _check_bookings(self) -> AgentReply:
        bookings = self._upcoming()
        if not bookings:
            self._draft = BookingDraft()
            return self._ask(
                "I don't see any upcoming bookings for this phone number. Would you like to book one?",
                Expecting.OFFER_BOOKING,
                Intent.CHECK_BOOKING,
            )
        described = spoken_list([self._describe(b) for b in bookings], "and")
        self._facts["booking_id"] = bookings[0].id
        return self._done(f"You have {described}.", Intent.CHECK_BOOKING)

    def _start_cancel_or_move(self, u: Understanding, *, move: bool) -> AgentReply:
        intent = Intent.RESCHEDULE if move else Intent.CANCEL_BOOKING
        self._rescheduling = move
        bookings = self._upcoming()
        if not bookings:
            return self._done("I don't see any upcoming bookings for this phone number.", intent)
        # When moving, a day or time in the request is the new one, so only the service identifies.
        chosen = self._pick_booking(
            u if not move else nlu.Understanding(u.text, u.intent, u.service), bookings
        )
        if chosen is None and len(bookings) == 1:
            chosen = bookings[0]
        if chosen is None:
            self._candidates = bookings
            described = spoken_list([self._describe(b) for b in bookings], "and")
            verb = "move" if move else "cancel"
            return self._ask(
                f"You have {described}. Which one would you like to {verb}?", Expecting.BOOKING_CHOICE, intent
            )
        if move:
            self._draft = BookingDraft(service=chosen.service, replacing=chosen)
            if self._draft.merge(u) and (u.date or u.time):
                self._draft.service = chosen.service
                return self._advance_booking()
        return self._confirm_cancel_or_move(chosen)

    def _pick_booking(self, u: Understanding, bookings: list[BookingInfo]) -> BookingInfo | None:
        matching = [
            b
            for b in bookings
            if (u.service is None or b.service == u.service)
            and (u.date is None or b.start.date() == u.date)
            and (u.time is None or b.start.time() == u.time)
        ]
        if (u.service or u.date or u.time) and len(matching) == 1:
            return matching[0]
        if re.search(r"\b(?:first|earlier|earliest)\b", u.text):
            return bookings[0]
        if re.search(r"\b(?:second|later|last|latter)\b", u.text):
            return bookings[-1]
        return None

    def _confirm_cancel_or_move(self, booking: BookingInfo) -> AgentReply:
        self._candidates = [booking]
        if self._rescheduling:
            self._draft = BookingDraft(service=booking.service, replacing=booking)
            return self._ask(
                f"You have {self._describe(booking)}. What day and time would you like instead?",
                Expecting.BOOKING_DETAIL,
                Intent.RESCHEDULE,
            )
        return self._ask(
            f"You have {self._describe(booking)}. Shall I cancel it?",
            Expecting.CANCEL_CONFIRM,
            Intent.CANCEL_BOOKING,
        )

    def _cancel(self, booking: BookingInfo) -> AgentReply:
        try:
            cancelled = self._tools.cancel_booking(booking.id)
        except (NotFound, InvalidRequest) as exc:
            log.warning("cancel refused: %r", exc)
            return self._offer_person("Sorry, I couldn't cancel that booking.", Intent.CANCEL_BOOKING)
        self._facts["cancelled_booking_id"] = cancelled.id
        return self._done(
            f"Done. Your {cancelled.service} on {spoken_date(cancelled.start.date())} is cancelled.",
            Intent.CANCEL_BOOKING,
        )
