"""Print the entries of requirements/lock.txt (pins and hashes) named in a requirements.in.

``python bench/gpu/lock_subset.py bench/gpu/requirements.in requirements/lock.txt`` — used by
``make gpu-wheels``, so the GPU check installs exactly the versions every other install does.
Exit status 2 with one line naming a package the lock does not hold.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def _names(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line.lower() for line in lines if line]


def _entries(lock: Path) -> dict[str, str]:
    """Package name -> its entry (the pin and its hash lines) in a pip-compile lock."""
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lock.read_text().splitlines():
        if re.match(r"^[A-Za-z0-9]", line):
            current = entries[re.split(r"[=\[ ]", line, maxsplit=1)[0].lower()] = [line]
        elif line.startswith("    --hash") and current is not None:
            current.append(line)
    return {name: "\n".join(lines) for name, lines in entries.items()}


def main(argv: list[str]) -> int:
    wanted, lock = Path(argv[0]), Path(argv[1])
    entries = _entries(lock)
    missing = [n for n in _names(wanted) if n not in entries]
    if missing:
        sys.stderr.write(f"lock_subset: {lock} does not pin {', '.join(missing)}\n")
        return 2
    sys.stdout.write("\n".join(entries[n] for n in _names(wanted)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
