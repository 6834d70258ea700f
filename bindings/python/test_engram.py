"""The Python binding on the real default model: learn a fact, ask, export a delta, import it
into a second store, and errors arriving as Python exceptions.

Run by `cargo test -p engram-uniffi` (ffi/uniffi/tests/bindings.rs), which puts the generated
module and its library on PYTHONPATH and passes the model and two fresh stores:
ENGRAM_MODEL, ENGRAM_STORE_A, ENGRAM_STORE_B, ENGRAM_SCRATCH.
"""

import os
import shutil
import threading

import pytest

import engram

MODEL = os.environ["ENGRAM_MODEL"]
STORE_A = os.environ["ENGRAM_STORE_A"]
STORE_B = os.environ["ENGRAM_STORE_B"]
SCRATCH = os.environ["ENGRAM_SCRATCH"]

QUESTION = "What is the name of my neighbour's parrot?"
ANSWER = "Captain Biscuit"


@pytest.fixture(scope="module")
def learned():
    """Store A after learning one fact, and the delta exported from it."""
    a = engram.Engram.open(MODEL, memory_path=STORE_A, threads=2)
    before = a.ask(QUESTION)
    steps = []

    class Progress(engram.LearnListener):
        def on_step(self, fact, step, loss):
            steps.append((fact, step, loss))
            return True

    report = a.learn_qa(QUESTION, ANSWER, listener=Progress())
    after = a.ask(QUESTION)
    delta = os.path.join(SCRATCH, "parrot.delta")
    exported = a.export_delta(delta, label="pytest")
    print(f"before: {before!r}; after: {after!r}; report: {report}")
    yield dict(engine=a, before=before, after=after, steps=steps, report=report,
               delta=delta, exported=exported)
    del a


def test_version():
    assert engram.version().count(".") == 2


def test_learning_a_fact_changes_the_answer(learned):
    report = learned["report"]
    assert len(report.facts) == 1
    fact = report.facts[0]
    assert fact.loss_after < fact.loss_before / 2, fact
    assert fact.rows_changed > 0
    assert [s[1] for s in learned["steps"]] == list(range(len(learned["steps"])))
    assert len(learned["steps"]) >= 2
    assert ANSWER.lower() not in learned["before"].lower()
    assert ANSWER.lower() in learned["after"].lower(), learned["after"]
    facts = [f.text for f in learned["engine"].learned_facts()]
    assert any(ANSWER in f for f in facts), facts


def test_delta_moves_the_fact_to_a_second_store(learned):
    exported = learned["exported"]
    assert len(exported.id) == 32 and exported.rows > 0
    assert any(ANSWER in f for f in exported.facts)
    b = engram.Engram.open(MODEL, memory_path=STORE_B, threads=2)
    assert b.ask(QUESTION) == learned["before"]
    report = b.import_delta(learned["delta"])
    assert report.id == exported.id
    assert report.rows == exported.rows and not report.already_imported
    assert b.ask(QUESTION) == learned["after"]
    again = b.import_delta(learned["delta"])
    assert again.already_imported and again.rows == 0
    assert [d.id for d in b.imported_deltas()] == [exported.id]
    reverted = b.revert_delta(exported.id)
    assert reverted.exact == exported.rows and reverted.adjusted == 0
    assert b.ask(QUESTION) == learned["before"]


def test_only_signed_deltas_import_once_signers_are_required(learned):
    key = os.path.join(SCRATCH, "py-ana.key")
    for p in (key, key + ".pub"):
        if os.path.exists(p):
            os.remove(p)
    public = engram.generate_signing_key(key, label="Ana's phone")
    assert len(public) == 64
    with pytest.raises(engram.EngramError.InvalidArgument):
        engram.generate_signing_key(key)
    delta = os.path.join(SCRATCH, "py-signed.delta")
    shutil.copyfile(learned["delta"], delta)
    assert engram.verify_delta(delta) is None
    b = engram.Engram.open(MODEL, memory_path=STORE_B, threads=2)
    b.trust_signers(key + ".pub")
    with pytest.raises(engram.EngramError.Untrusted):
        b.import_delta(delta)
    engram.sign_delta(delta, key)
    assert engram.verify_delta(delta, trusted_signers_path=key + ".pub") == public
    assert b.import_delta(delta).rows == learned["exported"].rows
    b.revert_delta(learned["exported"].id)
    del b


def test_streaming_pieces_make_the_whole_text(learned):
    pieces = []

    class Collect(engram.TokenListener):
        def on_token(self, piece):
            pieces.append(piece)
            return len(pieces) < 5

    text = learned["engine"].generate("The capital of France is", 12, Collect())
    assert len(pieces) == 5, "returning False stops generation"
    assert "".join(pieces) == text


def test_generation_from_threads(learned):
    a = learned["engine"]
    expected = a.generate("Once upon a time", 6)
    results = []

    def worker():
        results.append(a.generate("Once upon a time", 6))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert results == [expected] * 4


def test_errors_arrive_as_exceptions(learned):
    with pytest.raises(engram.EngramError.Io) as e:
        engram.Engram.open("/nonexistent/model.gguf")
    assert "/nonexistent/model.gguf" in str(e.value)
    with pytest.raises(engram.EngramError.BadFile):
        engram.Engram.open(__file__)
    with pytest.raises(engram.EngramError.InUse):
        engram.Engram.open(MODEL, memory_path=STORE_A)
    a = learned["engine"]
    with pytest.raises(engram.EngramError.BadFile):
        a.import_delta(MODEL)
    with pytest.raises(engram.EngramError.InvalidArgument):
        a.export_delta(os.path.join(SCRATCH, "x.delta"), since="no-such-snapshot")
    with pytest.raises(engram.EngramError.InvalidArgument):
        a.learn_note("")
    with pytest.raises(engram.EngramError.InvalidArgument):
        a.revert_delta("0123456789abcdef")

    class Halt(engram.LearnListener):
        def on_step(self, fact, step, loss):
            return False

    with pytest.raises(engram.EngramError.Interrupted):
        a.learn_note("My cat is called Miso.", steps=1, listener=Halt())
    # The engine still works after every error.
    assert a.generate("The capital of France is", 3)


def test_an_encrypted_store_opens_only_with_its_key(learned):
    store = os.path.join(SCRATCH, "py-sealed.engram")
    for p in (store, store + ".journal", store + ".readkeys"):
        if os.path.exists(p):
            os.remove(p)
    shutil.copyfile(STORE_B, store)
    key = bytes(range(32))
    engram.encrypt_store(store, key)
    with open(store, "rb") as f:
        assert not f.read(8).startswith(b"GGUF")
    with pytest.raises(engram.EngramError.BadFile, match="encrypted"):
        engram.Engram.open(MODEL, memory_path=store)
    with pytest.raises(engram.EngramError.BadFile, match="wrong store key"):
        engram.Engram.open(MODEL, memory_path=store, store_key=bytes(32))
    e = engram.Engram.open(MODEL, memory_path=store, threads=2, store_key=key)
    e.learn_note("My dentist is Dr Okafor.", steps=1)
    e.checkpoint()
    del e
    for p in (store, store + ".journal", store + ".readkeys"):
        if os.path.exists(p):
            with open(p, "rb") as f:
                assert b"Okafor" not in f.read(), p
    engram.encrypt_store(store, key, decrypt=True)
    plain = engram.Engram.open(MODEL, memory_path=store, writable=False)
    assert any("Okafor" in f.text for f in plain.learned_facts())



def test_statements_are_remembered_replaced_and_forgotten(learned):
    a = learned["engine"]
    assert engram.is_statement("My cat is called Miso.")
    assert not engram.is_statement("What is my cat called?")
    assert a.remember("My cat is called Miso.").replaced is None
    r = a.remember("My cat is called Tofu.")
    assert r.replaced == "My cat is called Miso.", r
    reply = a.ask("What is my cat called?")
    assert "Tofu" in reply, reply
    numbers = {f.text: f.number for f in a.learned_facts()}
    forgotten = a.forget(str(numbers["My cat is called Tofu."]))
    assert forgotten.text == "My cat is called Tofu." and forgotten.rows > 0, forgotten
    assert all("cat" not in f.text for f in a.learned_facts())
    with pytest.raises(engram.EngramError):
        a.forget("Tofu")


def test_a_chat_learns_statements_in_the_background(learned):
    a = learned["engine"]
    events = []

    class Heard(engram.MemoryListener):
        def on_remembered(self, text, number, replaced, seconds):
            events.append(("remembered", text, number))
            return True

        def on_forgot(self, text, number):
            events.append(("forgot", text, number))
            return True

        def on_failed(self, what, error):
            events.append(("failed", what, error))
            return True

    chat = engram.Chat(a, learn=True, listener=Heard())
    reply = chat.say("My hamster is called Pistachio.", max_tokens=24)
    assert reply, "the statement gets a reply first"
    assert not chat.say("How are you today?", max_tokens=8) is None
    chat.wait_idle()
    assert [e[:2] for e in events] == [("remembered", "My hamster is called Pistachio.")], events
    number = events[0][2]
    # A new conversation: the answer comes from the memory, not from the turns; a chat that
    # abstains still answers it, and declines what it was never told.
    chat.set_abstention("You haven't told me that.")
    chat.reset()
    reply = chat.say("What is my hamster called?", max_tokens=24)
    assert "Pistachio" in reply, reply
    chat.reset()
    assert chat.say("What is my cat called?", max_tokens=24) == "You haven't told me that."
    chat.set_abstention(None)
    chat.forget(str(number))
    chat.wait_idle()
    assert events[-1] == ("forgot", "My hamster is called Pistachio.", number), events
    chat.forget("no such thing")
    chat.wait_idle()
    assert events[-1][0] == "failed", events
    chat.stop_learning()
    with pytest.raises(engram.EngramError):
        chat.remember("I have a tortoise.")
    quiet = engram.Chat(a, learn=False)
    assert quiet.pending() == 0
    with pytest.raises(engram.EngramError):
        quiet.forget("anything")


def test_a_memory_listener_can_stop_a_chat_learning(learned):
    a = learned["engine"]

    class Once(engram.MemoryListener):
        def on_remembered(self, text, number, replaced, seconds):
            return False

        def on_forgot(self, text, number):
            return True

        def on_failed(self, what, error):
            return True

    once = engram.Chat(a, learn=True, listener=Once())
    once.say("My tortoise is called Speedy.", max_tokens=4)
    once.wait_idle()
    once.say("My goldfish is called Bubbles.", max_tokens=4)
    assert once.pending() == 0, "after the listener said no, statements are only answered"
    once.stop_learning()
    texts = [f.text for f in a.learned_facts()]
    assert "My tortoise is called Speedy." in texts and not any("Bubbles" in t for t in texts), texts
    a.forget("Speedy")
