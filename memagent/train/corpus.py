"""The agent-memory corpus, generated offline from templates.

A `Fact` is one thing an agent could be told (a sentence about a person, place or project, a
tool's JSON output line, a conversation turn) with a question whose answer is only in it.
Every relation has several fact templates and question phrasings; the last of each is kept
for evaluation, as are a fifth of the names and values, so held-out facts are phrased and
filled in ways training never saw. General text (for keeping general ability) is the prose
of Python's own documentation (`pydoc_data`), which ships with the interpreter.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

SPLITS = ("train", "eval")

FIRST_NAMES = (
    "Alice Bruno Chiara Daniel Elena Farid Greta Hiroshi Ingrid Jonas Kavya Liam Marta Nadia Oscar Priya "
    "Quentin Rosa Samir Tomas Ursula Viktor Wanda Xavier Yara Zoltan Amara Boris Camille Dmitri Esme Felix "
    "Gemma Hugo Isla Joaquin Keiko Lars Mei Nikolai Olga Pablo Rania Sven Talia Umar Vera Wes Ximena Yusuf "
    "Zara Anya Bastian Cora Diego Edith Fabian Hanna Ivo Jade Kofi Lena Mateo Noor Otto Petra Raul Sofia"
).split()
SURNAMES = (
    "Moreau Okafor Lindqvist Tanaka Rossi Novak Haddad Fischer Kowalski Duarte Nguyen Petrov Brennan Sato "
    "Alvarez Jensen Mbeki Costa Weber Larsen Kapoor Horvat Silva Dubois Ivanova Byrne Ortega Yilmaz Keller "
    "Hartmann Quinn Varga Abbott Castillo Lund Mendes Park Romero Stein Thorne"
).split()
COLOURS = (
    "teal crimson amber lavender olive maroon turquoise coral indigo mustard scarlet magenta ochre "
    "burgundy cyan beige violet emerald navy salmon charcoal lilac saffron cobalt"
).split()
CITIES = (
    "Lisbon Oslo Nairobi Kyoto Porto Tallinn Montreal Valencia Krakow Dublin Seville Bergen Lyon Quito "
    "Hanoi Gdansk Tbilisi Adelaide Leipzig Bologna Riga Cusco Zagreb Malmo Ghent Tampere Bilbao Graz "
    "Cork Utrecht Brno Aarhus Nantes Turin Split Perth Halifax Oaxaca Durban Kochi"
).split()
JOBS = (
    "nurse architect pilot baker carpenter translator geologist pharmacist librarian electrician "
    "veterinarian florist plumber journalist cartographer beekeeper locksmith optician surveyor "
    "chemist sommelier tailor glassblower paramedic"
).split()
FOODS = (
    "lasagne ramen falafel paella sushi goulash risotto dumplings tacos pierogi curry moussaka "
    "pho gnocchi burritos couscous kimchi tapas borscht ceviche"
).split()
PET_NAMES = (
    "Biscuit Pepper Mochi Ziggy Noodle Waffles Pickles Juniper Maple Toffee Pixel Marble Sprout "
    "Nugget Clover Basil Domino Pretzel Olive Tango Cricket Button Hazel Fudge Comet Bramble"
).split()
PETS = "dog cat parrot rabbit tortoise hamster ferret goldfish".split()
INSTRUMENTS = "cello banjo trumpet harp violin accordion oboe ukulele saxophone flute drums clarinet".split()
LANGUAGES = "Rust Go Haskell Kotlin Elixir Scala Julia Swift Clojure OCaml Erlang Zig Fortran Dart".split()
CODENAMES = (
    "Falcon Nimbus Quartz Orchid Tundra Beacon Cobalt Marigold Vortex Juniper Sequoia Harbor Lantern "
    "Meridian Nebula Pinnacle Cascade Ember Glacier Horizon Kestrel Monsoon Obsidian Prism"
).split()
MONTHS = "January February March April May June July August September October November December".split()
WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
ROOMS = "Aurora Birch Cedar Delta Ember Fjord Granite Heron Iris Jasper Kelp Lotus".split()
ALLERGIES = "peanuts shellfish penicillin pollen gluten latex sesame strawberries walnuts dairy".split()
SERVICES = "billing search checkout auth payments inventory gateway scheduler".split()
TICKET_STATES = "open blocked resolved escalated".split()


def _number(rng: random.Random, lo: int, hi: int) -> str:
    return str(rng.randint(lo, hi))


def _code(rng: random.Random) -> str:
    return rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ") + str(rng.randint(10, 99))


# A relation: how its slots are filled, how facts say it, how questions ask for it.
# Templates use {person}, {first}, {project}, {city}, ... and the answer slot {answer}.
# The last fact template and the last question are held out for evaluation.
RELATIONS: dict[str, dict] = {
    "colour": dict(
        kind="person", answer=lambda rng, s: s.pick(rng, COLOURS),
        facts=["{person}'s favourite colour is {answer}.", "{person} loves the colour {answer} more than any other.",
               "Ask {person} about colours and the answer is always {answer}.",
               "If {person} could paint everything one colour, it would be {answer}."],
        questions=["What is {person}'s favourite colour?", "Which colour does {person} like best?",
                   "Which shade would make {first} happy?", "If I buy {person} a scarf, what colour should it be?",
                   "What colour would {first} pick if asked for a favourite?"],
    ),
    "city": dict(
        kind="person", answer=lambda rng, s: s.pick(rng, CITIES),
        facts=["{person} lives in {answer}.", "{person} moved to {answer} a few years ago and still lives there.",
               "Home for {person} is the city of {answer}.", "These days {person} rents a flat in {answer}."],
        questions=["Where does {person} live?", "In which city is {person} based?",
                   "Where would I visit {first}?", "Which city is {person}'s address in?",
                   "Which city does {first} call home?"],
    ),
    "job": dict(
        kind="person", answer=lambda rng, s: s.pick(rng, JOBS),
        facts=["{person} works as a {answer}.", "{person} has been a {answer} for ten years.",
               "By profession, {person} is a {answer}.", "{person} earns a living as a {answer}."],
        questions=["What does {person} do for a living?", "What is {person}'s job?",
                   "What kind of work does {first} do?", "What was {person} trained as?",
                   "What is {first}'s profession?"],
    ),
    "food": dict(
        kind="person", answer=lambda rng, s: s.pick(rng, FOODS),
        facts=["{person}'s favourite dish is {answer}.", "{person} would eat {answer} every day if possible.",
               "When {person} eats out, it is usually {answer}.", "Nothing makes {person} happier than a plate of {answer}."],
        questions=["What is {person}'s favourite food?", "Which dish does {person} like most?",
                   "Which meal would {first} enjoy?", "What does {person} order at a restaurant?",
                   "What should I cook for {first}?"],
    ),
    "pet": dict(
        kind="person", answer=lambda rng, s: s.pick(rng, PET_NAMES), slots={"pet": PETS},
        facts=["{person} has a {pet} called {answer}.", "{person}'s {pet} is named {answer}.",
               "{answer} is the name of the {pet} that {person} owns.", "{person} adopted a {pet} and named it {answer}."],
        questions=["What is the name of {person}'s {pet}?", "What is {person}'s {pet} called?",
                   "How is {first}'s {pet} called?", "Which name does the {pet} of {person} answer to?",
                   "What did {first} name the {pet}?"],
    ),
    "birthday": dict(
        kind="person", answer=lambda rng, s: s.pick(rng, MONTHS),
        facts=["{person}'s birthday is in {answer}.", "{person} was born in {answer}.",
               "Every {answer}, {person} celebrates a birthday.", "{person} turns a year older each {answer}."],
        questions=["In which month is {person}'s birthday?", "When was {person} born?",
                   "When does {first} celebrate?", "In what month does {person} get older?",
                   "Which month should I send {first} a birthday card?"],
    ),
    "extension": dict(
        kind="person", answer=lambda rng, s: _number(rng, 1000, 9999),
        facts=["{person}'s phone extension is {answer}.", "You can reach {person} on extension {answer}.",
               "Dial {answer} to get {person} on the phone.", "The desk phone of {person} answers on {answer}."],
        questions=["What is {person}'s phone extension?", "Which extension reaches {person}?",
                   "How do I phone {first}?", "Which digits reach {person}'s desk?",
                   "What number do I dial to call {first}?"],
    ),
    "instrument": dict(
        kind="person", answer=lambda rng, s: s.pick(rng, INSTRUMENTS),
        facts=["{person} plays the {answer}.", "{person} practises the {answer} every evening.",
               "In the band, {person} is on {answer}.", "{person} took up the {answer} last winter."],
        questions=["Which instrument does {person} play?", "What does {person} play in the band?",
                   "What does {first} practise?", "Which instrument would I hear {person} on?",
                   "What instrument is {first} learning?"],
    ),
    "project_language": dict(
        kind="project", answer=lambda rng, s: s.pick(rng, LANGUAGES),
        facts=["Project {project} is written in {answer}.", "The code of Project {project} is all {answer}.",
               "Project {project} was rewritten in {answer} last year.", "The {project} team builds everything in {answer}."],
        questions=["Which language is Project {project} written in?", "What programming language does Project {project} use?",
                   "What would I need to know to work on {project}?", "Which language are the {project} sources in?",
                   "In what language would I read the {project} code?"],
    ),
    "project_lead": dict(
        kind="project", answer=lambda rng, s: s.pick(rng, s.first_names),
        facts=["Project {project} is led by {answer}.", "{answer} is the lead of Project {project}.",
               "The person in charge of Project {project} is {answer}.", "{answer} runs Project {project}."],
        questions=["Who leads Project {project}?", "Who is in charge of Project {project}?",
                   "Who decides things for {project}?", "Who would I talk to about {project}?",
                   "Whom should I ask about decisions on {project}?"],
    ),
    "project_deadline": dict(
        kind="project", answer=lambda rng, s: s.pick(rng, MONTHS),
        facts=["Project {project} is due in {answer}.", "The deadline for Project {project} is the end of {answer}.",
               "Project {project} must ship by {answer}.", "Everything for Project {project} has to be done in {answer}."],
        questions=["When is Project {project} due?", "What is the deadline of Project {project}?",
                   "When must {project} be finished?", "How long does the {project} team have?",
                   "By which month does {project} need to be finished?"],
    ),
    "project_budget": dict(
        kind="project", answer=lambda rng, s: _number(rng, 11, 95) + ",000",
        facts=["Project {project} has a budget of {answer} euros.", "The budget for Project {project} is {answer} euros.",
               "Project {project} may spend {answer} euros in total.", "Funding for Project {project} was set at {answer} euros."],
        questions=["What is the budget of Project {project}?", "How much money does Project {project} have?",
                   "How much can {project} cost?", "What funding does {project} have?",
                   "How many euros can {project} spend?"],
    ),
    "office_floor": dict(
        kind="city", answer=lambda rng, s: _number(rng, 2, 40),
        facts=["The {city} office is on floor {answer}.", "Our {city} office occupies floor {answer} of the tower.",
               "In {city}, the team sits on floor {answer}.", "Take the lift to floor {answer} for the {city} office."],
        questions=["Which floor is the {city} office on?", "On what floor is the office in {city}?",
                   "How high up is the {city} office?", "Where do I go to meet the {city} team?",
                   "Where in the building do I find the {city} team?"],
    ),
    "room_seats": dict(
        kind="room", answer=lambda rng, s: _number(rng, 4, 60),
        facts=["Meeting room {room} seats {answer} people.", "Room {room} has chairs for {answer} people.",
               "Up to {answer} people fit in meeting room {room}.", "The {room} room is booked for groups of at most {answer}."],
        questions=["How many people fit in meeting room {room}?", "What is the capacity of room {room}?",
                   "How many chairs are in {room}?", "Can the {room} room hold my team, and how many fit?",
                   "How large a group can use the {room} room?"],
    ),
    "weather": dict(
        kind="city", answer=lambda rng, s: _number(rng, -9, 38), tool=True,
        facts=['{{"city": "{city}", "temp_c": {answer}}}', '{{"{city}": {{"temp": {answer}}}}}',
               '{{"tool": "weather", "city": "{city}", "temp_c": {answer}}}', '{{"forecast": "{city}", "temperature": {answer}}}'],
        questions=["What temperature did the weather tool report for {city}?", "How warm is it in {city} according to the weather lookup?",
                   "What was the weather in {city}?", "How hot or cold is {city}?",
                   "How many degrees was it in {city}?"],
    ),
    "order": dict(
        kind="order", answer=lambda rng, s: s.pick(rng, CITIES), tool=True,
        facts=['{{"order": {order}, "ship_to": "{answer}"}}', '{{"order": {order}, "to": "{answer}"}}',
               '{{"tool": "orders", "id": {order}, "destination": "{answer}"}}', '{{"shipment": {order}, "dest": "{answer}"}}'],
        questions=["Where is order {order} being shipped?", "What is the destination of order {order}?",
                   "Where will order {order} arrive?", "Which city receives order {order}?",
                   "To which city does order {order} go?"],
    ),
    "ticket": dict(
        kind="ticket", answer=lambda rng, s: s.pick(rng, s.first_names), tool=True,
        facts=['{{"ticket": "{ticket}", "assignee": "{answer}"}}', '{{"{ticket}": "{answer}"}}',
               '{{"tool": "tracker", "issue": "{ticket}", "owner": "{answer}"}}', '{{"id": "{ticket}", "by": "{answer}"}}'],
        questions=["Who is ticket {ticket} assigned to?", "Who owns ticket {ticket}?",
                   "Who is working on {ticket}?", "Whom do I ask about {ticket}?",
                   "Which person is handling {ticket}?"],
    ),
    "latency": dict(
        kind="service", answer=lambda rng, s: _number(rng, 12, 990), tool=True,
        facts=['{{"svc": "{service}", "p99": {answer}}}', '{{"service": "{service}", "p99_ms": {answer}}}',
               '{{"tool": "metrics", "service": "{service}", "latency_ms": {answer}}}', '{{"{service}_p99_ms": {answer}}}'],
        questions=["What p99 latency did the {service} service report?", "How slow is the {service} service at p99?",
                   "How many milliseconds does {service} take at worst?", "How fast is {service}?",
                   "What tail latency, in milliseconds, does {service} show?"],
    ),
    "gate": dict(
        kind="user", answer=lambda rng, s: _code(rng), turn=True,
        facts=["User: my flight leaves from gate {answer}.", "User: just so you know, I'm boarding at gate {answer}.",
               "User: note that my gate is {answer} today.", "User: they moved my flight to gate {answer}."],
        questions=["Which gate does the user's flight leave from?", "What gate is the user boarding at?",
                   "Where does the user board?", "Which gate should I send the user to?",
                   "Where at the airport should the user go to board?"],
    ),
    "allergy": dict(
        kind="user", answer=lambda rng, s: s.pick(rng, ALLERGIES), turn=True,
        facts=["User: I'm allergic to {answer}.", "User: please remember that {answer} give me a bad reaction.",
               "User: keep {answer} away from me, I'm allergic.", "User: my doctor says I must avoid {answer}."],
        questions=["What is the user allergic to?", "What must the user avoid because of an allergy?",
                   "What should I keep away from the user?", "What can the user not have?",
                   "Which allergy does the user have?"],
    ),
    "nickname": dict(
        kind="user", answer=lambda rng, s: s.pick(rng, s.first_names), turn=True,
        facts=["User: please call me {answer}.", "User: everyone calls me {answer}, you can too.",
               "User: I go by {answer}.", "User: my friends know me as {answer}."],
        questions=["What does the user want to be called?", "What name does the user go by?",
                   "What should I call the user?", "Which name does the user prefer?",
                   "How should I address the user?"],
    ),
}


@dataclass(frozen=True)
class Fact:
    relation: str
    subject: str  # who or what the fact is about (distinct facts in one episode differ here)
    text: str  # what gets written into memory
    question: str
    answer: str


def told_of(fact: Fact, subject: str) -> Fact:
    """`fact` told of another `subject` of its kind (a name, as after the colon of
    `Fact.subject`): the name replaced in its text and question, a person's first name (which
    questions may ask by) in the question too."""
    kind, own = fact.subject.split(":", 1)
    question = fact.question.replace(own, subject)
    if kind == "person":
        question = question.replace(own.split()[0], subject.split()[0])
    return Fact(fact.relation, f"{kind}:{subject}", fact.text.replace(own, subject), question, fact.answer)


def _held_out(item: str) -> bool:
    """A fixed fifth of all names and values, chosen by hash, appears only in evaluation."""
    return zlib.crc32(item.encode()) % 5 == 0


class FactSampler:
    """Draws facts of one split; the same seed gives the same facts."""

    def __init__(self, split: str, seed: int = 0):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}")
        self.split = split
        self.rng = random.Random(seed)
        self.first_names = self._part(FIRST_NAMES)
        self.surnames = self._part(SURNAMES)

    def _part(self, items) -> list[str]:
        wanted = self.split == "eval"
        part = [i for i in items if _held_out(i) == wanted]
        return part or list(items)

    def pick(self, rng: random.Random, items) -> str:
        return rng.choice(self._part(items))

    def _templates(self, templates: list[str]) -> list[str]:
        return templates[:-1] if self.split == "train" else templates[-1:]

    def fact(self, relation: str | None = None, *, tool: bool | None = None) -> Fact:
        """One fact (of `relation`, or of a random one; only tool outputs with tool=True)."""
        rng = self.rng
        names = [n for n, r in RELATIONS.items() if tool is None or bool(r.get("tool")) == tool]
        relation = relation or rng.choice(names)
        spec = RELATIONS[relation]
        first = self.pick(rng, FIRST_NAMES)
        slots = dict(
            first=first, person=f"{first} {self.pick(rng, SURNAMES)}", project=self.pick(rng, CODENAMES),
            city=self.pick(rng, CITIES), room=self.pick(rng, ROOMS), service=self.pick(rng, SERVICES),
            order=_number(rng, 100, 999), ticket=f"{rng.choice('ABCDEFGHJKLMNPQRSTUVWXYZ')}-{rng.randint(100, 999)}",
        )
        for name, values in spec.get("slots", {}).items():
            slots[name] = self.pick(rng, values)
        answer = spec["answer"](rng, self)
        subject = "user" if spec["kind"] == "user" else slots[spec["kind"]]
        text = rng.choice(self._templates(spec["facts"])).format(answer=answer, **slots)
        question = rng.choice(self._templates(spec["questions"])).format(**slots)
        return Fact(relation, f"{spec['kind']}:{subject}", text, question, answer)

    def distinct(self, n: int, **options) -> list[Fact]:
        """`n` facts with different subjects, answers and questions, so every question has one
        right answer. Subjects alone do not ensure it: "Sofia Costa" and "Sofia Thorne" are
        both asked about as "Sofia"."""
        facts: list[Fact] = []
        while len(facts) < n:
            fact = self.fact(**options)
            if all(f.subject != fact.subject and f.answer != fact.answer and f.question != fact.question for f in facts):
                facts.append(fact)
        return facts


def _prose(topics: dict[str, str], held_out: bool) -> list[str]:
    paragraphs = []
    for name in sorted(topics):
        if (zlib.crc32(name.encode()) % 5 == 0) != held_out:
            continue
        for block in topics[name].split("\n\n"):
            text = " ".join(line.strip() for line in block.splitlines()).strip()
            # Prose only: skip code samples, grammar rules and headings.
            if len(text) > 200 and text.count("=") < 3 and not text.startswith((">>>", "*", "-")):
                paragraphs.append(text)
    return paragraphs


def prose_tokens(tokenizer, split: str) -> list[int]:
    """The split's prose as one token stream, paragraphs separated by blank lines."""
    stream: list[int] = []
    for paragraph in general_paragraphs(split):
        stream += tokenizer(paragraph + "\n\n", add_special_tokens=False)["input_ids"]
    return stream


def general_paragraphs(split: str) -> list[str]:
    """Paragraphs of English prose from Python's documentation topics, split by topic
    (a paragraph that several topics share belongs to training)."""
    from pydoc_data.topics import topics

    train = _prose(topics, held_out=False)
    if split == "train":
        return train
    seen = set(train)
    return [p for p in _prose(topics, held_out=True) if p not in seen]
