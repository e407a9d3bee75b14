"""Language understanding for the dialogue: pure functions from a recogniser transcript to meaning.

Input is what a speech recogniser produces: lower case, no punctuation, numbers as words ("ten thirty",
"a one zero four two"), fillers ("um") and small recognition errors ("book a oil change", "breaks
checked"). Typed text with digits and punctuation is accepted too. Nothing here touches the CRM or a
clock: dates are resolved against a `today` the caller passes in, so every rule is testable by itself.

The rules are keyword and pattern based on purpose: the domain is small, the vocabulary is the garage's
own, and a wrong guess is caught by the dialogue reading every booking back before committing it.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from enum import StrEnum

from agent.phrasing import PartOfDay, parse_date_tokens, parse_time_tokens, read_digit_string


class Intent(StrEnum):
    BOOK = "book_service"
    CHECK_BOOKING = "check_booking"
    CANCEL_BOOKING = "cancel_booking"
    RESCHEDULE = "reschedule_booking"
    ORDER_STATUS = "order_status"
    PART_AVAILABILITY = "part_availability"
    SERVICE_INFO = "service_info"  # price or duration of a service, or what services exist
    HOURS = "opening_hours"
    ADDRESS = "address"
    PERSON = "talk_to_person"
    GOODBYE = "goodbye"
    THANKS = "thanks"
    GREETING = "greeting"
    REPEAT = "repeat"
    AFFIRM = "affirm"
    DENY = "deny"
    INFORM = "inform"  # only slot values (a day, a time, a name, an order number)
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Understanding:
    """Everything one utterance says; fields are None when the utterance does not say them."""

    text: str  # normalised transcript
    intent: Intent
    service: str | None = None  # canonical service name, e.g. "oil change"
    date: dt.date | None = None
    time: dt.time | None = None
    part_of_day: PartOfDay | None = None
    earliest: bool = False  # "first available", "as soon as possible"
    answer: bool | None = None  # yes / no
    order_number: str | None = None  # "A1042"
    product: str | None = None  # spoken product name to look up, e.g. "wiper blades"
    name: str | None = None  # "Priya Raman"


# --- normalisation -------------------------------------------------------------------------------

# "mhm" and "uh huh" are answers on the phone, not hesitations, so they become "yes" before fillers go.
_FILLERS = frozenset({"um", "umm", "uh", "uhh", "er", "erm", "ah", "eh", "hmm", "hm"})
_SPOKEN_YES = re.compile(r"\b(?:uh huh|uh-huh|mm hmm|mhm|mm-hmm)\b")


def normalise(text: str) -> str:
    """Lower case, punctuation and fillers removed, contractions closed up ("that's" -> "thats")."""
    text = text.lower().replace("’", "'")
    text = _SPOKEN_YES.sub("yes", text)
    text = re.sub(r"\b([ap])\.\s?m\b\.?", r"\1m", text)  # "p.m." -> "pm"
    text = re.sub(r"(\d)(am|pm)\b", r"\1 \2", text)  # "10am" -> "10 am"
    text = re.sub(r"(\d)[:.](\d\d)\b", r"\1:\2", text)  # keep "10:30" and "10.30" as one token
    text = re.sub(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b", r"\2/\3/\1", text)  # ISO dates to m/d/y
    text = text.replace("'", "")
    # Keep ':' and '/' between digits ("10:30", "11/24"); everything else that is not a word goes.
    text = re.sub(r"(?<!\d)[:/]|[:/](?!\d)", " ", text)
    text = re.sub(r"[^a-z0-9:/ ]+", " ", text)
    return " ".join(t for t in text.split() if t not in _FILLERS)


def _has(pattern: str, text: str) -> bool:
    return re.search(pattern, text) is not None


# --- services and products -----------------------------------------------------------------------

# Recognisers confuse "brakes" with "breaks"; callers say what is wrong rather than the service name.
_BRAKE = r"(?:brakes?|breaks?)"
_SERVICE_PATTERNS: tuple[tuple[str, str], ...] = (
    ("oil change", r"\boil (?:and filter )?(?:chang\w*|chains?)|\bchange (?:the |my )?oil\b|\boil service\b"),
    (
        "tire rotation",
        r"\b(?:tire|tyre)s? rotat\w*|\brotat\w* (?:my |the |of )?(?:tires|tyres|wheels)\b|\brotation\b",
    ),
    (
        "brake inspection",
        rf"\b{_BRAKE} (?:inspection|check\w*|looked at|inspected|service|job)\b"
        rf"|\b(?:check|inspect|look at) (?:my |the )?{_BRAKE}\b"
        rf"|\b{_BRAKE} (?:are |is )?(?:squeak\w*|squeal\w*|grind\w*|making)",
    ),
    (
        "battery replacement",
        r"\bbattery replace\w*|\b(?:new|replace\w*|change|swap) (?:my |the |a |car )*battery\b"
        r"|\bbattery (?:replaced|changed|swapped|is dead|died)\b|\bdead battery\b",
    ),
    (
        "full service",
        r"\bfull service\b|\bservice (?:my|the|our) (?:car|vehicle|truck|van)\b|\b(?:car|vehicle) serviced\b"
        r"|\btune ?up\b|\b(?:general|major|annual|regular) service\b|\bmaintenance\b|\bservicing\b",
    ),
)

_PRODUCT_PATTERNS: tuple[tuple[str, str], ...] = (
    ("wiper blades", r"\b(?:windshield |windscreen )?wipers?(?: blades?)?\b"),
    ("brake pads", rf"\b(?:front |rear )?{_BRAKE} ?pads?\b|\bpads\b"),
    ("battery", r"\bbatter(?:y|ies)\b"),
    ("synthetic oil", r"\b(?:synthetic |motor |engine )?oil\b|\bfive w thirty\b|\b5w ?30\b"),
    ("tire", r"\b(?:tires?|tyres?)\b"),
)

_STOCK_WORDS = r"\bin stock\b|\bdo you (?:have|carry|sell|stock)\b|\bgot any\b|\bany left\b|\bstock\b"
PRICE_WORDS = r"\bhow much\b|\bprice\b|\bcost\w*\b|\bcharge\b|\bhow long\b|\bfee\b"


def _first_match(patterns: tuple[tuple[str, str], ...], text: str) -> tuple[str, re.Match[str]] | None:
    found = [(m.start(), name, m) for name, pattern in patterns if (m := re.search(pattern, text))]
    if not found:
        return None
    _, name, match = min(found, key=lambda item: item[0])
    return name, match


def parse_service(text: str) -> str | None:
    found = _first_match(_SERVICE_PATTERNS, normalise(text))
    return found[0] if found else None


def parse_product(text: str) -> str | None:
    """A product the caller asks about; service phrases are removed first ("oil change" is not oil)."""
    text = normalise(text)
    for _, pattern in _SERVICE_PATTERNS:
        text = re.sub(pattern, " ", text)
    found = _first_match(_PRODUCT_PATTERNS, text)
    if found:
        return found[0]
    # A part we have no alias for: take the words after "do you have" so the CRM can still be asked.
    m = re.search(
        r"\b(?:do you (?:have|carry|sell|stock)|got any|how much (?:is|are|do|does)|price (?:of|for))"
        r" (?:any |some |the |a |an )?(.+?)(?: in stock| for| at| today| right now| cost\w*| left|$)",
        text,
    )
    not_a_part = (
        r"\b(?:openings?|availability|appointments?|time|slots?|room|space|morning|afternoon|evening"
        r"|today|tomorrow|monday|tuesday|wednesday|thursday|friday|saturday|sunday|anything|free)\b"
    )
    if m and not _has(not_a_part, m.group(1)) and m.group(1) not in ("it", "that", "this", "them", "one"):
        return m.group(1).strip() or None
    return None


# --- yes / no ------------------------------------------------------------------------------------

_NO = (
    r"\b(?:no|nope|nah|not really|negative|not now|neither|wrong|incorrect|not right|not correct"
    r"|dont|do not|never ?mind|no thanks|no thank you)\b"
)
_YES = (
    r"\b(?:yes|yeah|yea|ya|yep|yup|sure|correct|thats right|that is right|please do|do it|go ahead"
    r"|ok|okay|sounds good|that works|works for me|perfect|great|absolutely|definitely|of course"
    r"|affirmative|fine|book it|yes please|lets do it|please)\b|^(?:right|alright|all right)$"
)


def parse_yes_no(text: str) -> bool | None:
    """True for yes, False for no, None when the utterance answers neither; the earliest answer wins."""
    text = normalise(text)
    nos = [m.span() for m in re.finditer(_NO, text)]
    # "thats not right" contains "right": a yes inside a no phrase is part of the no.
    yeses = [
        m.span()
        for m in re.finditer(_YES, text)
        if not any(s <= m.start() < e for s, e in nos) and not _has(r"\bnot $", text[: m.start()])
    ]
    if not nos and not yeses:
        return None
    first_no = min((s for s, _ in nos), default=len(text) + 1)
    first_yes = min((s for s, _ in yeses), default=len(text) + 1)
    return first_yes < first_no


# --- names ---------------------------------------------------------------------------------------

_NOT_NAME_WORDS = frozenset(
    {
        "a", "an", "the", "about", "regarding", "calling", "here", "speaking", "and", "i", "im", "my", "to",
        "for", "please", "thanks", "thank", "you", "yes", "yeah", "no", "is", "it", "its", "just", "on",
        "with", "of", "at", "in", "need", "want", "would", "like", "looking", "wondering", "trying", "sure",
        "ok", "okay", "that", "this", "so", "well", "hi", "hello", "again", "your",
    }
)  # fmt: skip
_NAME_LEAD = r"\b(?:my name is|my names|name is|names|the name is|this is|call me|its|it is|im|i am)\b"


def parse_name(text: str, *, expecting: bool = False) -> str | None:
    """A caller's name from "my name is ..." / "this is ..."; when the name was just asked for, any
    short answer of name-like words counts ("priya raman", "sure its priya")."""
    text = normalise(text)
    leads = list(re.finditer(_NAME_LEAD, text))
    strong = [m for m in leads if m.group(0) not in ("its", "it is", "im", "i am")]
    chosen = strong[-1] if strong else (leads[-1] if leads and expecting else None)
    if chosen is not None:
        words = text[chosen.end() :].split()
    elif expecting:
        words = text.split()
        while words and words[0] in _NOT_NAME_WORDS:
            words = words[1:]
    else:
        return None
    name: list[str] = []
    for word in words:
        if word in _NOT_NAME_WORDS or not word.isalpha():
            break
        name.append(word)
    if not name or len(name) > 3:
        return None
    return " ".join(w.capitalize() for w in name)


# --- order numbers -------------------------------------------------------------------------------

_LETTER_NAMES = {
    "ay": "a", "bee": "b", "be": "b", "see": "c", "sea": "c", "cee": "c", "dee": "d", "ee": "e",
    "ef": "f", "eff": "f", "gee": "g", "aitch": "h", "jay": "j", "kay": "k", "el": "l", "em": "m",
    "en": "n", "pee": "p", "cue": "q", "queue": "q", "are": "r", "ar": "r", "es": "s", "ess": "s",
    "tee": "t", "tea": "t", "vee": "v", "ex": "x", "why": "y", "zed": "z", "zee": "z",
}  # fmt: skip
_NATO = {
    "alpha": "a", "alfa": "a", "bravo": "b", "charlie": "c", "delta": "d", "echo": "e", "foxtrot": "f",
    "golf": "g", "hotel": "h", "india": "i", "juliet": "j", "juliett": "j", "kilo": "k", "lima": "l",
    "mike": "m", "november": "n", "oscar": "o", "papa": "p", "quebec": "q", "romeo": "r", "sierra": "s",
    "tango": "t", "uniform": "u", "victor": "v", "whiskey": "w", "whisky": "w", "xray": "x",
    "yankee": "y", "zulu": "z",
}  # fmt: skip


def _letter(token: str) -> str | None:
    if len(token) == 1 and token.isalpha():
        return token
    return _LETTER_NAMES.get(token) or _NATO.get(token)


def parse_order_number(text: str) -> str | None:
    """One letter then 3-6 digits: "a one zero four two", "b as in bravo two oh seven seven", "A1042"."""
    tokens = normalise(text).split()
    for i, token in enumerate(tokens):
        if m := re.fullmatch(r"([a-z])(\d{3,6})", token):
            return m.group(1).upper() + m.group(2)
        letter = _letter(token)
        if letter is None:
            continue
        j = i + 1
        # "b as in bravo" / "b for bravo": the spelled word confirms (or corrects) the letter.
        if tokens[j : j + 2] == ["as", "in"] and j + 2 < len(tokens):
            letter = _NATO.get(tokens[j + 2], tokens[j + 2][0])
            j += 3
        elif j + 1 < len(tokens) and tokens[j] == "for" and tokens[j + 1] in _NATO:
            letter = _NATO[tokens[j + 1]]
            j += 2
        digits, _ = read_digit_string(tokens, j)
        if 3 <= len(digits) <= 6:
            return letter.upper() + digits
    return None


# --- intents -------------------------------------------------------------------------------------

# Asking for a person: words that mean it wherever they come ("representative", "customer service"),
# or someone asked for ("can i speak with the mechanic", "get me a manager", a lone "agent"). A role word in
# passing is not ("my mechanic said the brakes squeal", "i'll come in person", a misheard order number
# ending in "mechanic"): escalating those hands a caller the agent could serve to a queue.
_ROLES = (
    r"(?:person|someone|somebody|anyone|human|agent|rep|representative|operator|receptionist|manager"
    r"|mechanic|technician|customer service|front desk)s?"
)
_PERSON = (
    r"\b(?:human|representative|operator|receptionist|customer service|front desk|real person|live person)\b"
    r"|\b(?:(?:talk|speak|chat) (?:to|with)|(?:get|put|connect|transfer|pass) me"
    rf"|(?:can|could|may) i (?:have|get))\b(?:\s+\w+){{0,3}}?\s+{_ROLES}\b"
    rf"|^(?:an? |the |your )?{_ROLES}(?: please)?$"
)
_GOODBYE = (
    r"\b(?:bye|goodbye|good bye|thats all|that is all|thats it|nothing else|im done|hang up"
    r"|have a (?:good|nice|great) (?:day|one|evening)|thats everything|all good)\b"
)
_CANCEL = r"\bcancel\w*|\bcall off\b|\b(?:cant|cannot|can not|wont|unable to) make it\b"
_RESCHEDULE = (
    r"\breschedul\w*|\b(?:move|change|push back|shift) (?:my|the) (?:appointment|booking|reservation)\b"
)
_CHECK = (
    r"\b(?:when|what time|what day|check|confirm|remind)\b.*"
    r"\b(?:my|the) (?:appointment|booking|reservation)s?\b"
    r"|\bmy (?:appointment|booking|reservation)s? (?:is|still|on)\b"
    r"|\bdo i have (?:an |any )?(?:appointment|booking|reservation)s?\b|\bwhen am i (?:booked|coming)\b"
)
_BOOK_VERBS = r"\b(?:book|schedule|make|set up|new|get)\b"
_ORDER = (
    r"(?<!in )\border\b|\bordered\b|\bstatus\b|\bwheres my\b|\bwhere is my\b|\bmy parts?\b"
    r"|\b(?:arrived|ready for pick ?up)\b|\b(?:part|parts|it|they) (?:come|came) in\b"
)
_HOURS = (
    r"\bhours\b|\bopen\b|\bopening\b(?! for)|\bclos(?:e|es|ing|ed)\b|\bwhat time do you\b|\bwhen do you\b"
)
_ADDRESS = (
    r"\baddress\b|\bwhere are you\b|\bwhere (?:is|are) (?:the |your )?(?:shop|garage|place|business)\b"
    r"|\blocat(?:ed|ion)\b|\bdirections\b|\bhow do i (?:get|find)\b"
)
_BOOK = (
    r"\b(?:book|booking|schedule|appointment|reserve|reservation|bring (?:my|the|it|her|him|in)"
    r"|drop (?:off|my|it)|come in|get (?:it|my car|my truck) in|openings|(?:an|any) opening|availability"
    r"|available|slots?|looked at|take a look|check (?:it|my car|the car) out|fit me in)\b"
)
_SERVICES_LIST = r"\bwhat (?:services|kind of services|do you (?:do|offer))\b|\bservices do you\b"
_REPEAT = (
    r"\b(?:repeat|say (?:that|it) again|come again|pardon|what did you say|didnt (?:catch|hear|get) that)\b"
    r"|^(?:sorry )?(?:what|huh|pardon)$|^sorry$|\bwhat was that\b"
)
_THANKS = r"\b(?:thanks|thank you|cheers|appreciate it)\b"
_GREETING = r"^(?:hi|hello|hey|good (?:morning|afternoon|evening))\b"


def classify_intent(text: str) -> Intent:
    """The caller's goal; more specific goals are tested before broad ones ("cancel my oil change"
    mentions a service but is a cancellation)."""
    t = normalise(text)
    if not t:
        return Intent.UNKNOWN
    service = parse_service(t)
    if _has(_PERSON, t):
        return Intent.PERSON
    if _has(_GOODBYE, t):
        return Intent.GOODBYE
    if _has(_CANCEL, t):
        return Intent.CANCEL_BOOKING
    if _has(_RESCHEDULE, t):
        return Intent.RESCHEDULE
    if _has(_CHECK, t) and not _has(_BOOK_VERBS, t):
        return Intent.CHECK_BOOKING
    if _has(_ORDER, t) or parse_order_number(t) is not None:
        return Intent.ORDER_STATUS
    product = parse_product(t)
    if _has(_STOCK_WORDS, t) and product is not None:
        return Intent.PART_AVAILABILITY
    if _has(_SERVICES_LIST, t) or (service is not None and _has(PRICE_WORDS, t)):
        return Intent.SERVICE_INFO
    if product is not None and service is None and _has(PRICE_WORDS, t):
        return Intent.PART_AVAILABILITY
    if _has(_BOOK, t) or service is not None:
        return Intent.BOOK
    if _has(_HOURS, t):
        return Intent.HOURS
    if _has(_ADDRESS, t):
        return Intent.ADDRESS
    if product is not None:
        return Intent.PART_AVAILABILITY
    if _has(_REPEAT, t):
        return Intent.REPEAT
    answer = parse_yes_no(t)
    if answer is not None and not _has(r"^(?:ok|okay)? ?(?:thanks|thank you)", t):
        return Intent.AFFIRM if answer else Intent.DENY
    if _has(_THANKS, t):
        return Intent.THANKS
    if _has(_GREETING, t):
        return Intent.GREETING
    return Intent.UNKNOWN


# --- dates and times ---------------------------------------------------------------------------


def parse_date(text: str, today: dt.date) -> dt.date | None:
    match = parse_date_tokens(normalise(text).split(), today)
    return match.date if match else None


def parse_part_of_day(text: str) -> PartOfDay | None:
    """Morning, afternoon or evening when the caller names one ("tomorrow afternoon", "two pm")."""
    text = normalise(text)
    # "good morning" is a greeting, not a wish for a morning slot.
    text = re.sub(r"\bgood (?:morning|afternoon|evening)\b", " ", text)
    if _has(r"\b(?:morning|before lunch|first thing|am)\b", text):
        return "morning"
    if _has(r"\b(?:afternoon|after lunch|pm)\b", text):
        return "afternoon"
    if _has(r"\b(?:evening|tonight|after work)\b", text):
        return "evening"
    return None


def parse_time(text: str, *, expect_time: bool = False) -> dt.time | None:
    norm = normalise(text)
    return parse_time_tokens(norm.split(), set(), parse_part_of_day(norm), expect_time=expect_time)


# --- the whole utterance -------------------------------------------------------------------------

_EARLIEST = r"\b(?:earliest|first available|as soon as possible|asap|soonest|first thing|next available)\b"


def understand(
    text: str, today: dt.date, *, expect_time: bool = False, expect_name: bool = False
) -> Understanding:
    """Parse one utterance. `expect_time` lets a bare number ("ten") be a time because the caller was
    just asked for one; `expect_name` lets a bare answer ("priya raman") be a name."""
    norm = normalise(text)
    tokens = norm.split()
    date_match = parse_date_tokens(tokens, today)
    if date_match and date_match.start > 0 and tokens[date_match.start - 1] == "not":
        date_match = None  # "not today": the caller rules a day out, which says nothing to book
    taken = set(range(date_match.start, date_match.end)) if date_match else set()
    order_number = parse_order_number(norm)
    part_of_day = parse_part_of_day(norm)
    time = None if order_number else parse_time_tokens(tokens, taken, part_of_day, expect_time=expect_time)
    intent = classify_intent(norm)
    # "sure its jordan" is a name after "can I have your name", though "sure" alone would be a yes.
    answer_like = intent in (Intent.UNKNOWN, Intent.GREETING, Intent.AFFIRM, Intent.DENY, Intent.THANKS)
    name = parse_name(norm, expecting=expect_name and answer_like)
    service = parse_service(norm)
    if intent is Intent.UNKNOWN and (service or date_match or time or order_number or name):
        intent = Intent.INFORM
    return Understanding(
        text=norm,
        intent=intent,
        service=service,
        date=date_match.date if date_match else None,
        time=time,
        part_of_day=part_of_day,
        earliest=_has(_EARLIEST, norm),
        answer=parse_yes_no(norm),
        order_number=order_number,
        product=parse_product(norm),
        name=name,
    )
