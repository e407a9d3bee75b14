"""The recogniser's view of the business: a domain corpus, a trigram LM, a grammar and a lexicon.

Everything is derived from one set of phrase templates written in JSGF notation, so the n-gram LM
(trained on sentences sampled from the templates) and the JSGF grammar (the templates themselves) cover
the same language and can be compared on the same audio. The templates hold the business-independent
phrasing of a service call; the DomainVocabulary fills in the business's own words.

Rebuilding is deterministic (fixed sampling seed, sorted output) and takes well under a second, so the
model can be rebuilt whenever the CRM data behind the vocabulary changes.
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from agent.vocabulary import DomainVocabulary

__all__ = [
    "DomainModelFiles",
    "Lexicon",
    "Smoothing",
    "arpabet_from_ipa",
    "build_lexicon",
    "domain_corpus",
    "domain_grammar",
    "spoken_form",
    "trigram_arpa",
    "write_domain_model",
]

log = logging.getLogger(__name__)

Smoothing = Literal["kneser_ney", "witten_bell"]

_CORPUS_SEED: Final = 20261121
_ONES: Final = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)  # fmt: skip
_TENS: Final = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_DIGITS_OH: Final = ("oh", *_ONES[1:10])


def _number_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")


def spoken_form(text: str) -> str:
    """Lower-case words as a caller would say ``text``: "5W-30" -> "five w thirty", "24F" -> "twenty four f".

    Numbers below 100 are read as numbers; longer digit runs digit by digit with "oh" for zero, the way
    part and tyre sizes are read out ("205/55R16" -> "two oh five fifty five r sixteen").
    """
    words: list[str] = []
    for token in re.findall(r"[a-z]+(?:'[a-z]+)?|\d+", text.lower()):
        if not token[0].isdigit():
            words.append(token)
        elif len(token) <= 2:
            words.append(_number_words(int(token)))
        else:
            words.extend(_DIGITS_OH[int(d)] if d != "0" or i else "zero" for i, d in enumerate(token))
    return " ".join(words)


# --- Phrase templates (JSGF notation: ( | ) alternatives, [ ] optional, <rule> reference) -----------------

_GENERIC_RULES: Final[Mapping[str, str]] = {
    "opener": "hi | hello | hey | hi there | hello there | yes hi | um | uh | um hi | yeah | yes | okay | oh "
    "| so | good morning | good afternoon | hi good morning",
    "closer": "please | thanks | thank you | thank you very much | if possible | if that's okay",
    "hes": "um | uh",
    "hour": "one | two | three | four | five | six | seven | eight | nine | ten | eleven | twelve",
    "minute": "oh five | ten | fifteen | twenty | twenty five | thirty | thirty five | forty | forty five "
    "| fifty | fifty five",
    "clock": "<hour> | <hour> <minute> | <hour> o'clock | <hour> (a.m. | p.m.) "
    "| <hour> <minute> (a.m. | p.m.) | half past <hour> | quarter past <hour> | quarter to <hour> "
    "| noon | midday",
    "period": "in the morning | in the afternoon | in the evening | morning | afternoon",
    "weekday": "monday | tuesday | wednesday | thursday | friday | saturday | sunday",
    "month": "january | february | march | april | may | june | july | august | september | october "
    "| november | december",
    "ordinal": "first | second | third | fourth | fifth | sixth | seventh | eighth | ninth | tenth "
    "| eleventh | twelfth | thirteenth | fourteenth | fifteenth | sixteenth | seventeenth | eighteenth "
    "| nineteenth | twentieth | twenty first | twenty second | twenty third | twenty fourth | twenty fifth "
    "| twenty sixth | twenty seventh | twenty eighth | twenty ninth | thirtieth | thirty first",
    "day": "today | tomorrow | the day after tomorrow | [on] <weekday> | next <weekday> | this <weekday> "
    "| this coming <weekday> | next week | later today | tomorrow morning | tomorrow afternoon "
    "| [on] the <ordinal> | [on] <month> <ordinal> | [on] <month> the <ordinal> "
    "| [on] <weekday> the <ordinal>",
    "when": "<day> | <day> at <clock> | <day> at <clock> <period> "
    "| <day> [<hes>] at <clock> [<hes>] <period> | at <clock> | at <clock> <period> | <day> <period> "
    "| <period> | <clock> | <clock> <period> "
    "| [<day>] (around | about | after | before) <clock> [<period>] | <day> (any time | sometime) [<period>]",
    "yes": "yes | yeah | yep | yes please | yeah sure | sure | correct | that's correct | that's right "
    "| yeah that's right | yes that's right | yes that's correct | right | okay | sounds good | perfect "
    "| absolutely | that works | yes it is | that's fine | great",
    "no": "no | nope | no thanks | no thank you | no that's wrong | that's not right | no it's not "
    "| not really | no that's not it | that's wrong | no sorry",
    "request": "i'd like to | i would like to | i want to | i need to | can i | could i | can you "
    "| could you | i'd love to | i was hoping to | i'm trying to",
    "talk": "talk | speak",
    "agent": "a person | a human | a real person | someone | somebody | an agent | a manager "
    "| a representative | the manager | a mechanic",
    "bye": "goodbye | bye | bye bye | have a good day | have a nice day",
    "thanks": "thanks | thank you | thanks a lot | thank you very much | great thanks | perfect thanks",
}

# (template, how many sentences to sample from it); weights approximate how often each is said.
_TEMPLATES: Final[tuple[tuple[str, int], ...]] = (
    (
        "[<opener>] [<hes>] <request> (book | schedule | get | make an appointment for) <a_service> [<when>] "
        "[<closer>]",
        900,
    ),
    ("[<opener>] i need <a_service> [<when>] [<closer>]", 250),
    ("[<opener>] (book | schedule) me (in | in for | for) <a_service> [<when>] [<closer>]", 150),
    (
        "[<opener>] <request> (get | have) (my | the) <item> "
        "(checked | looked at | done | changed | replaced | fixed) [<when>] [<closer>]",
        400,
    ),
    ("[<opener>] <request> (make | book) an appointment [for <a_service>] [<when>] [<closer>]", 250),
    (
        "[<opener>] do you have (anything | any openings | any availability | a slot | time) "
        "[for <a_service>] <when>",
        200,
    ),
    ("[<opener>] [<hes>] <when> [<closer>]", 1100),
    (
        "(how about | what about | can you do | is | could you do | does) <when> "
        "[work | (work | okay) for you]",
        250,
    ),
    ("[<opener>] (i'm | i am) (free | available) <when>", 100),
    ("<yes> [<closer>]", 450),
    ("<no> [<closer>]", 300),
    ("[<opener>] (when | what time | what day) is my (appointment | booking)", 150),
    ("[<opener>] do i have (an appointment | a booking) [<when>]", 80),
    ("[<opener>] <request> cancel my (appointment | booking) [<when>] [<closer>]", 200),
    ("[<opener>] cancel my (appointment | booking) [<closer>]", 100),
    (
        "[<opener>] <request> (change | move | reschedule) my (appointment | booking) [to <when>] [<closer>]",
        200,
    ),
    ("[<opener>] do you have <product> in stock", 250),
    ("[<opener>] (do you | you) (have | sell | carry | stock) [any] <product> [in stock]", 250),
    ("[<opener>] (are | is) [the] <product> (in stock | available)", 120),
    ("[<opener>] (i'm looking for | i need | have you got | i want) [some | a | an | the] <product>", 150),
    (
        "[<opener>] (how much | what) (is | are | does | do) [a | an | the | your] (<product> | <service>) "
        "[cost]",
        350,
    ),
    ("[<opener>] what's the price (of | for) [a | an | the] (<product> | <service>)", 200),
    ("[<opener>] how much do you charge for [a | an | the] (<product> | <service>)", 120),
    ("[<opener>] what's the status of (my order | order <order> | my order <order>)", 250),
    (
        "[<opener>] (i'm calling about | i'm checking on | can you check | could you check "
        "| i have a question about) [my] order [number] <order>",
        250,
    ),
    ("[<opener>] (where is | has) my order [<order>] [arrived | shipped | come in]", 100),
    ("[<opener>] (my | the) order number is <order>", 200),
    ("[it's] [order] [number] <order>", 250),
    ("[<opener>] what are your (opening hours | hours | business hours) [<day>]", 100),
    ("[<opener>] (when | what time) do you (open | close) [<day>]", 100),
    ("[<opener>] are you open [<day>]", 80),
    ("[<opener>] (where are you located | where are you | what's your address | what is your address)", 100),
    ("[<opener>] (how do i get to | where is) <business>", 40),
    ("[<opener>] (is this | am i speaking to) <business>", 40),
    ("[<opener>] <request> <talk> (to | with) <agent> [<closer>]", 200),
    ("[<opener>] (let me <talk> to | put me through to | transfer me to) <agent> [<closer>]", 80),
    ("<agent> [<closer>]", 40),
    ("[(no | okay | great)] (that's all | that's it | that's everything) [<thanks>] [<bye>]", 200),
    ("<thanks> [<bye>]", 150),
    ("<bye>", 80),
    ("[<opener>] (my name is | it's | this is | the name is | i'm) <name>", 300),
    ("[it's] (under | for) <name>", 60),
    ("<name>", 150),
    ("(sorry | pardon) [what was that | can you repeat that | i didn't catch that]", 60),
    ("(can you repeat that | could you say that again | hold on | one moment | just a second) [please]", 60),
)


_MODIFIERS: Final = frozenset(
    {"full", "front", "rear", "new", "basic", "premium", "standard", "quick", "annual"}
)


def _plural(noun: str) -> str:
    if noun.endswith("s"):
        return noun
    if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "o", "u"):
        return noun[:-1] + "ies"
    return noun + "s"


def _article(phrase: str) -> str:
    return "an" if phrase[:1] in "aeio" else "a"


def _alternatives(phrases: Iterable[str]) -> str:
    unique = sorted({p for p in phrases if p})
    return " | ".join(unique) if unique else "<VOID>"


def _order_number_forms(order: str) -> list[str]:
    letters = re.findall(r"[a-z]", order.lower())
    digits = re.findall(r"\d", order)
    spelled = " ".join(letters)
    return [
        " ".join([spelled, *(_ONES[int(d)] for d in digits)]),
        " ".join([spelled, *(_DIGITS_OH[int(d)] for d in digits)]),
    ]


def _vocabulary_rules(vocab: DomainVocabulary) -> dict[str, str]:
    services = [spoken_form(s) for s in vocab.services]
    products = [spoken_form(p) for p in vocab.products]
    names = [spoken_form(n) for n in vocab.customer_names]
    # What a caller asks to have "checked" or "changed": products, and the head noun of each service
    # in singular and plural ("brake inspection" -> "my brakes checked").
    heads = {s.split()[0] for s in services if len(s.split()) > 1} - _MODIFIERS
    items = [*products, *heads, *(_plural(h) for h in heads), "car"]
    prefixes = sorted({re.sub(r"[^a-z]", "", o.lower())[:1] for o in vocab.order_numbers} - {""})
    widths = sorted({len(re.findall(r"\d", o)) for o in vocab.order_numbers}) or [4]
    generic_orders = [
        " ".join(["(" + " | ".join(prefixes) + ")", *["<digit>"] * width]) for width in widths if prefixes
    ]
    known_orders = [form for o in vocab.order_numbers for form in _order_number_forms(o)]
    return {
        "business": _alternatives([spoken_form(vocab.business_name)]),
        "service": _alternatives(services),
        "a_service": _alternatives(f"{_article(s)} {s}" for s in services),
        "product": _alternatives(products),
        "item": _alternatives(items),
        "name": _alternatives([*names, *(n.split()[0] for n in names if n)]),
        "digit": "zero | oh | one | two | three | four | five | six | seven | eight | nine",
        "order": _alternatives([*known_orders, *generic_orders]),
    }


# --- The template notation --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Word:
    text: str


@dataclass(frozen=True, slots=True)
class _Ref:
    name: str


@dataclass(frozen=True, slots=True)
class _Seq:
    items: tuple[_Node, ...]


@dataclass(frozen=True, slots=True)
class _Alt:
    options: tuple[_Node, ...]


@dataclass(frozen=True, slots=True)
class _Opt:
    item: _Node


_Node = _Word | _Ref | _Seq | _Alt | _Opt
_TOKEN = re.compile(r"<[a-z_]+>|<VOID>|[()\[\]|]|[^\s()\[\]|<>]+")


def _parse(expression: str) -> _Node:
    tokens = _TOKEN.findall(expression)
    position = 0

    def alternatives(closer: str | None) -> _Node:
        nonlocal position
        options = [sequence()]
        while position < len(tokens) and tokens[position] == "|":
            position += 1
            options.append(sequence())
        if closer is not None:
            if position >= len(tokens) or tokens[position] != closer:
                raise ValueError(f"missing {closer!r} in template {expression!r}")
            position += 1
        return options[0] if len(options) == 1 else _Alt(tuple(options))

    def sequence() -> _Node:
        nonlocal position
        items: list[_Node] = []
        while position < len(tokens) and tokens[position] not in ("|", ")", "]"):
            token = tokens[position]
            position += 1
            if token == "(":
                items.append(alternatives(")"))
            elif token == "[":
                items.append(_Opt(alternatives("]")))
            elif token.startswith("<"):
                items.append(_Ref(token[1:-1]))
            else:
                items.append(_Word(token))
        return items[0] if len(items) == 1 else _Seq(tuple(items))

    node = alternatives(None)
    if position != len(tokens):
        raise ValueError(f"unbalanced template {expression!r}")
    return node


def _sample(node: _Node, rules: Mapping[str, _Node], rng: random.Random, out: list[str]) -> None:
    if isinstance(node, _Word):
        out.append(node.text)
    elif isinstance(node, _Ref):
        if node.name != "VOID":
            _sample(rules[node.name], rules, rng, out)
    elif isinstance(node, _Seq):
        for item in node.items:
            _sample(item, rules, rng, out)
    elif isinstance(node, _Alt):
        _sample(rng.choice(node.options), rules, rng, out)
    elif rng.random() < 0.5:
        _sample(node.item, rules, rng, out)


def _rule_expressions(vocab: DomainVocabulary) -> dict[str, str]:
    return {**_GENERIC_RULES, **_vocabulary_rules(vocab)}


def domain_corpus(vocab: DomainVocabulary) -> list[str]:
    """Sentences a caller might say to this business, sampled from the templates (duplicates kept:
    their counts carry how likely each phrasing is)."""
    rules = {name: _parse(expr) for name, expr in _rule_expressions(vocab).items()}
    rng = random.Random(_CORPUS_SEED)
    sentences: list[str] = []
    for template, count in _TEMPLATES:
        node = _parse(template)
        for _ in range(count):
            words: list[str] = []
            _sample(node, rules, rng, words)
            sentences.append(" ".join(words))
    return sentences


_LEADING_PARTS: Final = re.compile(r"^(?:\[<(?:opener|hes)>\]\s*)+")
_TRAILING_PARTS: Final = re.compile(r"(?:\s*(?:\[<(?:when|closer)>\]|<when>))+$")


def domain_grammar(vocab: DomainVocabulary) -> str:
    """The templates as a JSGF grammar whose public rule is <utterance>.

    pocketsphinx expands every rule reference in place, and <when> alone is thousands of paths: written
    template by template the grammar became a 400k-node search graph (2 s to load, ~100 MB and seconds of
    CPU per utterance). So the opener and the trailing <when> / <closer> are factored out of the
    templates into one shared frame, which accepts slightly more than the templates do.
    """
    cores = sorted({_TRAILING_PARTS.sub("", _LEADING_PARTS.sub("", template)) for template, _ in _TEMPLATES})
    lines = ["#JSGF V1.0;", "grammar switchboard;", ""]
    core_refs = []
    for index, core in enumerate(c for c in cores if c):
        lines.append(f"<core{index}> = {core};")
        core_refs.append(f"<core{index}>")
    for name, expression in sorted(_rule_expressions(vocab).items()):
        lines.append(f"<{name}> = {expression};")
    frame = f"[<opener>] [<hes>] ({' | '.join(core_refs)}) [<when>] [<closer>]"
    lines.append(f"public <utterance> = {frame} | <when> [<closer>];")
    return "\n".join(lines) + "\n"


# --- Trigram estimation and ARPA output -------------------------------------------------------------------

_BOS: Final = "<s>"
_EOS: Final = "</s>"
_Ngram = tuple[str, ...]


def _discount(counts: Iterable[int]) -> float:
    """Absolute discount D = n1 / (n1 + 2 n2) (Ney, Essen & Kneser 1994), kept within [0.4, 0.9].

    Sampled template corpora have few singletons, which would push D towards zero and leave almost no
    probability for word sequences the templates never produced; the floor keeps the model open to
    callers who phrase things differently.
    """
    histogram = Counter(c for c in counts if c <= 2)
    n1, n2 = histogram[1], histogram[2]
    estimate = n1 / (n1 + 2 * n2) if n1 and n2 else 0.5
    return min(0.9, max(0.4, estimate))


def _ngram_counts(sentences: Iterable[str]) -> list[Counter[_Ngram]]:
    counts: list[Counter[_Ngram]] = [Counter(), Counter(), Counter()]
    for sentence in sentences:
        tokens = [_BOS, *sentence.split(), _EOS]
        for order in (1, 2, 3):
            for i in range(len(tokens) - order + 1):
                counts[order - 1][tuple(tokens[i : i + order])] += 1
    return counts


def _kneser_ney_counts(raw: list[Counter[_Ngram]]) -> list[Counter[_Ngram]]:
    """Raw counts for the top order and for n-grams that start a sentence; continuation counts (how many
    distinct words precede the n-gram) for the rest."""
    adjusted: list[Counter[_Ngram]] = [Counter(), Counter(), raw[2]]
    for order in (2, 3):
        for ngram in raw[order - 1]:
            adjusted[order - 2][ngram[1:]] += 1
    for order in (1, 2):
        for ngram, count in raw[order - 1].items():
            if ngram[0] == _BOS:
                adjusted[order - 1][ngram] = count
    return adjusted


def _interpolated_model(
    counts: list[Counter[_Ngram]], smoothing: Smoothing, vocabulary_size: int
) -> tuple[list[dict[_Ngram, float]], list[dict[_Ngram, float]]]:
    """Interpolated probabilities p_n(w|h) for every seen n-gram and, per context h, the weight gamma(h)
    given to the lower order. For an interpolated model gamma(h) is exactly the ARPA back-off weight."""
    probs: list[dict[_Ngram, float]] = [{}, {}, {}]
    gammas: list[dict[_Ngram, float]] = [{}, {}, {}]
    for order in (1, 2, 3):
        table = counts[order - 1]
        totals: Counter[_Ngram] = Counter()
        types: Counter[_Ngram] = Counter()
        for ngram, count in table.items():
            totals[ngram[:-1]] += count
            types[ngram[:-1]] += 1
        discount = _discount(table.values())
        for context, total in totals.items():
            if smoothing == "kneser_ney":
                gammas[order - 1][context] = discount * types[context] / total
            else:
                gammas[order - 1][context] = types[context] / (total + types[context])
        for ngram, count in table.items():
            context = ngram[:-1]
            lower = probs[order - 2][ngram[1:]] if order > 1 else 1.0 / vocabulary_size
            if smoothing == "kneser_ney":
                own = max(count - discount, 0.0) / totals[context]
            else:
                own = count / (totals[context] + types[context])
            probs[order - 1][ngram] = own + gammas[order - 1][context] * lower
    return probs, gammas


def trigram_arpa(sentences: Iterable[str], smoothing: Smoothing = "kneser_ney") -> str:
    """A trigram back-off language model of ``sentences`` in ARPA text format.

    Interpolated Kneser-Ney (absolute discounting with continuation counts for lower orders) or
    Witten-Bell, written as an equivalent back-off model. The vocabulary is closed: it is exactly the
    corpus words, because the lexicon is built from the same words.
    """
    raw = _ngram_counts(sentences)
    counts = _kneser_ney_counts(raw) if smoothing == "kneser_ney" else raw
    counts[0].pop((_BOS,), None)  # <s> is never predicted
    vocabulary_size = len(counts[0])
    probs, gammas = _interpolated_model(counts, smoothing, vocabulary_size)
    listed: list[list[_Ngram]] = [sorted({*probs[0], (_BOS,)}), sorted(probs[1]), sorted(probs[2])]
    lines = ["", "\\data\\", *(f"ngram {n}={len(listed[n - 1])}" for n in (1, 2, 3)), ""]
    for order in (1, 2, 3):
        lines.append(f"\\{order}-grams:")
        for ngram in listed[order - 1]:
            prob = probs[order - 1].get(ngram)
            logprob = f"{math.log10(prob):.6f}" if prob else "-99"
            line = f"{logprob}\t{' '.join(ngram)}"
            gamma = gammas[order].get(ngram) if order < 3 else None
            if gamma is not None:
                line += f"\t{math.log10(gamma):.6f}"
            lines.append(line)
        lines.append("")
    lines.append("\\end\\")
    return "\n".join(lines) + "\n"


# --- Pronunciations ---------------------------------------------------------------------------------------

# espeak-ng's IPA for US English -> the CMU phone set of the acoustic model; diphthongs and affricates
# (two symbols) are matched before single symbols.
_IPA_TO_ARPABET: Final[Mapping[str, tuple[str, ...]]] = {
    "aɪ": ("AY",), "aʊ": ("AW",), "ɔɪ": ("OY",), "eɪ": ("EY",), "oʊ": ("OW",), "əʊ": ("OW",),
    "dʒ": ("JH",), "tʃ": ("CH",), "ɚ": ("ER",), "ɝ": ("ER",), "ɜ": ("ER",),
    "p": ("P",), "b": ("B",), "t": ("T",), "d": ("D",), "k": ("K",), "g": ("G",), "ɡ": ("G",), "f": ("F",),
    "v": ("V",), "θ": ("TH",), "ð": ("DH",), "s": ("S",), "z": ("Z",), "ʃ": ("SH",), "ʒ": ("ZH",),
    "h": ("HH",), "m": ("M",), "n": ("N",), "ŋ": ("NG",), "l": ("L",), "ɫ": ("L",), "ɹ": ("R",),
    "r": ("R",), "w": ("W",), "j": ("Y",), "ɾ": ("D",), "ʔ": ("T",), "x": ("K",), "æ": ("AE",),
    "ɛ": ("EH",), "e": ("EH",), "ɪ": ("IH",), "ᵻ": ("IH",), "i": ("IY",), "ʊ": ("UH",), "u": ("UW",),
    "ʌ": ("AH",), "ə": ("AH",), "ɐ": ("AH",), "ɑ": ("AA",), "ɒ": ("AA",), "a": ("AA",), "ɔ": ("AO",),
    "o": ("OW",),
}  # fmt: skip
_IPA_IGNORED: Final = str.maketrans("", "", "ˈˌː-_ \u0329")  # stress, length and syllabic marks


def arpabet_from_ipa(ipa: str) -> tuple[str, ...] | None:
    """Map an IPA string to CMU phones, or None if it holds a symbol the acoustic model has no phone for."""
    symbols = ipa.translate(_IPA_IGNORED)
    phones: list[str] = []
    position = 0
    while position < len(symbols):
        width = 2 if symbols[position : position + 2] in _IPA_TO_ARPABET else 1
        mapped = _IPA_TO_ARPABET.get(symbols[position : position + width])
        if mapped is None:
            return None
        phones.extend(mapped)
        position += width
    return tuple(phones) or None


@dataclass(frozen=True, slots=True)
class Lexicon:
    pronunciations: Mapping[str, tuple[tuple[str, ...], ...]]  # word -> its pronunciations
    derived: tuple[str, ...]  # words pronounced through espeak-ng because CMUdict lacks them
    dropped: tuple[str, ...]  # words nobody could pronounce; sentences using them are left out

    def dictionary_text(self) -> str:
        lines = []
        for word in sorted(self.pronunciations):
            for index, phones in enumerate(self.pronunciations[word]):
                variant = word if index == 0 else f"{word}({index + 1})"
                lines.append(f"{variant} {' '.join(phones)}")
        return "\n".join(lines) + "\n"


def build_lexicon(words: Iterable[str], cmudict: Path) -> Lexicon:
    """Pronunciations for ``words`` from CMUdict, falling back to espeak-ng's letter-to-sound rules."""
    wanted = set(words)
    found: defaultdict[str, list[tuple[str, ...]]] = defaultdict(list)
    with cmudict.open(encoding="utf-8") as lines:
        for line in lines:
            head, _, cmu_phones = line.partition(" ")
            word = head.split("(", 1)[0]
            if word in wanted:
                found[word].append(tuple(cmu_phones.split()))
    derived: list[str] = []
    dropped: list[str] = []
    missing = sorted(wanted - found.keys())
    if missing:
        from agent.tts import TtsError, phonemes_ipa  # only needed for words CMUdict lacks

        for word in missing:
            phones: tuple[str, ...] | None = None
            try:
                phones = arpabet_from_ipa(phonemes_ipa(word))
            except TtsError as exc:
                log.warning("cannot derive a pronunciation for %r: %s", word, exc)
            if phones is None:
                log.warning("dropping %r from the speech model: no pronunciation", word)
                dropped.append(word)
            else:
                log.info("pronouncing %r as %s (from espeak-ng)", word, " ".join(phones))
                found[word].append(phones)
                derived.append(word)
    return Lexicon(
        pronunciations={word: tuple(prons) for word, prons in found.items()},
        derived=tuple(derived),
        dropped=tuple(dropped),
    )


# --- Files for the decoder --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DomainModelFiles:
    language_model: Path  # ARPA trigram
    dictionary: Path
    grammar: Path  # JSGF, same language as the templates
    lexicon: Lexicon
    sentence_count: int


def write_domain_model(
    vocab: DomainVocabulary, workdir: Path, cmudict: Path, smoothing: Smoothing = "kneser_ney"
) -> DomainModelFiles:
    """Write domain.lm (ARPA), domain.dict and domain.gram (JSGF) into ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    corpus = domain_corpus(vocab)
    lexicon = build_lexicon({w for s in corpus for w in s.split()}, cmudict)
    usable = [sentence for sentence in corpus if set(lexicon.dropped).isdisjoint(sentence.split())]
    files = DomainModelFiles(
        language_model=workdir / "domain.lm",
        dictionary=workdir / "domain.dict",
        grammar=workdir / "domain.gram",
        lexicon=lexicon,
        sentence_count=len(usable),
    )
    files.language_model.write_text(trigram_arpa(usable, smoothing), encoding="utf-8")
    files.dictionary.write_text(lexicon.dictionary_text(), encoding="utf-8")
    grammar = domain_grammar(vocab)
    for word in lexicon.dropped:
        grammar = re.sub(rf"(?<![\w'.<]){re.escape(word)}(?![\w'.>])", "<VOID>", grammar)
    files.grammar.write_text(grammar, encoding="utf-8")
    return files
