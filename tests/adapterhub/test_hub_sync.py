"""sync and search-hub against the loopback Hub: the four states, what moves, and listings."""

from __future__ import annotations

import json
import subprocess
import sys

from adapterhub.hub.options import PushOptions
from adapterhub.library import Library
from tests.adapterhub.test_cli import run
from tests.adapterhub.test_hub_pull import add_adapter, adapter_files, store_state


def remote_adapter(tmp_path, seed: int) -> dict[str, bytes]:
    files = adapter_files(tmp_path / f"remote-{seed}", seed=seed, card=None)
    return {name: files[name] for name in ("adapter_config.json", "adapter_model.safetensors")}


def test_sync_reports_and_moves_each_state(hub_env, tmp_path):
    server = hub_env.server
    store = tmp_path / "store"
    library = Library(store)
    pushed = {}
    for seed, name in enumerate(["same", "behind", "ahead", "diverged"]):
        add_adapter(library, tmp_path / name, seed, name)
        pushed[name] = library.push(name, PushOptions(f"testuser/{name}")).commit
    behind_head = server.move_branch("testuser/behind", "main", remote_adapter(tmp_path, 10))
    diverged_head = server.move_branch("testuser/diverged", "main", remote_adapter(tmp_path, 11))
    ahead_id = add_adapter(library, tmp_path / "ahead-2", 12, "ahead")
    diverged_id = add_adapter(library, tmp_path / "diverged-2", 13, "diverged")
    before = store_state(store)
    heads = {name: server.commit_id(f"testuser/{name}") for name in ("same", "behind", "ahead", "diverged")}

    status = run(store, "sync", "--status")

    assert status.exit_code == 0, status.output
    assert status.stdout == (
        "REFERENCE        REMOTE                  STATE       ACTION\n"
        "ahead:latest     testuser/ahead@main     ahead       -\n"
        "behind:latest    testuser/behind@main    behind      -\n"
        f"diverged:latest  testuser/diverged@main  diverged    both changed since commit {pushed['diverged'][:12]}; "
        "pull with --name to keep both versions, or push with --force to replace the Hub's\n"
        "same:latest      testuser/same@main      up to date  -\n"
    )
    assert store_state(store) == before
    assert {name: server.commit_id(f"testuser/{name}") for name in heads} == heads

    moved = run(store, "sync", "--json")

    assert moved.exit_code == 0, moved.output
    actions = {entry["repo_id"]: (entry["state"], entry["action"]) for entry in json.loads(moved.stdout)}
    assert actions == {"testuser/same": ("up to date", "none"), "testuser/behind": ("behind", "pulled"),
                       "testuser/ahead": ("ahead", "pushed"), "testuser/diverged": ("diverged", "none")}
    assert library.resolve("behind") == Library(tmp_path / "check").pull("testuser/behind").artifact_id
    assert server.commit_id("testuser/behind") == behind_head
    assert server.file_bytes("testuser/ahead", "adapter_model.safetensors") == (
        tmp_path / "ahead-2" / "adapter_model.safetensors").read_bytes()
    assert server.commit_id("testuser/diverged") == diverged_head
    assert library.resolve("ahead") == ahead_id
    assert library.resolve("diverged") == diverged_id

    again = json.loads(run(store, "sync", "--status", "--json").stdout)
    assert {entry["repo_id"]: entry["state"] for entry in again} == {
        "testuser/same": "up to date", "testuser/behind": "up to date",
        "testuser/ahead": "up to date", "testuser/diverged": "diverged"}


def test_sync_selected_references(hub_env, tmp_path):
    store = tmp_path / "store"
    library = Library(store)
    for seed, name in enumerate(["one", "two"]):
        add_adapter(library, tmp_path / name, seed, name)
        library.push(name, PushOptions(f"testuser/{name}"))

    by_name = library.sync(["one"], status_only=True)
    by_hub = library.sync(["hf://testuser/two"], status_only=True)
    missing = run(store, "sync", "three")
    add_adapter(library, tmp_path / "three", 3, "three")
    unpushed = run(store, "sync", "three")

    assert [entry.location.repo_id for entry in by_name] == ["testuser/one"]
    assert [entry.location.repo_id for entry in by_hub] == ["testuser/two"]
    assert missing.exit_code == 1
    assert missing.output.startswith("Error: Reference 'three:latest' not found in the store")
    assert unpushed.exit_code == 1
    assert unpushed.output == (
        "Error: three has no Hub remote in this store; push it with adapterhub push three "
        "OWNER/REPO, or pull it first\n"
    )


def test_sync_reports_deleted_repo(hub_env, tmp_path):
    store = tmp_path / "store"
    library = Library(store)
    add_adapter(library, tmp_path / "gone", 0, "gone")
    library.push("gone", PushOptions("testuser/gone"))
    hub_env.server.store.delete("model", "testuser/gone")

    result = run(store, "sync")

    assert result.exit_code == 1
    assert result.stdout == (
        "REFERENCE    REMOTE              STATE  ACTION\n"
        "gone:latest  testuser/gone@main  error  testuser/gone@main no longer exists on the Hub; "
        "push again to recreate it\n"
    )


def test_search_hub_lists_peft_adapters(hub_env, tmp_path):
    server = hub_env.server
    store = tmp_path / "store"
    library = Library(store)
    add_adapter(library, tmp_path / "task", 0, "task")
    add_adapter(library, tmp_path / "other", 1, "other")
    library.push("task", PushOptions("testuser/tiny-task"))
    library.push("other", PushOptions("testorg/tiny-other"))
    server.create_repo("testuser/tiny-model", {"config.json": b"{}"})

    table = run(store, "search-hub", "tiny")
    rows = json.loads(run(store, "search-hub", "--base-model", "test/tiny-base", "--limit", "1", "--json").stdout)
    nothing = run(store, "search-hub", "--base-model", "someone/else")

    assert table.exit_code == 0, table.output
    assert table.stdout == (
        "REPO                BASE MODEL      DOWNLOADS  LIKES\n"
        "testorg/tiny-other  test/tiny-base  0          0\n"
        "testuser/tiny-task  test/tiny-base  0          0\n"
    )
    assert [(row["id"], row["base_model"]) for row in rows] == [("testorg/tiny-other", "test/tiny-base")]
    assert "peft" in rows[0]["tags"]
    assert nothing.stdout == "no PEFT adapters found on the Hub\n"


def test_hub_reads_do_not_import_torch(hub_env, tmp_path):
    store = tmp_path / "store"
    library = Library(store)
    add_adapter(library, tmp_path / "task", 0, "task")
    library.push("task", PushOptions("testuser/task"))
    # hub_env also sets HF_ENDPOINT, HF_TOKEN and HF_HOME in the environment the subprocess inherits.
    script = (
        "import sys\n"
        "from adapterhub.cli import main\n"
        "for args in (['show', 'hf://testuser/task'], ['sync', '--status'], ['search-hub', 'task']):\n"
        f"    main(['--home', {str(store)!r}, *args], standalone_mode=False)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )

    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)

    assert result.returncode == 0, result.stderr
    assert "testuser/task@main  up to date" in result.stdout
