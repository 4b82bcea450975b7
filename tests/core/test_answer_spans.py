"""Asks answer with a span of a recalled write's text, or "I don't know.": spans start at words
the question does not use and end where a word does; rows are narrowed on the device."""

import re

import pytest
import torch

import memagent
from memagent import default_model
from memagent.abstention import ABSTENTION
from memagent.answer_spans import NEAR_BIAS, AnswerSpans, SpanVocabulary, question_words
from memagent.model.pool_file import save_pool
from memagent.sampling import SamplingParams
from tests.core.test_gpu_path import HostReads

WRITES = [
    "Ottilie keeps a parrot called Ravi.",
    "Release 7.14.2-rc.3 ships PR-3918-LH to Kirkjubæjarklaustur.",
    '{"shipment": 584, "dest": "Ghent"}',
]


@pytest.fixture(scope="module")
def tokenizer():
    return default_model.load_tokenizer()


@pytest.fixture(scope="module")
def vocabulary(tokenizer) -> SpanVocabulary:
    return SpanVocabulary(tokenizer)


@pytest.fixture(scope="module")
def writes_engine() -> memagent.Engine:
    return memagent.load("random:tiny-writes")


QUESTION = "Which release goes out?"


def _spans(vocabulary, texts, question=QUESTION) -> AnswerSpans:
    return AnswerSpans.of(vocabulary, texts, [question_words(question)] * len(texts))


def _allowed(spans: AnswerSpans, produced: int, eos: torch.Tensor) -> torch.Tensor:
    return spans.restrict(torch.zeros(len(spans.free), spans.vocab), produced, eos) > float("-inf")


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _may_end_after(vocabulary, write: str, ids: list[int], question: str = QUESTION) -> bool:
    """Decode `ids` under the spans of `write`: each must be allowed; then whether the answer
    may end."""
    spans, eos = _spans(vocabulary, [[write]], question), torch.tensor([0])
    for produced, token in enumerate(ids):
        assert _allowed(spans, produced, eos)[0, token], (ids, produced)
        spans.advance(torch.tensor([token]), produced)
    return bool(_allowed(spans, len(ids), eos)[0, 0])


def test_a_span_starts_at_a_word_the_question_does_not_use(tokenizer, vocabulary):
    first = _allowed(_spans(vocabulary, [[WRITES[1]]]), 0, torch.tensor([0]))[0]
    for start in ("7", "ships", " ships", "PR", " PR", "Kirk", "I don't"):
        assert first[_ids(tokenizer, start)[0]], start
    assert not first[_ids(tokenizer, "Release")[0]], "the question's own word"
    assert not first[_ids(tokenizer, "Zoltan")[0]], "no recalled write holds it"
    assert not first[_ids(tokenizer, "kirk")[0]] and not first[_ids(tokenizer, "Ships")[0]], "copied as written"
    for inside in ("14", "3918", "LH"):
        assert not first[_ids(tokenizer, inside)[0]], f"{inside}: within a compound"
    assert not first[_ids(tokenizer, "to")[0]], "a function word"
    assert not first[0], "nothing has been chosen: no end yet"


def test_a_colon_or_slash_joins_a_compound_only_between_digits(tokenizer, vocabulary):
    written = "image billing-api:2.9.14 at 09:40 on 2027/03/14"
    assert _may_end_after(vocabulary, written, _ids(tokenizer, "2.9.14"), "Which image version?"), "a tag"
    first = _allowed(_spans(vocabulary, [[written]], "Which image version?"), 0, torch.tensor([0]))[0]
    for inside in ("api", "4", "3"):  # "api" of "billing-api", "40" of "09:40", "03" and "14" of the date
        assert not first[_ids(tokenizer, inside)[0]], inside


def test_a_function_word_starts_no_span_but_a_name_spelled_as_one_does(tokenizer, vocabulary):
    written = "If Liam could, he would meet Will in May at the harbour."
    first = _allowed(_spans(vocabulary, [[written]], "When does Liam meet Will?"), 0, torch.tensor([0]))[0]
    for word in ("If", "could", "would", "in", "at", "the"):
        assert not first[_ids(tokenizer, word)[0]], word
    assert first[_ids(tokenizer, "May")[0]] and first[_ids(tokenizer, "harbour")[0]]


RUNS = "User: the ICE 1693 to Hamburg, then postcode EH6 7QT. Landlord: Xiomara Quispe."


def test_names_and_values_of_several_words_are_taken_whole(tokenizer, vocabulary):
    question = "Where does the user go?"
    for whole in ("ICE 1693", "EH6 7QT", "Xiomara Quispe", "Quispe"):
        assert _may_end_after(vocabulary, RUNS, _ids(tokenizer, whole), question), whole
    for part in ("ICE", "EH6", "Xiomara"):
        assert not _may_end_after(vocabulary, RUNS, _ids(tokenizer, part), question), part
    first = _allowed(_spans(vocabulary, [[RUNS]], question), 0, torch.tensor([0]))[0]
    assert not first[_ids(tokenizer, "7")[0]] and not first[_ids(tokenizer, "169")[0]], "within a value"
    assert first[_ids(tokenizer, "Quispe")[0]], "another part of a name"


def test_no_span_starts_within_the_question_subjects_name_but_one_may_at_the_value_it_names(tokenizer, vocabulary):
    written = "Liam Lund adopted a hamster and named it Toffee."
    first = _allowed(_spans(vocabulary, [[written]], "What did Liam name the hamster?"), 0, torch.tensor([0]))[0]
    assert not first[_ids(tokenizer, "Lund")[0]] and first[_ids(tokenizer, "Toffee")[0]]
    first = _allowed(_spans(vocabulary, [[written]], "Who adopted a hamster?"), 0, torch.tensor([0]))[0]
    assert first[_ids(tokenizer, "Liam")[0]] and first[_ids(tokenizer, "Lund")[0]]
    written = "Amara runs Project Harbor."
    first = _allowed(_spans(vocabulary, [[written]], "Whom should I ask about Harbor?"), 0, torch.tensor([0]))[0]
    assert not first[_ids(tokenizer, "Project")[0]] and first[_ids(tokenizer, "Amara")[0]], "the subject's name"
    written, question = "Train ICE 1693 leaves at nine.", "Which train does the user take?"
    assert _may_end_after(vocabulary, written, _ids(tokenizer, "ICE 1693"), question), "after the question's word"
    assert not _may_end_after(vocabulary, written, _ids(tokenizer, "ICE"), question)
    assert not _allowed(_spans(vocabulary, [[written]], question), 0, torch.tensor([0]))[0, _ids(tokenizer, "169")[0]]


def test_a_span_starts_neither_inside_a_word_nor_at_the_question_after_punctuation(tokenizer, vocabulary):
    written = "Packing list:\n- passport\n- charger for the Kobo\nShe'll bring 'Deep Fjords'."
    spans, eos = _spans(vocabulary, [[written]], "Which charger must be packed?"), torch.tensor([0])
    first = _allowed(spans, 0, eos)[0]
    assert first[_ids(tokenizer, "Kobo")[0]] and first[_ids(tokenizer, "Deep")[0]], "after a quotation mark"
    assert not first[_ids(tokenizer, "ll")[0]], "after an apostrophe within a word"
    spans.advance(torch.tensor(_ids(tokenizer, "-")), 0)
    after_dash = _allowed(spans, 1, eos)[0]
    assert after_dash[_ids(tokenizer, " passport")[0]] and not after_dash[_ids(tokenizer, " charger")[0]]


def test_an_answer_ends_where_its_word_does(tokenizer, vocabulary):
    for unfinished in ("PR-3918", "7.14", "ships PR", "Kirkjubæ"):
        assert not _may_end_after(vocabulary, WRITES[1], _ids(tokenizer, unfinished)), unfinished
    for answer in ("PR-3918-LH", "7.14.2-rc.3", "Kirkjubæjarklaustur", "Kirkjubæjarklaustur.", "ships PR-3918-LH"):
        assert _may_end_after(vocabulary, WRITES[1], _ids(tokenizer, answer)), answer
    assert _may_end_after(vocabulary, WRITES[2], _ids(tokenizer, "Ghent")), "before closing quotes"


def test_any_tokens_that_spell_the_span_will_do(tokenizer, vocabulary):
    letters = [_ids(tokenizer, c)[0] for c in "Ghent"]
    assert len(letters) == 5 and letters != _ids(tokenizer, "Ghent")
    assert _may_end_after(vocabulary, WRITES[2], letters)
    written = "The meeting moved to 東京 on Friday."
    assert any(len(tokenizer.decode([i]).strip("\ufffd")) < 1 for i in _ids(tokenizer, "東京")), "pieces of bytes"
    assert _may_end_after(vocabulary, written, _ids(tokenizer, "東京"))


def test_i_dont_know_is_always_an_answer(tokenizer, vocabulary):
    question = "What should I cook for Rania?"
    assert _may_end_after(vocabulary, WRITES[0], _ids(tokenizer, ABSTENTION), question)
    assert _may_end_after(vocabulary, WRITES[0], _ids(tokenizer, " " + ABSTENTION), question)


def test_rows_without_spans_decode_freely_and_a_row_with_none_left_can_only_end(tokenizer, vocabulary):
    spans = _spans(vocabulary, [None, [WRITES[0]]])
    logits = torch.randn(2, len(tokenizer))
    assert torch.equal(spans.restrict(logits, 0, torch.tensor([0]))[0], logits[0])
    spans.advance(torch.tensor([5, _ids(tokenizer, "Zoltan")[0]]), 0)  # not a span's first token
    assert _allowed(spans, 1, torch.tensor([0, 1]))[1].nonzero().flatten().tolist() == [0, 1], "only the end"


def _leans(spans: AnswerSpans, produced: int = 0) -> torch.Tensor:
    """What restrict adds to zero logits: each allowed token's lean (row 0; -inf: not allowed)."""
    return spans.restrict(torch.zeros(1, spans.vocab), produced, torch.tensor([0]))[0]


def test_a_span_leans_toward_the_words_its_question_names(tokenizer, vocabulary):
    written = "Ines flies to Marrakesh on the 9th and her brother Tobiah collects her at the airport."
    lean = _leans(_spans(vocabulary, [[written]], "Who collects Ines at the airport?"))
    first = {word: float(lean[_ids(tokenizer, word)[0]]) for word in ("Tobiah", "Marrakesh", "I")}
    # "Tobiah" stands beside "collects"; "Marrakesh" two words from "Ines" ("to" is not counted).
    assert first == {"Tobiah": NEAR_BIAS, "Marrakesh": 0.75 * NEAR_BIAS, "I": 0.0}
    elsewhere = "Giselle drives the airport bus on weekdays."
    lean = _leans(_spans(vocabulary, [[elsewhere]], "Who collects Ines at the airport?"))
    # two words from "airport", and it holds one of the question's three words
    assert lean[_ids(tokenizer, "Giselle")[0]] == pytest.approx(0.75 * NEAR_BIAS / 3)


def test_spans_keep_their_lean_through_shared_tokens_and_to_their_end(tokenizer, vocabulary):
    written = "Production runs nginx 1.25.3; staging is still on 1.24.0."
    spans, eos = _spans(vocabulary, [[written]], "Which nginx version runs in production?"), torch.tensor([0])
    ids = _ids(tokenizer, "1.25.3")
    assert ids[:3] == _ids(tokenizer, "1.24.0")[:3], "both versions start with the same tokens"
    for produced, token in enumerate(ids[:3]):
        spans.advance(torch.tensor([token]), produced)
    lean = _leans(spans, 3)
    held = 3 / 4  # "version" is not written
    assert lean[_ids(tokenizer, "5")[0]] == pytest.approx(held * NEAR_BIAS), "beside the question's words"
    assert lean[_ids(tokenizer, "4")[0]] == 0, "five words away"
    for produced, token in enumerate(ids[3:], start=3):
        spans.advance(torch.tensor([token]), produced)
    assert spans.restrict(torch.zeros(1, spans.vocab), len(ids), eos)[0, 0] == pytest.approx(held * NEAR_BIAS)


def _first_allowed(tokenizer, vocabulary, written: str, question: str, words: tuple[str, ...]) -> set[str]:
    """Which of `words` an answer to `question` from `written` may start with, as written or after a space."""
    first = _allowed(_spans(vocabulary, [[written]], question), 0, torch.tensor([0]))[0]
    return {word for word in words if first[_ids(tokenizer, word)[0]] or first[_ids(tokenizer, " " + word)[0]]}


def test_asked_who_an_answer_holds_no_digit(tokenizer, vocabulary):
    table = "| service | owner | pager |\n| ledger | Ottoline | PD-7731 |"
    words = ("Ottoline", "PD", "pager")
    assert _first_allowed(tokenizer, vocabulary, table, "Who owns the ledger service?", words) == {"Ottoline", "pager"}
    assert _first_allowed(tokenizer, vocabulary, table, "Whom do I ask about the ledger pager?", words) == {"Ottoline"}
    assert _first_allowed(tokenizer, vocabulary, table, "Which pager is it?", words) == {"Ottoline", "PD"}
    chat = "User: my sister collects me at 6"
    assert _first_allowed(tokenizer, vocabulary, chat, "Who collects the user?", ("sister", "6")) == {"sister"}


def test_asked_how_many_how_much_or_for_a_number_an_answer_is_one(tokenizer, vocabulary):
    written = "Ana has three kids, 2 cats and a dog named Biscuit."
    words = ("three", "2", "kids", "Biscuit")
    assert _first_allowed(tokenizer, vocabulary, written, "How many kids does Ana have?", words) == {"three", "2"}
    assert _first_allowed(tokenizer, vocabulary, written, "How much food do the pets eat?", words) == {"three", "2"}
    assert _first_allowed(tokenizer, vocabulary, written, "What number is on Biscuit's tag?", words) == {"three", "2"}
    assert _first_allowed(tokenizer, vocabulary, written, "What is the dog called?", words) == set(words)


def test_a_read_that_recalls_nothing_of_the_kind_asked_for_does_not_know(writes_engine):
    params = SamplingParams.for_ask(max_new_tokens=16)  # a random model may spell it in many tokens
    chat = writes_engine.pool("chat")
    chat.inject("User: KT-208-ZN, 4471-QX", progress=False)
    assert chat.ask("Who is the user's manager?", params) == ABSTENTION
    dog = writes_engine.pool("dog")
    dog.inject("Bruno Lund adopted a dog and named it Tango.", progress=False)
    assert dog.ask("What number do I dial to call Bruno?", params) == ABSTENTION


def test_the_default_answers_who_with_someone_and_no_one_with_a_code(default_engine):
    """Without the kind asked for, it answered "PD-7731" and "KT-208-ZN" to all four."""
    pool = default_engine.pool("kinds")
    for text in (
        "| service | owner | pager |\n| ledger | Ottoline | PD-7731 |",
        "User: my locker code changed\nAssistant: What is the new one?\nUser: 4471-QX",
        "Assistant: What's the licence plate of the rental?\nUser: KT-208-ZN",
        "Bruno Lund adopted a dog and named it Tango.",
        "User: The plumber is coming tomorrow.\nAssistant: Noted. Anything else?\nUser: His name is Thaddeus.",
    ):
        pool.inject(text, progress=False)
    questions = ["Who owns the ledger service?", "Who is the listed owner of the ledger?"]
    questions += ["Who is the user's manager?", "Who is the user's dentist?"]
    assert [pool.ask(q) for q in questions] == ["Ottoline", "Ottoline", ABSTENTION, ABSTENTION]


def test_narrowing_reads_nothing_back_to_the_host(tokenizer, vocabulary):
    spans = _spans(vocabulary, [[WRITES[0]], [WRITES[1]]])
    eos = torch.tensor([0])
    with HostReads() as mode:
        for produced in range(3):
            logits = spans.restrict(torch.randn(2, len(tokenizer)), produced, eos)
            spans.advance(logits.argmax(-1), produced)
    assert mode.reads == []


def _is_span(answer: str, texts: list[str], question: str) -> bool:
    """Whether `answer` is "I don't know." or starts a recalled text at a word the question does not use."""
    if answer == ABSTENTION or not answer:
        return True
    asked = question_words(question)
    for text in texts:
        for start in range(len(text)):
            word = re.match(r"\w+", text[start:])
            if word is not None and word.group().lower() in asked:
                continue
            if text.startswith(answer, start):
                return True
    return False


def _as_written(engine: memagent.Engine) -> list[str]:
    """WRITES as `engine` writes them (a short write repeated)."""
    return [engine.tokenizer.decode(engine.plan_write(text).chunks[0]) for text in WRITES]


def _written(engine: memagent.Engine, name: str):
    pool = engine.pool(name)
    for text in WRITES:
        pool.inject(text, progress=False)
    return pool


def test_asks_of_a_memory_of_whole_writes_answer_with_spans_of_its_writes(writes_engine):
    pool = _written(writes_engine, "spans")
    questions = ["What does Ottilie keep?", "Which release ships the PR?", "Where does order 584 go?", "Who is Ravi?"]
    params = SamplingParams.for_ask(max_new_tokens=6)
    answers = [pool.ask(q, params) for q in questions]
    assert all(_is_span(a, _as_written(writes_engine), q) for a, q in zip(answers, questions)), answers
    prompts = [writes_engine.question_prompt(q) for q in questions]
    assert [a.strip() for a in writes_engine.complete(pool.pool, prompts, params, answers=True)] == answers
    assert [f.strip() for f in writes_engine.complete(pool.pool, prompts, params)] != answers, "other reads are free"


def _reading(engine: memagent.Engine, pool, question: str):
    prompt = engine.question_prompt(question)
    encoded = engine.tokenizer([prompt], return_tensors="pt")
    return engine.answer_reading(pool, [prompt], encoded["input_ids"], encoded["attention_mask"])


def test_answers_come_from_the_recalled_writes_that_name_the_questions_subject(writes_engine):
    pool = writes_engine.pool("subject")
    for text in (WRITES[0], WRITES[2]):  # as many as a read of this model recalls
        pool.inject(text, progress=False)
    eos = torch.tensor(writes_engine.eos_token_ids)
    everything = {"parrot", "Ravi", "shipment", "Ghent"}

    def first_words(question: str) -> set[str]:
        """The words of the writes an answer to `question` may start with."""
        allowed = _allowed(_reading(writes_engine, pool.pool, question)[1], 0, eos)[0]
        return {word for word in everything if allowed[writes_engine.encode(" " + word)[0]]}

    assert first_words("What does Ottilie keep?") == {"parrot", "Ravi"}
    assert first_words("Which order ships to Ghent?") == {"shipment"}, "a value's write, by a name it holds"
    assert first_words("What is where?") == everything, "no name: every recalled write"
    assert first_words("Does Ottilie ship to Ghent?") == everything - {"Ghent"}, "none names both: every one"


def test_each_write_keeps_its_text_and_one_saved_without_leaves_its_reads_free(writes_engine, tmp_path):
    pool = _written(writes_engine, "old")
    store = pool.pool.long_term
    assert [store.text(w).tolist() for w in range(3)] == [writes_engine.plan_write(t).chunks[0] for t in WRITES]
    assert not _reading(writes_engine, pool.pool, "Who is Ravi?")[1].free.any()
    store.text_ids, store.text_ends = store.text_ids[:0], torch.zeros_like(store.text_ends)  # as stores were saved before
    path = tmp_path / "old.safetensors"
    save_pool(pool.pool, path, writes_engine.fingerprint())
    pool.load(path)
    assert pool.pool.long_term.num_writes == len(WRITES)
    assert _reading(writes_engine, pool.pool, "Who is Ravi?")[1].free.all()
    assert pool.ask("Who is Ravi?", max_new_tokens=6) is not None


def test_crafted_texts_are_cut_to_what_a_write_may_hold(writes_engine, tmp_path):
    """Ids beyond the vocabulary are left out and a text longer than SPAN_TEXT_TOKENS is cut."""
    pool = _written(writes_engine, "crafted")
    store = pool.pool.long_term
    flood = torch.full((100_000,), writes_engine.encode(" Ravi")[0])
    store.text_ids = torch.cat([store.text_ids[:1] + 10**9, store.text_ids[1:], flood])
    store.text_ends = store.text_ends + torch.tensor([0, 0, len(flood)])
    path = tmp_path / "crafted.safetensors"
    save_pool(pool.pool, path, writes_engine.fingerprint())
    pool.load(path)
    answer = pool.ask("What does Ottilie keep?", max_new_tokens=6)
    assert _is_span(answer, _as_written(writes_engine), "What does Ottilie keep?")
