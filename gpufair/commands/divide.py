"""``gpufair divide INSTANCE.json``: the fair-division core, JSON in, JSON out
(docs/architecture.md §3.1).

Reads an instance document, solves it with ``allocator.divide`` and prints the allocation
with its certificate on stdout — also when not every criterion can be met exactly: the
certificate then says ``"fair": false``, ``"relaxed": true`` if some criteria hold only relaxed,
and which agents do not hold, and the exit status is still 0. Settings
come from ``[allocator]`` of gpufair.settings, overridden by the flags. Any input error ends as
one line on stderr and exit status 2; a solve that finds no allocation at all (side
constraints, time limit) as one line and exit status 1 — never a traceback. Imports stay
lean: PuLP is loaded only for small instances, which go to the exact MILP. Stdout carries the
JSON alone: whatever a solver library prints there goes to stderr (gpufair.stdout_guard).
"""

from __future__ import annotations

import argparse
import json
import sys

from gpufair.compose import add_solve_flags, flagged_solve_options
from gpufair.inputs import InputError, decode_text, read_text
from gpufair.stdout_guard import stdout_reserved_for_result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpufair divide",
        description="Divide indivisible and divisible goods fairly among agents, each under "
        "its own criterion, and print the allocation with its certificate as JSON. Every "
        "criterion the guarantees table covers (docs/fairness.md) holds exactly; the "
        'certificate says "fair": true only when every criterion does.',
    )
    parser.add_argument("instance",
                        help="instance JSON file (docs/architecture.md §3.1), or - for stdin")
    add_solve_flags(parser)
    parser.add_argument("--indent", type=int, default=None, help="pretty-print JSON")
    return parser


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"gpufair divide: {message}\n")
    return code


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from allocator.documents import instance_from_dict
    from allocator.errors import AllocatorError, InstanceError
    from gpufair.settings import SettingsError, load_settings

    try:
        text = (
            decode_text(sys.stdin.buffer.read(), "stdin")
            if args.instance == "-"
            else read_text(args.instance)
        )
    except InputError as exc:
        return _fail(str(exc), 2)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        return _fail(f"{args.instance}: invalid JSON: {exc.msg} (line {exc.lineno})", 2)
    try:
        settings = load_settings().allocator
    except SettingsError as exc:
        return _fail(str(exc), 2)
    try:
        instance = instance_from_dict(doc)
    except InstanceError as exc:
        return _fail(f"{args.instance}: {exc}", 2)
    try:
        options = flagged_solve_options(settings, args)
    except InstanceError as exc:
        return _fail(str(exc), 2)
    from allocator.division import divide

    with stdout_reserved_for_result() as result_stream:
        try:
            division = divide(instance, options)
        except InstanceError as exc:
            return _fail(f"{args.instance}: {exc}", 2)
        except AllocatorError as exc:
            return _fail(str(exc), 1)
        json.dump(division.to_dict(), result_stream, indent=args.indent)
        result_stream.write("\n")
    return 0
