"""What the daemon pays per query to turn a request body into a validated query, by format.

``python -m bench.decode [--repeats N] [--json FILE]`` encodes the docs/architecture.md §5
workload (RMC2 ``zoo:rmc2?scale=0.01&seed=0&user_tables=28``, the 20 query sizes of
:data:`gpufair.loadgen.QUERY_SIZES`) in each body format the daemon reads and times the
daemon's own parse of each (:mod:`executor.codec`: decoding *and* validation against the
schema), in this process, one thread: the Open Inference Protocol's binary tensors (the format
the load generator sends), its JSON tensors, gpufair's v1 JSON, and ``.npz`` (``np.savez`` of
the same tensors, the binary format the daemon read before issue 11; no longer served, it is
parsed here as the daemon parsed it, for the comparison). Each figure is the
mean over the 20 sizes of the per-query median of ``--repeats`` timed parses; the formats take
turns, size by size, so that a change in the machine's load falls on all of them. Writes
``bench/results/decode.{md,json}``.
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import describe_machine, load_average, this_machine
from executor import codec
from executor.features import Query
from executor.models import ModelSchema, build_model, parse_zoo_artifact
from gpufair.loadgen import QUERY_SIZES

ARTIFACT = "zoo:rmc2?scale=0.01&seed=0&user_tables=28"
RESULTS = Path(__file__).resolve().parent / "results"

Parse = Callable[[ModelSchema], Any]


def formats(query: Query) -> dict[str, tuple[int, Parse]]:
    """Each format: its body's size in bytes and the daemon's parse of that body."""
    binary, header_length = codec.query_to_oip(query, binary=True)
    oip_json, _ = codec.query_to_oip(query, binary=False)
    v1_json = json.dumps(codec.query_to_json(query)).encode()
    archive = io.BytesIO()
    np.savez(archive, **codec.query_to_tensors(query))  # type: ignore[arg-type]  # numpy stubs mistype **kwds
    npz = archive.getvalue()
    return {
        "oip-binary": (
            len(binary),
            lambda schema: codec.parse_query_oip(schema, binary, header_length),
        ),
        "npz": (len(npz), lambda schema: parse_npz(schema, npz)),
        "oip-json": (len(oip_json), lambda schema: codec.parse_query_oip(schema, oip_json, None)),
        "v1-json": (len(v1_json), lambda schema: codec.parse_query_json(schema, v1_json)),
    }


def parse_npz(schema: ModelSchema, body: bytes) -> Query:
    """An ``.npz`` body's query, as the daemon parsed one before issue 11."""
    with np.load(io.BytesIO(body), allow_pickle=False) as archive:
        return codec.query_from_tensors(schema, {key: archive[key] for key in archive.files})


def measure(repeats: int, seed: int = 0) -> dict[str, Any]:
    schema = build_model(parse_zoo_artifact(ARTIFACT)).schema
    rng = np.random.default_rng(seed)
    times: dict[str, list[float]] = {}
    sizes: dict[str, list[int]] = {}
    for rows in QUERY_SIZES:
        query = schema.random_query(rng, rows)
        bodies = formats(query)
        # JSON bodies cost 10-100x more: fewer repeats keep the run short, medians stay robust.
        for name, (size, parse) in bodies.items():
            runs = repeats if "json" not in name else max(3, repeats // 10)
            samples = []
            for _ in range(runs):
                began = time.perf_counter()
                parse(schema)
                samples.append(time.perf_counter() - began)
            times.setdefault(name, []).append(statistics.median(samples))
            sizes.setdefault(name, []).append(size)
    return {
        name: {
            "decode_ms_mean": 1000 * statistics.fmean(times[name]),
            "decode_ms_700": 1000 * times[name][QUERY_SIZES.index(700)],
            "body_kb_mean": statistics.fmean(sizes[name]) / 1024,
        }
        for name in times
    }


def markdown(result: dict[str, Any], machine: dict[str, Any], command: str) -> str:
    rows = result["formats"]
    base = rows["npz"]["decode_ms_mean"]
    lines = [
        "# Request body decoding per query, by format",
        "",
        f"Command: `{command}`. {describe_machine(machine)}",
        "",
        f"Workload: `{ARTIFACT}`, the 20 query sizes of docs/architecture.md §5 "
        f"(100-700 candidates). Each figure: the daemon's parse (decode + validation, "
        f"`executor/codec.py`) of one body, median of {result['repeats']} runs per size "
        "(JSON: a tenth of them), mean over the sizes; one thread, in-process.",
        "",
        "| format | body, mean KiB | decode, mean ms/query | decode, 700 candidates ms | vs .npz |",
        "|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['body_kb_mean']:.0f} | {row['decode_ms_mean']:.3f} | "
            f"{row['decode_ms_700']:.3f} | {base / row['decode_ms_mean']:.1f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__)
    parser.add_argument("--repeats", type=int, default=50, help="timed parses per size")
    parser.add_argument("--json", type=Path, default=RESULTS / "decode.json")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    machine = this_machine(["numpy"])
    result = {"repeats": args.repeats, "formats": measure(args.repeats)}
    machine["load_average_end"] = load_average()
    command = shlex.join(["python", "-m", "bench.decode", *(argv or sys.argv[1:])])
    result.update({"machine": machine, "command": command, "artifact": ARTIFACT})
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result, machine, command)
    args.json.with_suffix(".md").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
