"""The ``rnn-jax`` console entry point: thin, it only dispatches to the library's commands.

Each command lives in its own module exposing ``cli_main(argv, prog) -> int`` and is imported only when
it runs, so ``rnn-jax bench`` does not pay for the trainers' imports and vice versa.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import signal
import sys
import threading

from rnn_jax.allocator import keep_freed_memory
from rnn_jax.errors import UserError

COMMANDS: dict[str, tuple[str, str]] = {
    "charlm": ("rnn_jax.apps.charlm", "train, evaluate and sample a character-level language model"),
    "seq2seq": (
        "rnn_jax.apps.seq2seq",
        "train and run encoder-decoder models (reversal, addition, dates, G2P, TSV pairs)",
    ),
    "g2p": ("rnn_jax.apps.g2p", "pronounce English words (ARPAbet) with the G2P model shipped in the package"),
    "digits": (
        "rnn_jax.apps.digits",
        "image experiments on the 8x8 digits: classify, caption, generate, glimpse, video",
    ),
    "bench": ("rnn_jax.tools.bench", "time forward and backward of one recurrent layer against peers"),
    "memory": ("rnn_jax.tools.memory", "peak memory of BPTT against sequence length for each remat option"),
    "hello": ("rnn_jax.apps.hello", "the lecture's vanilla RNN learning 'hello' (a few seconds)"),
    "launch": ("rnn_jax.distributed", "run a command as N processes on this machine (JAX's multi-host runtime)"),
}


def _exit_interrupted(prog: str) -> None:
    print(f"{prog}: interrupted", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(130)


def _on_interrupt(prog: str, signum, frame) -> None:
    """Ctrl-C: raise KeyboardInterrupt (so that a checkpoint being written is finished or undone), and end
    the process 2 s later if it still runs: Python ignores the exception when it lands in a callback (XLA's
    garbage-collection hook, while the first step compiles), and the run would go on."""
    timer = threading.Timer(2.0, _exit_interrupted, args=(prog,))
    timer.daemon = True
    timer.start()
    raise KeyboardInterrupt


def _quiet_unraisable_interrupt(unraisable) -> None:
    """Ctrl-C that lands in a callback Python cannot raise from (XLA's garbage-collection hook, often in a
    training loop): no traceback, the timer of :func:`_on_interrupt` ends the process with 130."""
    if not issubclass(unraisable.exc_type, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)


def main(argv: list[str] | None = None, *, exit_on_interrupt: bool | None = None) -> int:
    """Run ``rnn-jax COMMAND ...``; the exit status. On Ctrl-C the process ends at once with 130 when it runs as
    the command (``argv`` from ``sys.argv``, or ``exit_on_interrupt``); called with ``argv`` it returns 130."""
    exit_on_interrupt = argv is None if exit_on_interrupt is None else exit_on_interrupt
    argv = sys.argv[1:] if argv is None else list(argv)
    keep_freed_memory()  # before XLA's first call: freed temporaries stay mapped (see rnn_jax.allocator)
    parser = argparse.ArgumentParser(
        prog="rnn-jax", description="Recurrent networks as pure JAX functions (cs231n Lecture 10)."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints usage or the "invalid choice" error and exits
    if exit_on_interrupt and argv[0] != "launch":  # launch stops its children on Ctrl-C itself
        signal.signal(signal.SIGINT, functools.partial(_on_interrupt, f"rnn-jax {argv[0]}"))
        sys.unraisablehook = _quiet_unraisable_interrupt
    from rnn_jax import distributed

    try:
        # --coordinator/--num-processes/--process-id (or a cluster's environment): every command runs multi-process.
        rest = argv[1:] if argv[0] == "launch" else distributed.initialize_from_argv(argv[1:])
        module = importlib.import_module(COMMANDS[argv[0]][0])
        return distributed.run_command(module.cli_main, rest, prog=f"rnn-jax {argv[0]}")
    except UserError as err:
        print(f"rnn-jax {argv[0]}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the machine refused a file operation (a full disk, a lost mount): one line
        where = f"{err.filename}: " if err.filename else ""
        print(f"rnn-jax {argv[0]}: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rnn-jax {argv[0]}: interrupted", file=sys.stderr)
        if exit_on_interrupt:
            # Every checkpoint write has finished or been undone by now (the exception unwound through it),
            # but XLA's compile threads may still run: the interpreter's shutdown under them crashes
            # (SIGSEGV), so the process ends here without one.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        return 130


if __name__ == "__main__":
    sys.exit(main(exit_on_interrupt=True))
