"""Answers copied from what was written: an ask answers with a span of the text of a write its
read recalled, or with "I don't know.".

Reading a value it never saw in training, the model rebuilds it from memory tokens: it often
misspells it ("rammen" for "ramen", "5.1" for "5.1.6") or strays into words no write holds. A
memory of whole writes keeps each write's token ids, and the writes a read recalls hold the
value as it was written. So each row of an ask may only decode a span of one of those texts or
"I don't know."; the model still chooses which, and in which tokens. A span is copied as
written, case included ("moss-lantern-44" is a password, "Moss-lantern-44" is not), though
its first token may carry a space. It starts at a word (`_starts`): a character after a space,
or a letter or digit after other punctuation than an apostrophe within a word ("ll" of
"she'll") or a joining mark within a compound ("03" of "2027-03-14"); not at a function word
("could" is no answer, "in Gdansk" none other than "Gdansk"); and its first word, after any
punctuation, is not one the question uses, since answering with the question's own subject is
the other common misread ("Hamster" for "What did Liam name the hamster?"). It may end where
its word does (before a space, or before punctuation that a space or the text's end follows):
"PR-3918" is no answer where "PR-3918-LH" was written. Names and values of several words
(`_runs`: "EH6 7QT", "0049 30 7719 2284", "ICE 1693", "Leopold Brandauer") are taken whole:
no span ends within one, none starts within a value, and none in the name of the question's
subject ("Lund" of "Liam Lund" for "What did Liam name the hamster?"). Where the question asks
for a person or a count, a span may be one (`_fits`): asked "who", its first chunk holds no
digit; asked "how many", "how much" or for a "number", it holds one or is a number word. A read
that recalls no such span answers "I don't know." rather than copy a look-alike's value of
another kind ("KT-208-ZN", a licence plate, for "Who is the user's manager?"; "Tango", a dog's
name, for "What number do I dial to call Bruno?").

The spans are an automaton over the bytes of the recalled texts: a state is a byte position,
a token leads from a position to the one after its bytes where the text continues with them.
`AnswerSpans` keeps each row's live positions on the decoding's device and moves them as tokens
are chosen, without reading anything back to the host.

Which span, the model still often gets wrong: another word of the right write ("Marrakesh" for
"Who collects Ines at the airport?" where "Ines flies to Marrakesh on the 9th and her brother
Tobiah collects her at the airport." was written; "1.24.0" for the production version of
"Production runs nginx 1.25.3; staging is still on 1.24.0."). The answer usually stands beside
the words the question names, so a span leans toward them: a span whose first word stands next
to a word of the question (or one sharing its stem, "ships" for "ship"), counting only words
that are neither function words nor chat role names, gets NEAR_BIAS logits, falling to none
NEAR_WORDS words away, times the share of the question's words its text holds (a write about
something else that shares a word or two leans little). The lean goes with the span's every
token and its end, so spans that share their first tokens ("1.25.3", "1.24.0") keep theirs
apart; "I don't know." has none.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Sequence

import torch
from transformers.convert_slow_tokenizer import bytes_to_unicode

from memagent.abstention import ABSTENTION

_START = re.compile(r"(?:(?<=\s)|^)\S|(?<=[^\w\s])(?<!\w['’])\w")
_CHUNK = re.compile(r"\S+")
_TRAILING_NON_WORD = re.compile(r"\W*$")
_WORD = re.compile(r"\w+")
_FIRST_WORD = re.compile(r"\W*(\w+)")
_TRAILING_PUNCTUATION = re.compile(r"[^\w\s]*")
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")

# Logits a span gains beside the question's words, and how many words away that falls to none.
NEAR_BIAS = 4.0
NEAR_WORDS = 4
# Words that say nothing of what a question is about, and are not counted in distances; with
# them the role names that begin every turn of a written chat.
FUNCTION_WORDS = frozenset(
    """a an the and or but if of to in on at by for with from as into onto about over under
    is are was were be been being am do does did done have has had can could will would shall
    should may might must i me my we us our you your he him his she her it its they them their
    this that these those there here what which who whom whose when where why how much many
    some any all each every no not so than then too very just also still now up out off
    user assistant""".split()
)
# Words that ask for a person, and for a count or amount; and the numbers spelled as words.
WHO_WORDS = frozenset({"who", "whom", "whose"})
COUNT_WORDS = frozenset({"many", "much"})
NUMBER_WORDS = frozenset(
    """zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen
    fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty
    ninety hundred thousand million billion dozen""".split()
)
# The most space-separated chunks of names and values an answer must take whole.
RUN_CHUNKS = 5
# Letters two words must share, at least, for one that begins the other to count as the same.
STEM_LETTERS = 4


class SpanVocabulary:
    """Each token's bytes, for a tokenizer: byte-level BPE pieces mapped back to their bytes;
    otherwise (SentencePiece) "▁" as a space and "<0xNN>" pieces as their byte. Special tokens
    spell nothing."""

    def __init__(self, tokenizer):
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        special = set(tokenizer.all_special_ids)
        byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
        byte_level = all(c in byte_of for i, piece in enumerate(pieces) if i not in special for c in piece)
        self.ids: dict[bytes, list[int]] = {}
        for i, piece in enumerate(pieces):
            if i in special or not piece:
                continue
            if byte_level:
                spelled = bytes(byte_of[c] for c in piece)
            elif match := _BYTE_PIECE.fullmatch(piece):
                spelled = bytes([int(match.group(1), 16)])
            else:
                spelled = piece.replace("\u2581", " ").encode()
            self.ids.setdefault(spelled, []).append(i)
        self.longest = max(map(len, self.ids), default=0)
        self.size = len(tokenizer)

    @functools.lru_cache(maxsize=512)
    def automaton(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One text's edges [E, 3] (from, token, to) between its byte positions, and [P] where an
        answer may end. Kept for the reads that recall the same write again (tens of KB each)."""
        data = text.encode()
        edges = []
        for start in range(len(data)):
            for end in range(start + 1, min(len(data), start + self.longest) + 1):
                edges.extend((start, token, end) for token in self.ids.get(data[start:end], ()))
        ends = torch.zeros(len(data) + 1, dtype=torch.bool)
        inside = {char for run in _runs(text) for char in range(run[0][0] + 1, _last_word_end(text, run))}
        for char, byte in enumerate(_byte_offsets(text)):
            ends[byte] = char > 0 and char not in inside and _word_ends(text, char)
        return _edges(edges), ends

    def first_edges(self, text: str, start: int) -> torch.Tensor:
        """The edges [E, 3] an answer's first token may take besides the text's own, from the
        word at character `start`: the same bytes after a space."""
        at, spelled = _byte_offsets(text)[start], (" " + text[start:]).encode()
        edges = []
        for length in range(2, min(len(spelled), self.longest) + 1):
            edges.extend((at, token, at + length - 1) for token in self.ids.get(spelled[:length], ()))
        return _edges(edges)


class AnswerSpans:
    """Every row's span automaton, flattened: edges (`sources`, `tokens`, `targets`) between
    byte positions of the rows' texts, each position's row (`owners`) and whether an answer
    may end there (`ends`), the positions `live` now, and which edges only a first token takes
    (`first`), and the lean of the span each live position continues (`lean`, logits). Rows
    without texts (`free` [B]) decode as they would."""

    def __init__(self, sources, tokens, targets, first, owners, ends, live, lean, free, vocab: int):
        self.sources, self.tokens, self.targets, self.first = sources, tokens, targets, first
        self.owners, self.ends, self.live, self.lean = owners, ends, live, lean
        self.free, self.vocab = free, vocab
        self.edge_rows = owners[sources]

    @classmethod
    def of(
        cls, vocabulary: SpanVocabulary, texts: Sequence[Sequence[str] | None], asked: Sequence[set[str]]
    ) -> AnswerSpans:
        """Spans of each row's texts of its recalled writes (None: the row is free), which start
        at no word of its question (`asked`, its lowercased words), and of "I don't know."."""
        edges, first, owners, ends, live, leans = [_edges([])], [torch.zeros(0, dtype=torch.bool)], [], [], [], []
        positions = 0
        for row, (row_texts, words) in enumerate(zip(texts, asked)):
            if row_texts is None:
                continue
            for text, whole in [(ABSTENTION, True), *((text, False) for text in row_texts)]:
                text_edges, text_ends = vocabulary.automaton(text)
                starts = [0] if whole else _starts(text, words)
                firsts = [vocabulary.first_edges(text, start) for start in starts]
                shift = torch.tensor([positions, 0, positions])
                for piece, only_first in [(text_edges, False), *((f, True) for f in firsts)]:
                    edges.append(piece + shift)
                    first.append(torch.full((len(piece),), only_first))
                owners.append(torch.full((len(text_ends),), row))
                ends.append(text_ends)
                live.extend(positions + _byte_offsets(text)[start] for start in starts)
                leans.extend([0.0] * len(starts) if whole else _leans(text, starts, words))
                positions += len(text_ends)
        sources, tokens, targets = torch.cat(edges).unbind(1)
        alive = torch.zeros(positions, dtype=torch.bool)
        alive[live] = True
        lean = torch.zeros(positions)
        lean[live] = NEAR_BIAS * torch.tensor(leans)
        owned = torch.cat(owners) if owners else torch.zeros(0, dtype=torch.long)
        ended = torch.cat(ends) if ends else torch.zeros(0, dtype=torch.bool)
        free = torch.tensor([row_texts is None for row_texts in texts], dtype=torch.bool)
        return cls(sources, tokens, targets, torch.cat(first), owned, ended, alive, lean, free, vocabulary.size)

    def to(self, device: torch.device) -> AnswerSpans:
        fields = (self.sources, self.tokens, self.targets, self.first, self.owners, self.ends, self.live, self.lean)
        fields += (self.free,)
        return AnswerSpans(*(t.to(device) for t in fields), self.vocab)

    def _usable(self, produced: int) -> torch.Tensor:
        usable = self.live[self.sources]
        return usable if not produced else usable & ~self.first

    def restrict(self, logits: torch.Tensor, produced: int, eos: torch.Tensor) -> torch.Tensor:
        """`logits` [B, V] with -inf on every token no live span of its row continues with, once
        `produced` tokens were chosen; the end (`eos`) where a live span may end, or none is left.
        Each token gains the largest lean of the spans it continues, the end that of the spans
        ending there. Scatters only: nothing waits for the device."""
        B, V = logits.shape
        width = max(V, self.vocab)
        usable = self._usable(produced)
        slots = self.edge_rows * width + self.tokens
        allowed = torch.zeros(B * width, device=logits.device).scatter_add_(0, slots, usable.float())
        allowed = allowed.view(B, width)[:, :V] > 0
        lean = torch.zeros(B * width, device=logits.device)
        lean = lean.scatter_reduce_(0, slots, self.lean[self.sources] * usable, "amax").view(B, width)[:, :V]
        ending_here = self.live & self.ends if produced else torch.zeros_like(self.live)
        may_end = torch.zeros(B, device=logits.device).scatter_add_(0, self.owners, ending_here.float()) > 0
        end_lean = torch.zeros(B, device=logits.device).scatter_reduce_(0, self.owners, self.lean * ending_here, "amax")
        ending = torch.zeros(V, dtype=torch.bool, device=logits.device).scatter_(0, eos, True)
        allowed |= ending & (may_end | ~allowed.any(1))[:, None]
        allowed |= self.free[:, None]
        lean = torch.where(ending, end_lean[:, None], lean)
        return (logits + lean).masked_fill(~allowed, float("-inf"))

    def advance(self, token: torch.Tensor, produced: int) -> None:
        """Move each row's live positions, and their spans' leans, along its chosen `token` [B]."""
        taken = self._usable(produced) & (self.tokens == token[self.edge_rows])
        moved = torch.zeros(len(self.live), device=self.live.device)
        self.live = moved.scatter_add_(0, self.targets, taken.float()) > 0
        carried = self.lean[self.sources] * taken
        self.lean = torch.zeros_like(self.lean).scatter_reduce_(0, self.targets, carried, "amax")


def _leans(text: str, starts: list[int], asked: set[str]) -> list[float]:
    """How far each span of `text` starting at a character of `starts` leans toward the words
    of its question (`asked`), from 0 to 1 (see the module)."""
    named = [word for word in asked if len(word) > 1 and word not in FUNCTION_WORDS]
    words = [w for w in _WORD.finditer(text) if w.group().lower() not in FUNCTION_WORDS]
    matches = [[_same_word(w.group().lower(), word) for word in named] for w in words]
    near = [i for i, matched in enumerate(matches) if any(matched)]
    held = sum(map(any, zip(*matches))) / len(named) if matches and named else 0.0
    at = {w.start(): i for i, w in enumerate(words)}
    leans = []
    for start in starts:
        first = _first_word(text, start)
        i = at.get(first.start(1)) if first else None
        away = min((abs(i - j) for j in near if j != i), default=None) if i is not None else None
        leans.append(0.0 if away is None else held * max(0.0, 1 - (away - 1) / NEAR_WORDS))
    return leans


def _same_word(word: str, asked: str) -> bool:
    """Whether `word` counts as the question's `asked`: the same, or one begins the other and
    both are at least STEM_LETTERS long."""
    if word == asked:
        return True
    return min(len(word), len(asked)) >= STEM_LETTERS and (word.startswith(asked) or asked.startswith(word))


def _first_word(text: str, start: int) -> re.Match | None:
    """The first word of a span starting at character `start` (group 1), after any punctuation
    and spaces."""
    return _FIRST_WORD.match(text, start)


def _asked(text: str, start: int, asked: set[str]) -> bool:
    """Whether a span starting at character `start` begins with a word of the question
    ("- charger" for "Which charger must be packed?")."""
    word = _first_word(text, start)
    return word is not None and word.group(1).lower() in asked


def _starts(text: str, asked: set[str]) -> list[int]:
    """Where a span of `text` may start (characters), for a question using the words `asked`:
    at a word (`_START`) that is not the question's, no function word (`_function_word`), not
    within a compound (`_in_compound`), not after the first chunk of a run that holds a value
    (`_runs`: "7QT" of "EH6 7QT") and nowhere in one that holds a word of the question, the
    subject's name ("Lund" of "Liam Lund", "Project" of "Project Harbor" for "Who decides on
    Harbor?"), but where a value follows the question's word ("ICE 1693" of "Train ICE 1693" for
    "Which train?"). Another part of a name may ("Quispe" of "Xiomara Quispe"). A span is of the
    kind the question asks for (`_fits`)."""
    kind = _asked_for(asked)
    held = set()  # the starts of chunks no span starts in
    for run in _runs(text):
        asked_at = [i for i, (start, _) in enumerate(run) if _asked(text, start, asked)]
        if asked_at:  # the question's subject ("Project Harbor"), or its word before a value
            after = asked_at[-1] + 1
            value = after < len(run) and _holds_digit(text, run[after:])
            held.update(start for i, (start, _) in enumerate(run) if not (value and i == after))
        elif _holds_digit(text, run[1:]):
            held.update(start for start, _ in run[1:])
    chunks = [chunk.start() for chunk in _CHUNK.finditer(text)]
    starts = []
    for match in _START.finditer(text):
        at = match.start()
        word = _first_word(text, at)
        if word is None or word.group(1).lower() in asked or _in_compound(text, at):
            continue
        if _function_word(text, word) or chunks[bisect.bisect_right(chunks, at) - 1] in held:
            continue
        if kind is None or _fits(text, at, word, kind):
            starts.append(at)
    return starts


def _asked_for(asked: set[str]) -> str | None:
    """What a question using the words `asked` asks for: "person" ("who", "whom", "whose"),
    "count" ("how many", "how much", a "number"), or None: anything."""
    if asked & WHO_WORDS:
        return "person"
    if "number" in asked or ("how" in asked and asked & COUNT_WORDS):
        return "count"
    return None


def _fits(text: str, at: int, word: re.Match, kind: str) -> bool:
    """Whether a span starting at character `at` (its first word `word`, group 1) is of `kind`,
    judged by its first chunk: a person's holds no digit ("Ottoline", "sister", not "PD-7731"); a
    count's holds one or is a number word ("18,442", "€2,340", "twelve")."""
    digit = any(c.isdigit() for c in _CHUNK.match(text, at).group())
    if kind == "person":
        return not digit
    return digit or word.group(1).lower() in NUMBER_WORDS


@functools.lru_cache(maxsize=512)
def _runs(text: str) -> list[list[tuple[int, int]]]:
    """The runs of `text`: two to RUN_CHUNKS chunks (`_CHUNK`, one space apart) of names and
    values ("Leopold Brandauer", "EH6 7QT", "0049 30 7719 2284"), each chunk's (start, end).
    An answer takes a run whole: "7719" is no phone number, "Lund" no answer to who Liam is."""
    runs, run = [], []
    for chunk in _CHUNK.finditer(text):
        word = chunk.group()
        # One space between, no punctuation: "Brandauer," ends a run, "(Leopold" begins one.
        joined = run and text[run[-1][1] : chunk.start()] == " " and text[run[-1][1] - 1].isalnum()
        if not (joined and word[0].isalnum()):
            runs.append(run)
            run = []
        if _names_or_values(word):
            run.append(chunk.span())
    runs.append(run)
    return [run for run in runs if 2 <= len(run) <= RUN_CHUNKS]


def _holds_digit(text: str, chunks: list[tuple[int, int]]) -> bool:
    return any(c.isdigit() for start, end in chunks for c in text[start:end])


def _names_or_values(chunk: str) -> bool:
    """Whether a chunk names or counts something: a digit in it, or a capital first letter on
    a word that is not a function word ("The", "If")."""
    if any(c.isdigit() for c in chunk):
        return True
    word = _FIRST_WORD.match(chunk)
    return word is not None and word.group(1)[0].isupper() and word.group(1).lower() not in FUNCTION_WORDS


def _last_word_end(text: str, run: list[tuple[int, int]]) -> int:
    """Where the run's last chunk's last word ends (before its trailing punctuation)."""
    start, end = run[-1]
    return start + _TRAILING_NON_WORD.search(text[start:end]).start()


def _function_word(text: str, word: re.Match) -> bool:
    """Whether `word` (group 1) is a function word, not a name that is spelled as one: "May"
    and "Will" within a sentence are names, "If" beginning one is not."""
    if word.group(1).lower() not in FUNCTION_WORDS:
        return False
    at = word.start(1)
    while at and text[at - 1].isspace():
        at -= 1
    return word.group(1).islower() or not at or not (text[at - 1].isalnum() or text[at - 1] == ",")


def _in_compound(text: str, at: int) -> bool:
    """Whether character `at` continues a compound: after a hyphen or dot that follows a letter
    or digit ("north" of "eu-north-1", "0" of "4.12.0"), or a colon or slash between digits
    ("40" of "09:40", "03" of "2027/03/14"; "2.9.14" of "billing-api:2.9.14" is a value)."""
    if at < 2:
        return False
    joined, before = text[at - 1], text[at - 2]
    return (joined in "-." and before.isalnum()) or (joined in ":/" and before.isdigit() and text[at].isdigit())


def _edges(edges: list[tuple[int, int, int]]) -> torch.Tensor:
    return torch.tensor(edges, dtype=torch.long).reshape(-1, 3)


@functools.lru_cache(maxsize=512)
def _byte_offsets(text: str) -> list[int]:
    """The byte offset of each character of `text`, and of its end."""
    offsets = [0]
    for char in text:
        offsets.append(offsets[-1] + len(char.encode()))
    return offsets


def _word_ends(text: str, end: int) -> bool:
    """Whether an answer copied from `text` may end at character `end`: before a space, at the
    end, or before punctuation that a space or the end follows."""
    rest = text[end:]
    after = rest[_TRAILING_PUNCTUATION.match(rest).end() :]
    return not after or after[0].isspace()


def question_words(question: str) -> set[str]:
    """The lowercased words of `question`, which no answer span starts at."""
    return {word.lower() for word in _WORD.findall(question)}
