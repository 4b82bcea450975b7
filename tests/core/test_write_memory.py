"""A long-term memory of whole writes: what a read recalls, where it goes, and the store's life."""

import pytest
import torch

from memagent import Engine, MemoryLLM, default_model
from memagent.model.config import LongTermConfig
from memagent.model.pool_file import PoolFileError, load_pool, long_term_size, save_pool
from memagent.model.recall_keys import LexicalKeys
from memagent.model.shapes import shape_config
from memagent.model.write_memory import WriteMemory

K, d = 4, 3
R = 2  # writes a read recalls


def store() -> WriteMemory:
    config = LongTermConfig(num_ltm_blocks=R, selector_hidden_dim=2, ltm_recall="writes")
    return WriteMemory.empty(config, K, torch.zeros(1, 12, d))


def write(wm: WriteMemory, value: float, key: list[int], text: list[int] | None = None) -> None:
    """A write whose K tokens all hold `value`."""
    wm.write(torch.full((1, K, d), value), torch.tensor(key), None if text is None else torch.tensor(text))


def values(wm: WriteMemory) -> list[float]:
    """The value of each stored write, in order."""
    return wm.tokens[0, ::K, 0].tolist()


def test_a_read_recalls_the_writes_sharing_the_rarest_ids_the_best_last():
    wm = store()
    write(wm, 0.0, [1, 7])  # 1 is in every write: it tells writes apart least
    write(wm, 1.0, [1, 8])
    write(wm, 2.0, [1, 9, 7])
    write(wm, 3.0, [1, 5])
    assert wm.choose([torch.tensor([1, 9])]).tolist() == [[3, 2]], "9 best, so last; then 1, which the latest shares too"
    assert wm.choose([torch.tensor([8, 7])]).tolist() == [[0, 1]], "8 is rarer than 7; of 7's, the shorter"
    assert wm.choose([torch.tensor([42])]).tolist() == [[2, 3]], "nothing matches: the latest writes"
    chosen = wm.choose([torch.tensor([5]), torch.tensor([8])])
    assert chosen.tolist() == [[2, 3], [3, 1]], "each prompt its own writes"
    assert wm.gather(0, chosen)[:, :, 0].tolist() == [[2.0] * K + [3.0] * K, [3.0] * K + [1.0] * K]


def test_a_text_written_again_is_recalled_once_as_its_latest_write():
    wm = store()
    write(wm, 0.0, [7, 8], text=[1, 2, 3])
    write(wm, 1.0, [7], text=[4])
    write(wm, 2.0, [7, 8], text=[1, 2, 3])  # the same tool output, logged again
    write(wm, 3.0, [7, 8], text=[1, 2, 3])
    assert wm.choose([torch.tensor([8])]).tolist() == [[1, 3]], "the copies would fill both places"
    write(wm, 4.0, [7, 8], text=[1, 3, 2])  # the same words in another order: another text
    assert wm.choose([torch.tensor([8])]).tolist() == [[3, 4]]


def test_copies_fill_a_read_only_where_too_few_texts_differ():
    wm = store()
    write(wm, 0.0, [7], text=[1])
    write(wm, 1.0, [7], text=[1])
    assert wm.choose([torch.tensor([7])]).tolist() == [[0, 1]]
    old = store()
    write(old, 0.0, [7, 8])  # written before writes kept their texts: told apart by their keys
    write(old, 1.0, [7, 9])
    write(old, 2.0, [7, 8])
    assert old.choose([torch.tensor([7])]).tolist() == [[1, 2]]


def test_writes_chosen_ahead_hold_while_the_store_only_grows():
    wm = store()
    for value in range(3):
        write(wm, float(value), [value])
    recalled = wm.recalled(torch.tensor([[2, 0]]))
    write(wm, 3.0, [3])
    assert recalled.of(wm).tolist() == [[2, 0]], "an appended write moves no index"
    wm.limit(3 * K)  # evicts the oldest: the indices now name other writes
    assert recalled.of(wm) is None
    fresh = wm.recalled(torch.tensor([[0, 1]]))
    wm.reset()
    assert fresh.of(wm) is None


def test_a_short_write_outranks_a_long_one_sharing_the_same_ids():
    wm = store()
    write(wm, 0.0, [7])
    write(wm, 1.0, [7, *range(20, 40)])  # later, but 7 is one of its many words
    write(wm, 2.0, [9])
    write(wm, 3.0, [10])
    assert wm.choose([torch.tensor([7, 9])]).tolist() == [[0, 2]]


def test_writes_append_in_place_and_what_was_saved_never_changes():
    wm = store()
    write(wm, 0.0, [1])
    saved = wm.state_dict()
    write(wm, 1.0, [2])
    write(wm, 2.0, [3])
    buffer = wm.tokens.data_ptr()
    write(wm, 3.0, [4])
    assert wm.tokens.data_ptr() == buffer, "grown in place, not copied"
    wm.limit(2 * K)  # keeps the latest two writes
    assert values(wm) == [2.0, 3.0] and wm.key_ids.tolist() == [3, 4] and wm.key_ends.tolist() == [1, 2]
    assert wm.text_ends.tolist() == [0, 0], "written without their texts"
    middle = wm.state_dict()
    write(wm, 4.0, [5])
    assert values(wm) == [3.0, 4.0], "the oldest write goes first"
    wm.reset()
    write(wm, 9.0, [6])
    assert saved["ltm.0"][:, 0].tolist() == [0.0] * K
    assert middle["ltm.0"][:, 0].tolist() == [2.0] * K + [3.0] * K


def test_a_bound_below_what_a_read_places_is_refused():
    with pytest.raises(ValueError, match="below the 8 a read places"):
        store().limit(K)


def test_the_store_round_trips_and_a_damaged_one_is_refused():
    wm = store()
    for value, key, text in ((0.0, [1, 2], [2, 1, 2]), (1.0, [3], [3])):
        write(wm, value, key, text)
    memory = torch.zeros(1, 12, d)
    again = WriteMemory.from_state(wm.config, K, wm.state_dict(), memory)
    assert torch.equal(again.tokens, wm.tokens) and torch.equal(again.key_ids, wm.key_ids)
    assert again.text(0).tolist() == [2, 1, 2] and again.text(1).tolist() == [3]
    older = {k: v for k, v in wm.state_dict().items() if not k.startswith("ltm_write_text")}
    assert WriteMemory.from_state(wm.config, K, older, memory).text_ends.tolist() == [0, 0], "saved before texts were"
    for name, damage, message in (
        ("ltm.0", lambda t: t[:-1], "is not 2 writes of 4 tokens"),
        ("ltm.0", lambda t: t.fill_(float("inf")), "not finite"),
        ("ltm_write_key_ends", lambda t: t + 1, "does not divide"),
        ("ltm_write_key_ends", lambda t: t[:0], "does not divide"),
        ("ltm_write_text_ends", lambda t: t[-1:], "1 writes where the keys have 2"),
        ("ltm_write_texts", lambda t: -t, "ltm_write_texts holds negative"),
        ("ltm_write_texts", None, "go together"),
        ("ltm_write_keys", lambda t: -t, "negative token ids"),
        ("ltm_write_keys", lambda t: t.float(), "vectors of integers"),
        ("ltm_write_keys", None, "missing"),
    ):
        state = {k: v.clone() for k, v in wm.state_dict().items()}
        if damage is None:
            del state[name]
        else:
            state[name] = damage(state[name])
        with pytest.raises(ValueError, match=message):
            WriteMemory.from_state(wm.config, K, state, memory)
    keys_of_no_write = {
        "ltm.0": torch.zeros(0, d),
        "ltm_write_keys": torch.tensor([5]),
        "ltm_write_key_ends": torch.zeros(0, dtype=torch.long),
    }
    with pytest.raises(ValueError, match="does not divide"):
        WriteMemory.from_state(wm.config, K, keys_of_no_write, memory)


@pytest.fixture
def model() -> MemoryLLM:
    return MemoryLLM.from_random(shape_config("tiny-writes"), seed=0)


@torch.no_grad()
def test_a_first_short_write_is_kept_whole_and_every_layer_reads_the_same_writes(model):
    pool = model.new_pool()
    model.inject(torch.tensor([[10, 11, 12]]), pool=pool)  # 3 < K tokens: repeated to K, as in the pool
    assert pool.long_term.sizes() == [8, 8] and torch.equal(pool.long_term.tokens[:, :3], pool.long_term.tokens[:, 3:6])
    for start in (20, 30):
        model.inject(torch.arange(start, start + 10)[None], pool=pool)
    out = model(torch.tensor([[11, 31, 5]]), pool=pool)
    assert out.long_term_order.tolist() == [[[2, 0], [2, 0]]]  # the short write's id is worth more: last


@torch.no_grad()
def test_a_read_sees_its_recalled_writes_alone_and_hides_the_slots_fewer_writes_leave(model):
    pool = model.new_pool()
    model.inject(torch.arange(20, 30)[None], pool=pool)
    prompt = torch.tensor([[21, 22, 5]])
    cache = model.new_cache(pool, 1, prompt.shape[1])
    model.prefill(prompt, torch.ones_like(prompt), cache)
    M = pool.long_term.slots
    assert cache.layers[0].prefix_keys.shape[2] == 1, "the prefix is bos: the pool is not read"
    assert cache.key_valid[0, :M].tolist() == [False] * (M - 8) + [True] * 8, "one write, next to the prompt"
    twin = pool.clone()
    twin.memory = torch.randn_like(pool.memory)
    read = model(prompt, pool=pool).logits
    assert torch.equal(model(prompt, pool=twin).logits, read), "the pool's tokens are not read"


@torch.no_grad()
def test_a_padded_batch_recalls_per_row_as_each_prompt_alone(model):
    pool = model.new_pool()
    for start in (20, 30, 40, 50):
        model.inject(torch.arange(start, start + 10)[None], pool=pool)
    prompts = [torch.tensor([31, 2, 3, 41, 9]), torch.tensor([22, 52])]
    ids, mask = torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, 5 - len(p) :], mask[row, 5 - len(p) :] = p, 1
    batch = model(ids, attention_mask=mask, pool=pool)
    for row, p in enumerate(prompts):
        alone = model(p[None], pool=pool)
        assert torch.equal(batch.long_term_order[row], alone.long_term_order[0])
        assert (batch.logits[row, 5 - len(p) :] - alone.logits[0]).abs().max() < 1e-4
    assert batch.long_term_order[:, 0].tolist() == [[1, 2], [0, 3]]


@torch.no_grad()
def test_a_read_takes_the_writes_chosen_ahead_while_they_are_held(model):
    pool = model.new_pool()
    for start in (20, 30, 40):
        model.inject(torch.arange(start, start + 10)[None], pool=pool)
    prompt = torch.tensor([[31, 5]])
    own = model(prompt, pool=pool)
    assert own.long_term_order[0, 0].tolist() == [2, 1]

    def read(ahead) -> torch.Tensor:
        cache = model.new_cache(pool, 1, prompt.shape[1])
        cache.long_term.ahead = ahead
        model.prefill(prompt, torch.ones_like(prompt), cache)
        return cache.long_term.chosen[0]

    ahead = pool.long_term.recalled(torch.tensor([[1, 0]]))
    assert read(ahead).tolist() == [[1, 0]]
    pool.long_term.limit(2 * pool.long_term.tokens_per_write)  # evicts write 0: they are not where they were
    assert read(ahead).tolist() == model(prompt, pool=pool).long_term_order[0, 0][None].tolist()


@torch.no_grad()
def test_a_pool_file_carries_the_writes_and_reports_their_size(model, tmp_path):
    pool = model.new_pool()
    for start in (20, 30, 40):
        model.inject(torch.arange(start, start + 10)[None], pool=pool)
    path = tmp_path / "pool.safetensors"
    save_pool(pool, path, model.fingerprint())
    assert long_term_size(path) == 3 * 8
    again = load_pool(path, model.fingerprint())
    assert torch.equal(again.long_term.tokens, pool.long_term.tokens)
    assert torch.equal(again.long_term.key_ids, pool.long_term.key_ids)
    prompt = torch.tensor([[33, 41]])
    assert torch.equal(model(prompt, pool=again).logits, model(prompt, pool=pool).logits)
    twin = pool.clone()
    model.inject(torch.arange(60, 70)[None], pool=twin)
    assert pool.long_term.num_writes == 3 and twin.long_term.num_writes == 4
    half = pool.clone().to(dtype=torch.bfloat16)
    assert half.long_term.tokens.dtype == torch.bfloat16 and half.long_term.tokens.device.type == "cpu"


def test_a_damaged_pool_file_is_refused(model, tmp_path):
    pool = model.new_pool()
    model.inject(torch.arange(20, 30)[None], pool=pool)
    model.inject(torch.arange(30, 40)[None], pool=pool)
    pool.long_term.key_ends[0] = 99
    path = tmp_path / "pool.safetensors"
    save_pool(pool, path, model.fingerprint())
    with pytest.raises(PoolFileError, match="damaged long-term memory.*does not divide"):
        load_pool(path, model.fingerprint())


def test_lexical_keys_meet_whatever_the_case_or_the_place_in_a_sentence():
    tokenizer = default_model.load_tokenizer()
    keys = LexicalKeys(tokenizer)

    def key(text: str) -> set[int]:
        return set(keys(torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])).tolist())

    written = key("Ravi's van is red. The Ljubljana office runs build 5.1.6.")
    assert key("ravi") <= written and key(" RAVI") <= written
    assert key("ljubljana") <= written and key("5.1.6") <= written
    assert not key("Raul") <= written
    # A tokenizer splits a word that starts a line ("t" "omas") unlike one after a space (" to" "mas").
    asked = key("What is Tomas's profession?")
    assert key(" tomas") <= asked
    assert key(" tomas") <= key("Tomas Quinn earns a living as a translator.")
    assert key(" tomas") <= key("User: hi\nTomas")


def test_the_default_recalls_a_write_that_starts_with_the_name_asked_about(default_engine):
    """Keys of whole texts shared no id between "Tomas" starting the write and inside the
    question, and the chat turns sharing "What is" filled the read: "I don't know."."""
    pool = default_engine.pool("a name first")
    for text in (
        "Tomas Quinn earns a living as a translator.",
        "User: my locker code changed\nAssistant: What is the new one?\nUser: 4471-QX",
        "Assistant: What is the licence plate of the rental?\nUser: KT-208-ZN",
        "User: what is that podcast again... ah, 'Deep Fjords'.",
        "Assistant: What is the name of your dog?\nUser: Gwynplaine",
        "Assistant: What is the gate?\nUser: B4",
    ):
        pool.inject(text, progress=False)
    assert pool.ask("What is Tomas's profession?") == "translator"


def test_a_store_keyed_another_way_is_keyed_anew_from_its_texts(tmp_path):
    engine = Engine(MemoryLLM.from_random(shape_config("tiny-writes"), seed=0), default_model.load_tokenizer())
    pool = engine.pool("m")
    for text in ("Tomas Quinn earns a living as a translator.", "The depot closes at nine."):
        pool.inject(text, progress=False)
    store = pool.pool.long_term
    fresh = store.key_ids.clone(), store.key_ends.clone()
    untold = torch.tensor([7, 8, 9])
    store.write(store.rows(0, 1).clone(), untold)  # its text not kept, as in files from before texts were
    store.rekey(LexicalKeys(engine.tokenizer, words_alone=False))  # as an older engine keyed them
    assert not torch.equal(store.key(0), fresh[0][: fresh[1][0]])
    path = tmp_path / "pool.safetensors"
    save_pool(pool.pool, path, engine.fingerprint())
    loaded = engine.load_pool(path).long_term
    assert torch.equal(loaded.key_ids[: fresh[1][-1]], fresh[0]) and torch.equal(loaded.key_ends[:2], fresh[1])
    assert torch.equal(loaded.key(2), untold), "a write without its text keeps its key"


def test_a_framed_prompt_is_keyed_by_its_question_alone():
    tokenizer = default_model.load_tokenizer()
    framed = LexicalKeys(tokenizer, frame=("System: you are a helpful assistant.\nUser: ", "\nAssistant:"))

    def key(text: str) -> set[int]:
        return set(framed(torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])).tolist())

    assert key("System: you are a helpful assistant.\nUser: Who is the user's pilot?\nAssistant:") == key(
        "Who is the user's pilot?"
    )
    assert key(" user") <= key("User: my pilot is Ravi."), "a write keeps every word, role names too"
    assert key(" helpful") <= key("A helpful pilot.")
    left_out = LexicalKeys(tokenizer, left_out="You are a helpful assistant.")
    assert set(left_out(torch.tensor(tokenizer("You are a helpful pilot")["input_ids"])).tolist()) == key(" pilot")


@torch.no_grad()
def test_an_engine_keys_writes_through_its_tokenizer():
    engine = Engine(MemoryLLM.from_random(shape_config("tiny-writes"), seed=0), default_model.load_tokenizer())
    pool = engine.pool("m")
    for text in ("Mina keeps a parrot called Ravi.", "The depot closes at nine.", "Nils sails on Sunday."):
        pool.inject(text)
    question = engine.tokenizer(engine.question_prompt("What is RAVI?"), return_tensors="pt")["input_ids"]
    assert 0 in engine.model(question, pool=pool.pool).long_term_order[0, 0].tolist()


@torch.no_grad()
def test_an_engine_keys_a_question_prompt_by_its_question_alone():
    """A write that shares only the chat frame's words with a question is not its best match;
    one that shares the question's own words is, role names included."""
    engine = Engine(MemoryLLM.from_random(shape_config("tiny-writes"), seed=0), default_model.load_tokenizer())
    pool = engine.pool("m")
    frame = engine.question_prompt("")
    texts = ("Mina keeps a parrot called Ravi.", frame, "User: my friends know me as Greta.", "Nils sails on Sunday.")
    for text in texts:
        pool.inject(text)
    assert pool.pool.long_term.key_ends[1] == pool.pool.long_term.key_ends[0], "the frame alone is no question"

    def best(question: str) -> int:
        ids = engine.tokenizer(engine.question_prompt(question), return_tensors="pt")["input_ids"]
        return engine.model(ids, pool=pool.pool).long_term_order[0, 0, -1].item()

    assert best("Who keeps Ravi?") == 0
    assert best("How should I address the user?") == 2


def test_a_bounded_store_holds_at_most_a_quarter_more_than_its_bound():
    wm = store()
    wm.limit(8 * K)
    for value in range(40):
        write(wm, float(value), [value])
        assert wm._buffer.shape[1] <= 10 * K and wm.num_writes == min(value + 1, 8)
    assert values(wm) == [float(v) for v in range(32, 40)]
