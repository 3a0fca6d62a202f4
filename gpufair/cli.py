"""The ``gpufair`` console script: one front for every part of the service.

Each subcommand lives in ``gpufair/commands/<name>.py`` with ``main(argv) -> int`` and is
imported only when asked for, so ``gpufair divide`` starts without loading torch or the web
stack. Errors that a user can fix (bad input, bad settings) end as one line on stderr and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys

from gpufair import __version__
from gpufair.commands.bench import BENCHMARKS

# name -> (module under gpufair.commands, one-line description shown by --help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "run the whole service on this machine with a live view (the main job)"),
    "serve": ("serve", "run the tenant admin REST API (control plane)"),
    "db": ("db", "manage the database schema (Alembic): upgrade, downgrade, current"),
    "executor": ("executor", "run the serving daemon of one node from a plan file or the API"),
    "gateway": ("gateway", "route every tenant's queries to the nodes' daemons from one address"),
    "profile": ("profile", "measure latency-bounded QPS against streams for the model zoo"),
    "divide": ("divide", "solve a fair division instance (JSON in, JSON out)"),
    "allocate": ("allocate", "allocate a cluster (GPUs, tenants, models) and print the plan"),
    # The benchmarks' names are bench's own list, so a new one is named here too.
    "bench": (
        "bench",
        f"run a benchmark: {', '.join(list(BENCHMARKS)[:-1])} or {list(BENCHMARKS)[-1]}",
    ),
}

# Every command's log lines, and those of the processes `gpufair serve --workers` starts.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The exit status of a command killed by SIGPIPE, as a shell reports it.
BROKEN_PIPE_EXIT = 128 + signal.SIGPIPE

USAGE = "usage: gpufair [--version] [-v] COMMAND [ARGS...]"


def _help() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        USAGE,
        "",
        "gpufair divides shared GPUs fairly among tenants' recommendation models and serves them.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += [
        "",
        "options:",
        "  -v, --verbose  log at debug level (a single -v: -vv is not accepted)",
        "  --version      print the version and exit",
        "",
        "Run 'gpufair COMMAND --help' for a command's own options. Settings come from",
        "config.toml (or $GPUFAIR_CONFIG), overridden by GPUFAIR_<SECTION>_<KEY> variables.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = False
    while args and args[0].startswith("-"):
        flag = args.pop(0)
        if flag in ("-h", "--help"):
            print(_help())
            return 0
        if flag == "--version":
            print(f"gpufair {__version__}")
            return 0
        if flag in ("-v", "--verbose"):
            verbose = True
            continue
        print(f"gpufair: unknown option {flag!r}\n{USAGE}", file=sys.stderr)
        return 2
    if not args:
        print(_help(), file=sys.stderr)
        return 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"gpufair: unknown command {name!r}; run 'gpufair --help'", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=LOG_FORMAT,
        stream=sys.stderr,
    )
    module = importlib.import_module(f"gpufair.commands.{COMMANDS[name][0]}")
    try:
        return int(module.main(rest))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Whoever read stdout went away (`gpufair divide x.json | head`): nothing is left to say
        # and no traceback is owed. Point stdout at /dev/null so that the interpreter's own
        # flush at exit does not fail on the same pipe again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE_EXIT


if __name__ == "__main__":
    raise SystemExit(main())
