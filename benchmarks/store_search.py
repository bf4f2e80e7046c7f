"""Time listing and full-text search in a store of 10,000 small synthetic artifacts.

    python benchmarks/store_search.py [--count 10000] [--home DIR] [--repeat 20]

The store is filled through the store API (``Store.add_artifact`` with metadata, a reference
and a description annotation, but no tensor files), which is how ``add`` indexes real
adapters. An existing store at ``--home`` with enough artifacts is reused. Then it times,
as the median of ``--repeat`` runs:

- the library call ``Library.list`` with a filter (base model and minimum rank) and with a
  text search;
- the same two queries end to end through the CLI (``adapterhub ls ... --json`` in a new
  process each time), which adds the interpreter start and imports.

Results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from adapterhub.library import Library
from store import Store
from store.refs import NamedRef

BASE_MODELS = [f"org/base-{n}" for n in range(20)]
RANKS = [4, 8, 16, 32, 64]
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
WORDS = ("summarise translate classify answer code chat medical legal finance news poetry "
         "tigrinya swahili german french spanish vision speech tables math").split()

FILTER = {"base_model": "org/base-3", "min_rank": 16}
SEARCH = "tigrinya medical"


def fill(home: Path, count: int) -> None:
    """Add artifacts until the store at ``home`` contains ``count`` of them."""
    rng = random.Random(0)
    with Store(home) as store:
        present = len(store.list_artifacts())
        began = time.perf_counter()
        for number in range(present, count):
            metadata = {
                "format": "peft",
                "peft_type": "LORA",
                "base_model": rng.choice(BASE_MODELS),
                "rank": rng.choice(RANKS),
                "target_modules": sorted(rng.sample(MODULES, rng.randint(1, len(MODULES)))),
                "number": number,
            }
            description = " ".join(rng.sample(WORDS, 4))
            store.add_artifact(
                "adapter", [], metadata, ref=NamedRef(f"team{number % 50}/adapter-{number}"),
                annotations={"description": description},
            )
        if count > present:
            elapsed = time.perf_counter() - began
            print(f"added {count - present} artifacts in {elapsed:.1f} s", file=sys.stderr)


def median_ms(function, repeat: int) -> float:
    timings = []
    for _ in range(repeat):
        began = time.perf_counter()
        function()
        timings.append((time.perf_counter() - began) * 1000)
    return statistics.median(timings)


def cli(home: Path, *arguments: str) -> None:
    command = [sys.executable, "-m", "adapterhub", "--home", str(home), "ls", *arguments, "--json"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="artifacts in the store")
    parser.add_argument("--home", type=Path, help="store folder (default: a new temporary one)")
    parser.add_argument("--repeat", type=int, default=20, help="runs per measurement")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="store-search-")) / "store"

    fill(home, args.count)
    library = Library(home, create=False)
    filtered = library.list(**FILTER)
    found = library.list(search=SEARCH)
    filter_args = ("--base-model", FILTER["base_model"], "--min-rank", str(FILTER["min_rank"]))

    rows = [
        ("library: list with filter", len(filtered), median_ms(lambda: library.list(**FILTER), args.repeat)),
        ("library: list with search", len(found), median_ms(lambda: library.list(search=SEARCH), args.repeat)),
        ("cli: ls with filter --json", len(filtered), median_ms(lambda: cli(home, *filter_args), args.repeat)),
        ("cli: ls --search --json", len(found), median_ms(lambda: cli(home, "--search", SEARCH), args.repeat)),
        ("cli: --version (start-up only)", 0, median_ms(
            lambda: subprocess.run([sys.executable, "-m", "adapterhub", "--version"], check=True,
                                   stdout=subprocess.DEVNULL), args.repeat)),
    ]
    print(f"store: {home} ({args.count} artifacts), median of {args.repeat} runs")
    print(f"| {'measurement':<32} | rows | median ms |")
    print(f"|{'-' * 34}|------|-----------|")
    for label, count, milliseconds in rows:
        print(f"| {label:<32} | {count:>4} | {milliseconds:>9.1f} |")


if __name__ == "__main__":
    main()
