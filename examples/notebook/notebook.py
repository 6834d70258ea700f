"""A personal notebook on engram: teach it notes, ask about them, export what it learned.

    python3 notebook.py MODEL STORE add "My sister Ana lives in Porto." \
        ask "Where does my sister Ana live?" export notes.delta

Commands run in order: `add NOTE`, `ask QUESTION`, `export DELTA`, `import DELTA`.
The `engram` module is the generated binding (bindings/python/engram.py with
libengram_uniffi.so beside it; scripts/generate-bindings builds both).
"""

import sys

import engram


class Progress(engram.LearnListener):
    """Prints one line per learning step."""

    def on_step(self, fact, step, loss):
        print(f"  step {step}: loss {loss:.3f}", flush=True)
        return True


def main(argv):
    if len(argv) < 3 or len(argv) % 2 == 0:
        sys.exit(__doc__)
    model, store, commands = argv[1], argv[2], argv[3:]
    try:
        notebook = engram.Engram.open(model, memory_path=store)
        for command, arg in zip(commands[::2], commands[1::2]):
            if command == "add":
                print(f"learning: {arg}")
                notebook.learn_note(arg, listener=Progress())
            elif command == "ask":
                print(f"Q: {arg}\nA: {notebook.ask(arg)}")
            elif command == "export":
                report = notebook.export_delta(arg, label="notebook")
                print(f"exported {len(report.facts)} notes ({report.rows} rows) to {arg}")
            elif command == "import":
                report = notebook.import_delta(arg)
                print(f"imported {report.rows} rows from {arg}")
            else:
                sys.exit(f"unknown command {command!r}\n{__doc__}")
    except engram.EngramError as e:
        sys.exit(f"notebook: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main(sys.argv)
