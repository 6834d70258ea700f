"""A chat that remembers what you tell it about yourself, on engram.

    python3 chat.py MODEL STORE

Type a turn and press Enter. Statements about you ("My cat is called Miso.") are learned in
the background after the reply, while you type the next turn; one that changes an earlier fact
("We moved to Coimbra.") replaces it. `/remember TEXT` learns TEXT whatever its form,
`/forget WHAT` forgets the fact WHAT names (its words or its number), `/reset` starts a new
conversation (what was learned stays), `/quit` or end of input ends. Asked about yourself
something you never told, it says so instead of inventing an answer. Input from a pipe waits
for each fact before the next turn, so a script gets the same answers on any machine.

The `engram` module is the generated binding (bindings/python/engram.py with
libengram_uniffi.so beside it; scripts/generate-bindings builds both).
"""

import sys

import engram


class Told(engram.MemoryListener):
    """Says what the background learner did; it runs on the learner's thread."""

    def on_remembered(self, text, number, replaced, seconds):
        was = f' (replaces "{replaced}")' if replaced else ""
        print(f'  [learned #{number}: "{text}"{was} in {seconds:.1f} s]', flush=True)
        return True

    def on_forgot(self, text, number):
        print(f'  [forgot #{number}: "{text}"]', flush=True)
        return True

    def on_failed(self, what, error):
        print(f'  [could not learn or forget "{what}": {error}]', flush=True)
        return True


class Printer(engram.TokenListener):
    """Shows the reply as it is written."""

    def on_token(self, piece):
        print(piece, end="", flush=True)
        return True


def main(argv):
    if len(argv) != 3:
        sys.exit(__doc__)
    model, store = argv[1], argv[2]
    scripted = not sys.stdin.isatty()
    try:
        chat = engram.Chat(engram.Engram.open(model, memory_path=store), learn=True, listener=Told())
        # Asked about yourself something you never told, it says so instead of inventing.
        chat.set_abstention("You haven't told me that.")
        for line in sys.stdin:
            turn = line.strip()
            if not turn:
                continue
            if turn == "/quit":
                break
            if turn == "/reset":
                chat.reset()
                print("(new conversation)")
            elif turn.startswith("/remember "):
                chat.remember(turn.removeprefix("/remember "))
            elif turn.startswith("/forget "):
                chat.forget(turn.removeprefix("/forget "))
            else:
                print(f"> {turn}")
                chat.say(turn, max_tokens=64, listener=Printer())
                print()
            if scripted:
                chat.wait_idle()
        # What is still queued is learned before the store is closed.
        chat.wait_idle()
    except engram.EngramError as e:
        sys.exit(f"chat: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main(sys.argv)
