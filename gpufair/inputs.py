"""What a user hands a command, checked at the door: files read as text, numbers given as flags.

Every command refuses bad input the same way (gpufair/cli.py): one line on stderr naming the
file or flag and what is wrong, exit status 2, never a traceback; and a value out of range is
refused, never replaced by a default or a setting. The checks that more than one command needs
live here once:

- :func:`read_text` reads a file as UTF-8 and raises :class:`InputError` naming the file when it
  cannot be read or is not text, so a binary file is one line, like a missing one;
- :func:`port_number`, :func:`whole_number` and :func:`positive_number` are ``argparse`` types,
  so a flag out of range is refused as the flags are parsed, before anything is loaded or
  measured (argparse's usage, then the one line naming the flag, exit status 2).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path

# The TCP ports a server may listen on; 0 (the kernel's pick) is no port anyone could be told.
MIN_PORT, MAX_PORT = 1, 65535


class InputError(ValueError):
    """A file a command was given cannot be used; the message names the file."""


def decode_text(data: bytes, source: str) -> str:
    """``data`` as UTF-8 text; InputError naming ``source`` and the first byte that is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{source}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None


def read_text(path: str | Path) -> str:
    """The text of the file at ``path``, decoded as UTF-8; InputError naming the file if it
    cannot be read (missing, a directory, no permission) or is not UTF-8 text."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return decode_text(data, str(path))


def port_number(text: str) -> int:
    """``argparse`` type of a port to listen on: a whole number from 1 to 65535."""
    return whole_number(MIN_PORT, MAX_PORT)(text)


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """``argparse`` type of a whole number from ``low`` to ``high`` (no upper bound: None)."""
    wanted = f"a whole number, at least {low}"
    if high is not None:
        wanted = f"a whole number from {low} to {high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {wanted}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {wanted}")
        return value

    return parse


def positive_number(text: str) -> float:
    """``argparse`` type of a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number above 0")
    return value


def results_folder(text: str) -> Path:
    """``argparse`` type of a benchmark's ``--out``: a folder, made if missing, that can be
    written. A benchmark writes its results at its end: a folder they cannot go to is said
    when the command starts, not after a run of many minutes."""
    folder = Path(text)
    if folder.exists() and not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise argparse.ArgumentTypeError(
            f"{text}: cannot make the results folder: {exc.strerror or exc}"
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text}: the results folder is not writable")
    return folder
