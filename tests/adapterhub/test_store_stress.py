"""One store under load: many writer processes at once, writers killed mid-write, and reindex.

Worker processes come from a forkserver that has already imported this module (and with it
adapterhub, the modules that add and compose import on first use, and torch), so each starts
in milliseconds and spends its time on the store.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
from click.testing import CliRunner

# Imported here so that the forkserver preloads what add and compose import on first use.
import adapterhub.compose.engine
import adapterhub.compose.stack
import adapterhub.formats  # noqa: F401
from adapterhub.cli import main
from adapterhub.compose.options import ComposeOptions
from adapterhub.library import Library
from store import Store
from tests.adapterhub.builders import synthetic_adapter

WORKERS = 8
OPERATIONS = 25
KILLS = 50
SHARED_REPO = "testuser/shared"
PULLING_WORKERS = 2
MODULES = {"model.q_proj": (16, 16, 2), "model.v_proj": (16, 16, 2)}
# Larger adapters for the kill loop, so that hashing and writing take a window worth hitting.
KILL_MODULES = {f"model.layers.{n}.q_proj": (256, 256, 8) for n in range(4)}


def forkserver() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def tiny_adapter(folder: Path, seed: int, modules: dict = MODULES) -> Path:
    return synthetic_adapter(folder, modules, seed=seed, r=next(iter(modules.values()))[2])


def store_problems(home: Path, scratch: Path, exported: set[str] | None = None) -> list[str]:
    """Return what is wrong with the store: verify's findings and listed artifacts that fail export.

    Artifacts in ``exported`` were exported by an earlier call and are skipped (verify still
    re-hashes their blobs); newly exported ones are added to it.
    """
    exported = set() if exported is None else exported
    library = Library(home, create=False)
    report = library.verify()
    problems = [f"corrupt {digest}" for digest in report.corrupt]
    problems += [f"missing {blob.digest} for {blob.needed_by}" for blob in report.missing]
    problems += list(report.problems)
    for row in library.list():
        if row["id"] in exported:
            continue
        try:
            library.export(row["id"], scratch / row["id"], overwrite=True)
            exported.add(row["id"])
        except Exception as exc:  # noqa: BLE001 - the test reports whatever export raised
            problems.append(f"listed artifact {row['id']} cannot be exported: {exc!r}")
    library.store.close()
    return problems


def run_mixed_operations(
    home: str, sources: str, worker: int, result_file: str, hub_environment: dict[str, str]
) -> None:
    """Run OPERATIONS random store operations and write what should remain to ``result_file``.

    In the first PULLING_WORKERS workers one of them pulls the shared repo of the loopback
    Hub, through a CLI process that gets ``hub_environment``, the variables that point
    huggingface_hub at that Hub. (A CLI process imports torch anew, so only a few pull.)
    """
    torch.set_num_threads(1)
    rng = random.Random(worker)
    library = Library(home)
    held = {f"base{n}:latest": library.resolve(f"base{n}") for n in range(2)}
    own: list[str] = []
    log = []
    pull_step = rng.randrange(OPERATIONS) if worker < PULLING_WORKERS else None
    try:
        for step in range(OPERATIONS):
            operation = rng.choice(["add", "add", "compose", "tag", "annotate", "remove", "gc"])
            if operation in ("tag", "annotate", "remove") and not own:
                operation = "add"
            if step == pull_step:
                operation = "pull"
            log.append(operation)
            reference = f"w{worker}/{operation}{step}:latest"
            if operation == "pull":
                subprocess.run(
                    [sys.executable, "-m", "adapterhub", "--home", home, "pull", SHARED_REPO,
                     "--name", reference],
                    env=hub_environment, check=True, capture_output=True, timeout=120,
                )
                held[reference] = library.resolve(reference)
                own.append(reference)
            elif operation == "add":
                folder = tiny_adapter(Path(sources) / f"w{worker}-{step}", seed=1000 * worker + step)
                held[reference] = library.add(folder, name=reference, meta={"worker": str(worker)}).artifact_id
                own.append(reference)
            elif operation == "compose":
                inputs = rng.sample(sorted(held), 2)
                held[reference] = library.compose(inputs, ComposeOptions(), name=reference).artifact_id
                own.append(reference)
            elif operation == "tag":
                held[reference] = library.tag(rng.choice(own), reference)[0]
                own.append(reference)
            elif operation == "annotate":
                library.annotate(rng.choice(own), {"step": str(step)})
            elif operation == "remove":
                removed = own.pop(rng.randrange(len(own)))
                library.remove(removed)
                del held[removed]
            else:
                library.store.gc(grace=0)
        outcome = {"held": held, "log": log}
    except Exception:  # noqa: BLE001 - the parent asserts on the traceback
        outcome = {"error": traceback.format_exc(), "log": log}
    Path(result_file).write_text(json.dumps(outcome))


def test_processes_share_store_under_mixed_load(hub_env, tmp_path: Path) -> None:
    home = tmp_path / "home"
    library = Library(home)
    for n in range(2):
        library.add(tiny_adapter(tmp_path / f"base{n}", seed=n), name=f"base{n}")
    library.store.close()
    shared = tiny_adapter(tmp_path / "shared", seed=99)
    hub_env.server.create_repo(SHARED_REPO, {path.name: path.read_bytes() for path in shared.iterdir()})
    context = forkserver()
    results = [tmp_path / f"result-{worker}.json" for worker in range(WORKERS)]
    workers = [
        context.Process(
            target=run_mixed_operations,
            args=(str(home), str(tmp_path / "sources"), worker, str(results[worker]), dict(os.environ)),
        )
        for worker in range(WORKERS)
    ]

    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
    outcomes = [json.loads(path.read_text()) for path in results]

    assert [process.exitcode for process in workers] == [0] * WORKERS
    assert [outcome.get("error") for outcome in outcomes] == [None] * WORKERS
    assert ["pull" in outcome["log"] for outcome in outcomes] == [
        worker < PULLING_WORKERS for worker in range(WORKERS)
    ]
    expected = {ref: artifact_id for outcome in outcomes for ref, artifact_id in outcome["held"].items()}
    assert len(expected) > WORKERS * 5
    with Store(home, create=False) as store:
        listed = {row["id"]: row for row in store.list_artifacts()}
        for reference, artifact_id in expected.items():
            assert store.resolve(reference) == artifact_id, reference
            assert reference in listed[artifact_id]["refs"]
    assert store_problems(home, tmp_path / "exports") == []


def run_command(home: str, arguments: list[str], connection) -> None:
    """Run one adapterhub command, telling the parent when it starts and when it is done."""
    torch.set_num_threads(1)
    connection.send_bytes(b"start")
    main(["--home", home, *arguments], standalone_mode=False)
    connection.send_bytes(b"done")


def start_command(context, home: Path, arguments: list[str]):
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=run_command, args=(str(home), arguments, sender))
    process.start()
    sender.close()
    assert receiver.poll(60), "the command did not start"
    assert receiver.recv_bytes() == b"start"
    return process, receiver


def finished(receiver) -> bool:
    try:
        return receiver.poll(0) and receiver.recv_bytes() == b"done"
    except EOFError:
        return False


def test_killed_add_and_compose_leave_store_clean(tmp_path: Path) -> None:
    home = tmp_path / "home"
    rng = random.Random(20240611)
    library = Library(home)
    for n in range(2):
        library.add(tiny_adapter(tmp_path / f"base{n}", n, KILL_MODULES), name=f"base{n}")
    library.store.close()
    context = forkserver()

    def command(step: int) -> list[str]:
        if step % 2 == 0:
            folder = tiny_adapter(tmp_path / "sources" / str(step), 100 + step, KILL_MODULES)
            return ["add", str(folder), "--name", f"added{step}", "--meta", f"step={step}"]
        return ["compose", "base0", "base1", "--weights", f"1,{rng.random():.3f}", "--name",
                f"composed{step}", "--quiet"]

    # Calibrate: how long each kind of command takes here, from its start to its end.
    windows = {"add": 0.0, "compose": 0.0}
    for step in range(6):
        arguments = command(step)
        process, receiver = start_command(context, home, arguments)
        began = time.monotonic()
        process.join(60)
        assert process.exitcode == 0
        windows[arguments[0]] = max(windows[arguments[0]], time.monotonic() - began)

    kills = 0
    mid_write = 0
    seen: set[Path] = set()
    step = 6
    exported: set[str] = set()
    while kills < KILLS and step < 4 * KILLS:
        arguments = command(step)
        process, receiver = start_command(context, home, arguments)
        time.sleep(rng.uniform(0, windows[arguments[0]]))
        process.kill()
        process.join(30)
        kills += not finished(receiver)
        leftovers = set((home / "tmp").iterdir())
        mid_write += bool(leftovers - seen)
        seen |= leftovers
        problems = store_problems(home, tmp_path / "exports", exported)
        assert problems == [], f"after killing {arguments}"
        step += 1

    with Store(home, create=False) as store:
        store.gc(grace=0)
        leftovers = sorted(path.name for path in store.blobs.tmp_dir.iterdir())
    assert kills >= KILLS
    # Killed while staging or publishing: the kills hit the writes, not only the start-up.
    # How many land there depends on the machine's load, so one is the bound that cannot flake.
    assert mid_write >= 1
    assert leftovers == []
    assert store_problems(home, tmp_path / "exports") == []


def listing_and_details(home: Path) -> tuple[str, dict[str, str]]:
    runner = CliRunner()
    listing = runner.invoke(main, ["--home", str(home), "ls", "--json"])
    assert listing.exit_code == 0, listing.output
    details = {}
    for row in json.loads(listing.output):
        shown = runner.invoke(main, ["--home", str(home), "show", row["id"], "--json"])
        assert shown.exit_code == 0, shown.output
        details[row["id"]] = shown.output
    return listing.output, details


def test_reindex_restores_listing_and_details(corpus: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    runner = CliRunner()

    def run(*arguments: str) -> None:
        result = runner.invoke(main, ["--home", str(home), *map(str, arguments)])
        assert result.exit_code == 0, result.output

    run("add", corpus / "gpt2-lora-tigrinya-causal", "--name", "task", "--meta", "description=Tigrinya")
    run("add", corpus / "gpt2-lora-demo-causal", "--name", "style:v1")
    run("add", corpus / "opencalm-1b-lora-r1-fp16")
    run("compose", "task", "style:v1", "--weights", "1,0.5", "--method", "svd", "--rank", "4",
        "--name", "org/task+style", "--quiet")
    run("tag", "task", "task:stable")
    run("annotate", "org/task+style", "owner=ml-team")
    before = listing_and_details(home)
    assert len(json.loads(before[0])) == 4

    for name in ("index.db", "index.db-wal", "index.db-shm"):
        (home / name).unlink(missing_ok=True)
    run("reindex")

    assert listing_and_details(home) == before


def test_reindex_keeps_unreferenced_and_composed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    library = Library(home)
    for n in range(3):
        library.add(tiny_adapter(tmp_path / f"a{n}", n), name=f"a{n}", meta={"description": f"n{n}"})
    library.compose(["a0", "a1"], ComposeOptions(), name="c")
    library.remove("a2")
    library.store.close()
    before = listing_and_details(home)

    for name in ("index.db", "index.db-wal", "index.db-shm"):
        (home / name).unlink(missing_ok=True)
    with Store(home) as store:
        store.reindex()

    assert listing_and_details(home) == before


def test_store_commands_skip_torch(tmp_path: Path) -> None:
    home = tmp_path / "home"
    library = Library(home)
    library.add(tiny_adapter(tmp_path / "a", 0), name="a", meta={"description": "first"})
    library.close()
    script = (
        "import sys\n"
        "from adapterhub.cli import main\n"
        "for args in (['tag', 'a', 'b:v1'], ['annotate', 'b:v1', 'owner=me'], ['reindex'],\n"
        "             ['ls', '--search', 'first', '--min-rank', '1', '--created-after', '2020-01-01']):\n"
        f"    main(['--home', {str(home)!r}, *args], standalone_mode=False)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )

    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)

    assert result.returncode == 0, result.stderr
    assert "a:latest, b:v1" in result.stdout
