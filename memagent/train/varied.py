"""Facts in the forms an agent meets beyond the template relations of `corpus.py`.

- exact strings to copy: version strings, codes, invented names with unusual spellings;
- JSON tool outputs with nested fields, several fields beside the one asked about;
- multi-turn chats, the fact in a later user turn;
- sentences holding two facts, each asked about on its own.

Values are drawn, not listed, so the model must copy them, not recall a list. The split works as
in `corpus.py`: each form's last fact and question template are held out for evaluation, and so
is a fifth of all values (by hash). Nothing here may produce an answer of the outside
evaluation set (`memagent/evaluation/data`); such a value is drawn again.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable

from memagent.train.corpus import CITIES, FIRST_NAMES, Fact, FactSampler, _held_out

ONSETS = "B Br D Dz G Gw H J K Kv Kh L Lj M N Nj P Pr R S Sk Sz T Tl V Vr Z Zh Ž Č Ø Þ".split()
VOWELS = "a e i o u y aa ei ou ø å é ó ü ij ae".split()
CODAS = ["", "", "n", "r", "l", "sk", "th", "v", "nd", "rz", "ck"]
PACKAGES = "libkorvo tessel quarry-cli mirth spindle-db ferrox oakum-sdk lattice-rt brindle pyvane hexwell".split()
DEVICES = "the lab printer,the badge reader,the core switch,the kiosk tablet,the build agent,the camera hub".split(",")
PLACES_FOR_CODES = "the bike shed,the archive room,the rooftop,the server cage,the loading dock,the music room".split(",")
ROLES = "caretaker,courier,harbour master,choir leader,new hire in sales,upstairs neighbour,violin teacher".split(",")


def unusual_name(rng: random.Random) -> str:
    """An invented name of two or three syllables, with clusters and diacritics ("Ljubøra")."""
    syllables = [rng.choice(ONSETS).lower() + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(rng.choice((2, 2, 3)))]
    return "".join(syllables).capitalize()


def version(rng: random.Random) -> str:
    core = f"{rng.randint(0, 12)}.{rng.randint(0, 30)}.{rng.randint(0, 19)}"
    return core + rng.choice(["", "", "", f"-rc.{rng.randint(1, 5)}", f"-beta{rng.randint(1, 9)}", f"+build{rng.randint(10, 999)}"])


def code(rng: random.Random) -> str:
    """A code to copy character by character: PIN, booking reference, short hash, plate."""
    letters, digits = string.ascii_uppercase, string.digits
    shapes = [
        lambda: "".join(rng.choice(digits) for _ in range(rng.randint(4, 6))),
        lambda: "".join(rng.choice(letters + digits) for _ in range(6)),
        lambda: "".join(rng.choice("0123456789abcdef") for _ in range(7)),
        lambda: f"{rng.choice(letters)}{rng.choice(letters)}-{rng.randint(100, 9999)}-{rng.choice(letters)}{rng.choice(letters)}",
    ]
    return rng.choice(shapes)()


def amount(rng: random.Random) -> str:
    return rng.choice([f"{rng.randint(1, 98)},{rng.randint(0, 999):03d}", f"{rng.randint(10, 9999)}.{rng.randint(0, 99):02d}"])


# An exact-string form: (subject, value) drawers, fact templates and questions (last held out).
EXACT: dict[str, dict] = {
    "version": dict(
        subject=lambda rng: rng.choice(PACKAGES), value=version,
        facts=["{subject} is at version {answer} now.", "We upgraded {subject} to {answer} this morning.",
               "Current {subject} release: {answer}", "{subject} {answer} is what production runs."],
        questions=["Which version of {subject} do we run?", "What release is {subject} on?",
                   "Which {subject} version is in production?"],
    ),
    "device_version": dict(
        subject=lambda rng: rng.choice(DEVICES), value=version,
        facts=["The firmware of {subject} reads {answer}.", "{subject} was flashed with firmware {answer}.",
               "Firmware on {subject}: {answer}", "After the update, {subject} reports firmware {answer}."],
        questions=["Which firmware does {subject} have?", "What firmware version is on {subject}?",
                   "Which firmware is {subject} running?"],
    ),
    "code": dict(
        subject=lambda rng: rng.choice(PLACES_FOR_CODES), value=code,
        facts=["The code for {subject} is {answer}.", "To open {subject}, enter {answer}.",
               "Access to {subject}: {answer}", "Whoever needs {subject} can use the code {answer}."],
        questions=["What is the code for {subject}?", "Which code opens {subject}?",
                   "How do I get into {subject}?"],
    ),
    "reference": dict(
        subject=lambda rng: rng.choice(CITIES), value=code,
        facts=["The hotel booking in {subject} has the reference {answer}.", "Reference for the {subject} trip: {answer}",
               "Our {subject} reservation is under {answer}.", "Quote {answer} when checking in at {subject}."],
        questions=["What is the reference of the {subject} booking?", "Under which reference is the {subject} reservation?",
                   "Which reference do I give at the {subject} hotel?"],
    ),
    "role_name": dict(
        subject=lambda rng: rng.choice(ROLES), value=unusual_name,
        facts=["The {subject} is called {answer}.", "Our {subject}'s name is {answer}.",
               "Meet {answer}, the {subject}.", "The {subject} introduced himself as {answer}."],
        questions=["Which name does our {subject} go by?", "What do we call the {subject}?",
                   "Who is our {subject} these days?"],
    ),
    "place_name": dict(
        subject=lambda rng: rng.choice(FIRST_NAMES), value=unusual_name,
        facts=["{subject} grew up in a village called {answer}.", "{subject} comes from {answer}.",
               "{subject}'s home town is {answer}.", "Before moving, {subject} lived in {answer} for years."],
        questions=["Where is {subject} from?", "Which place did {subject} grow up in?",
                   "What is {subject}'s home town?"],
    ),
}

# Nested JSON: a tool reports an object; the question asks for one field among several.
TOOLS = {
    "inventory": ("sku", ["warehouse", "bin", "count", "supplier"]),
    "deploy": ("service", ["version", "region", "commit", "owner"]),
    "billing": ("invoice", ["amount", "currency", "due", "payer"]),
    "monitor": ("host", ["cpu_pct", "disk_free_gb", "kernel", "rack"]),
    "crm": ("account", ["contact", "plan", "renews", "city"]),
}
FIELD_VALUES: dict[str, Callable[[random.Random], str]] = {
    "warehouse": unusual_name, "bin": code, "count": lambda rng: str(rng.randint(2, 9999)), "supplier": unusual_name,
    "version": version, "region": lambda rng: f"{rng.choice(['eu', 'us', 'ap', 'sa'])}-{rng.choice(['west', 'east', 'south'])}-{rng.randint(1, 4)}",
    "commit": code, "owner": unusual_name, "amount": amount, "currency": lambda rng: rng.choice(["EUR", "USD", "NOK", "JPY", "PLN", "ZAR"]),
    "due": lambda rng: f"2027-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}", "payer": unusual_name,
    "cpu_pct": lambda rng: str(rng.randint(3, 99)), "disk_free_gb": lambda rng: str(rng.randint(5, 3000)), "kernel": version,
    "rack": code, "contact": unusual_name, "plan": lambda rng: rng.choice(["starter", "team", "scale", "enterprise"]),
    "renews": lambda rng: f"2027-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}", "city": lambda rng: rng.choice(CITIES),
}
JSON_SHAPES = [
    lambda tool, key, ident, group: {"tool": tool, key: ident, "data": group},
    lambda tool, key, ident, group: {tool: {key: ident, "fields": group}},
    lambda tool, key, ident, group: {"result": {key: ident, **group}},
    lambda tool, key, ident, group: {"response": {"items": [{key: ident, "attributes": group}]}},
]
JSON_QUESTIONS = ["What {field} did the {tool} tool report for {key} {ident}?", "According to {tool}, what is the {field} of {ident}?",
                  "Which {field} does {key} {ident} have?"]

# Multi-turn chats: (opening, assistant's reply, the user's detail, question), a value drawer.
CHATS = [
    ("I need to change my ferry.", "Which sailing would you like?", "The one numbered {answer}.",
     "Which ferry sailing does the user want?", code),
    ("Can you note my new seat?", "Of course, which seat is it?", "Seat {answer}.",
     "Which seat does the user have now?", lambda rng: f"{rng.randint(1, 45)}{rng.choice('ABCDEF')}"),
    ("My aunt is visiting.", "Lovely! What's her name?", "{answer}, she's from my mother's side.",
     "What is the name of the user's aunt?", unusual_name),
    ("I've installed the new driver.", "Which version did you get?", "{answer}, straight from the vendor.",
     "Which driver version did the user install?", version),
    ("We're renting a cottage.", "Where is it?", "In {answer}, near the lake.",
     "Where is the user's cottage?", unusual_name),
    ("I got a new library card.", "What's the number?", "It's {answer}.",
     "What is the user's library card number?", code),
]

# Two facts in one sentence, each with its own question.
PAIRS = [
    ("{a} covers the morning shift and {b} the evening one.", "Who covers the morning shift?", "Who covers the evening shift?"),
    ("The key to the shed is with {a}; the key to the attic is with {b}.", "Who has the key to the shed?", "Who has the key to the attic?"),
    ("{a} chairs the Monday meeting, while {b} takes the minutes.", "Who chairs the Monday meeting?", "Who takes the minutes on Monday?"),
    ("This week {a} is on call; next week it is {b}.", "Who is on call this week?", "Who is on call next week?"),
]

FORMS = ("exact", "json", "chat", "pair")


class VariedSampler:
    """Draws facts in the varied forms, of one split; the same seed gives the same facts."""

    def __init__(self, split: str, seed: int = 0, excluded: frozenset[str] = frozenset()):
        self.split = split
        self.rng = random.Random(seed)
        self.names = FactSampler(split, seed)  # splits first names as the template corpus does
        self.excluded = excluded

    def _templates(self, templates: list) -> list:
        return templates[:-1] if self.split == "train" else templates[-1:]

    def _value(self, draw: Callable[[random.Random], str], tries: int = 200) -> str:
        """A value of this split that is not an excluded (outside-evaluation) answer. A drawer of
        a few values (currencies, plans) may have none of this split: then any value will do."""
        for attempt in range(2 * tries):
            value = draw(self.rng)
            in_split = _held_out(value) == (self.split == "eval") or attempt >= tries
            if in_split and value not in self.excluded:
                return value
        raise ValueError("every value this drawer makes is excluded")

    def facts(self, form: str | None = None) -> list[Fact]:
        """The facts of one write: two for a sentence holding two, else one."""
        form = form or self.rng.choice(FORMS)
        return getattr(self, f"_{form}")()

    def _exact(self) -> list[Fact]:
        relation = self.rng.choice(sorted(EXACT))
        spec = EXACT[relation]
        subject, answer = spec["subject"](self.rng), self._value(spec["value"])
        text = self.rng.choice(self._templates(spec["facts"])).format(subject=subject, answer=answer)
        question = self._exact_question(relation, subject)
        return [Fact(relation, f"{relation}:{subject}", text[0].upper() + text[1:], question, answer)]

    def _exact_question(self, relation: str, subject: str) -> str:
        return self.rng.choice(self._templates(EXACT[relation]["questions"])).format(subject=subject)

    def unwritten_question(self, fact: Fact, subjects: set[str]) -> str | None:
        """A question close to `fact` that it does not answer, if its form has one: for a JSON
        output, a field of the same object it did not report ("What kernel did the monitor tool
        report for host hos-4417?" after its cpu_pct and rack); for an exact string, the same
        thing of another subject, none of `subjects` ("Which firmware does the badge reader
        have?" after the lab printer's)."""
        if fact.relation.startswith("json:"):
            tool = fact.relation.removeprefix("json:")
            key, ident = fact.subject.split(":", 1)
            unreported = [name for name in TOOLS[tool][1] if f'"{name}"' not in fact.text]
            return self._json_question(tool, key, ident, self.rng.choice(unreported)) if unreported else None
        if fact.relation in EXACT:
            draw = EXACT[fact.relation]["subject"]
            others = {draw(self.rng) for _ in range(20)} - subjects
            return self._exact_question(fact.relation, self.rng.choice(sorted(others))) if others else None
        return None

    def _json(self) -> list[Fact]:
        rng = self.rng
        tool = rng.choice(sorted(TOOLS))
        key, fields = TOOLS[tool]
        ident = f"{key[:3]}-{rng.randint(100, 99999)}"
        group = {name: self._value(FIELD_VALUES[name]) for name in rng.sample(fields, rng.randint(2, len(fields)))}
        shown = {name: int(value) if value.isdigit() else value for name, value in group.items()}
        asked = rng.choice(sorted(group))
        shape = rng.choice(self._templates(JSON_SHAPES))
        question = self._json_question(tool, key, ident, asked)
        text = json.dumps(shape(tool, key, ident, shown), ensure_ascii=False)
        return [Fact(f"json:{tool}", f"{key}:{ident}", text, question, group[asked])]

    def _json_question(self, tool: str, key: str, ident: str, field: str) -> str:
        question = self.rng.choice(self._templates(JSON_QUESTIONS))
        return question.format(field=field.replace("_", " "), tool=tool, key=key, ident=ident)

    def _chat(self) -> list[Fact]:
        opening, reply, detail, question, draw = self.rng.choice(self._templates(CHATS))
        answer = self._value(draw)
        text = f"User: {opening}\nAssistant: {reply}\nUser: {detail.format(answer=answer)}"
        return [Fact("chat", f"chat:{question}", text, question, answer)]

    def _pair(self) -> list[Fact]:
        sentence, first, second = self.rng.choice(self._templates(PAIRS))
        a, b = self.rng.sample([n for n in self.names.first_names if n not in self.excluded], 2)
        text = sentence.format(a=a, b=b)
        return [Fact("pair", f"pair:{first}", text, first, a), Fact("pair", f"pair:{second}", text, second, b)]
