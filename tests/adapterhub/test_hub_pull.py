"""Pull from the loopback Hub with the real huggingface_hub client: dedup, records, hf:// refs."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

from adapterhub.library import Library
from tests.adapterhub.builders import synthetic_adapter
from tests.adapterhub.test_cli import run, snapshot

MODULES = {"model.layers.0.self_attn.q_proj": (16, 16, 4), "model.layers.0.self_attn.v_proj": (16, 16, 4)}
CARD = "---\nlibrary_name: peft\nbase_model: test/tiny-base\n---\n\n# Style adapter\n\nHand-written notes.\n"


def adapter_files(folder: Path, seed: int = 0, card: str | None = CARD, **config) -> dict[str, bytes]:
    """Write a synthetic PEFT adapter and return its files as the repo should hold them."""
    synthetic_adapter(folder, MODULES, seed=seed, **config)
    files = {path.name: path.read_bytes() for path in folder.iterdir()}
    if card is not None:
        files["README.md"] = card.encode()
    return files


def add_adapter(library: Library, folder: Path, seed: int, name: str) -> str:
    """Add a synthetic adapter to the store under ``name``; return its id."""
    adapter_files(folder, seed=seed, card=None)
    return library.add(folder, name=name).artifact_id


def store_state(home) -> tuple[dict[str, bytes], list[str]]:
    """The store's files, and the rows of its index as SQL.

    index.db is compared by content: its bytes change whenever a connection opens or closes it.
    """
    files = {path: data for path, data in snapshot(home).items() if not path.startswith("index.db")}
    with contextlib.closing(sqlite3.connect(home / "index.db")) as connection:
        return files, list(connection.iterdump())


def tensor_downloads(server, repo_id: str) -> int:
    return server.downloads[(repo_id, "adapter_model.safetensors")]


def test_pull_stores_adapter_and_record(hub_env, tmp_path):
    server = hub_env.server
    files = adapter_files(tmp_path / "style")
    commit = server.create_repo("testuser/style", files)
    library = Library(tmp_path / "store")

    result = library.pull("testuser/style")

    assert result.commit == commit
    assert result.reference == "testuser/style:latest"
    assert result.created
    assert sorted(result.downloaded) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert result.downloaded_bytes == sum(len(data) for data in files.values())
    shown = library.show("testuser/style")
    assert sorted(entry["path"] for entry in shown["files"]) == ["adapter_config.json", "adapter_model.safetensors"]
    assert shown["id"] == library.add(tmp_path / "style").artifact_id

    (record_file,) = (tmp_path / "store" / "remotes").iterdir()
    record = json.loads(record_file.read_text())
    assert record["repo_id"] == "testuser/style"
    assert record["revision"] == "main"
    assert record["commit"] == commit
    assert record["endpoint"] == hub_env.endpoint
    assert record["artifact_id"] == result.artifact_id
    assert record["card"] == CARD
    assert "hf_write_token" not in record_file.read_text()


def test_pull_skips_tensors_already_stored(hub_env, tmp_path):
    server = hub_env.server
    files = adapter_files(tmp_path / "style")
    server.create_repo("testuser/style", files)
    library = Library(tmp_path / "store")
    library.add(tmp_path / "style", name="local")
    server.reset_counters()

    result = library.pull("testuser/style")

    assert tensor_downloads(server, "testuser/style") == 0
    assert server.bytes_served == len(files["adapter_config.json"]) + len(files["README.md"])
    assert not [path for _, path in server.requests if path.endswith("/adapter_model.safetensors")]
    assert result.reused == ("adapter_model.safetensors",)
    assert result.artifact_id == library.resolve("local")
    assert not result.created


def test_pull_same_files_from_other_repo(hub_env, tmp_path):
    server = hub_env.server
    files = adapter_files(tmp_path / "style")
    server.create_repo("testuser/style", files)
    server.create_repo("testorg/style-copy", {**files, "README.md": b"# A copy\n"})
    library = Library(tmp_path / "store")
    first = library.pull("testuser/style")
    server.reset_counters()

    second = library.pull("testorg/style-copy")

    assert second.artifact_id == first.artifact_id
    assert tensor_downloads(server, "testorg/style-copy") == 0
    assert sorted(second.downloaded) == ["README.md"]
    assert sorted(second.reused) == ["adapter_config.json", "adapter_model.safetensors"]


def test_changed_config_downloads_only_config(hub_env, tmp_path):
    server = hub_env.server
    files = adapter_files(tmp_path / "style")
    server.create_repo("testuser/style", files)
    library = Library(tmp_path / "store")
    first = library.pull("testuser/style")
    config = json.loads(files["adapter_config.json"])
    new_commit = server.move_branch("testuser/style", "main", {
        "adapter_config.json": json.dumps({**config, "lora_alpha": 16}, indent=2).encode(),
    })
    server.reset_counters()

    second = library.pull("testuser/style")

    assert second.commit == new_commit
    assert second.downloaded == ("adapter_config.json",)
    assert server.downloads == {("testuser/style", "adapter_config.json"): 1}
    assert second.artifact_id != first.artifact_id
    assert library.show("testuser/style")["metadata"]["alpha"] == 16


def test_pull_other_revision_reuses_tensors(hub_env, tmp_path):
    server = hub_env.server
    files = adapter_files(tmp_path / "style")
    first_commit = server.create_repo("testuser/style", files)
    server.move_branch("testuser/style", "main", {"README.md": b"# Newer card\n"})
    library = Library(tmp_path / "store")
    latest = library.pull("testuser/style")
    server.reset_counters()

    pinned = library.pull(f"testuser/style@{first_commit}")

    assert pinned.reference == f"testuser/style:{first_commit}"
    assert pinned.artifact_id == latest.artifact_id
    assert tensor_downloads(server, "testuser/style") == 0
    assert server.downloads == {("testuser/style", "README.md"): 1}


def test_pull_subfolder_and_name(hub_env, tmp_path):
    server = hub_env.server
    files = adapter_files(tmp_path / "style", card=None)
    server.create_repo("testuser/many", {f"adapters/style/{name}": data for name, data in files.items()})
    store = tmp_path / "store"

    result = run(store, "pull", "testuser/many", "--subfolder", "adapters/style/", "--name", "style:v1")

    assert result.exit_code == 0, result.output
    artifact_id = Library(store).resolve("style:v1")
    assert result.stdout == (
        f"pulled {artifact_id[:12]} as style:v1 from testuser/many@main "
        f"(commit {server.commit_id('testuser/many')[:12]})\n"
    )
    assert result.stderr == f"downloaded 2 files ({sum(map(len, files.values()))} bytes), reused 0 from the store\n"


def test_hub_reference_pulls_on_first_use(hub_env, tmp_path):
    server = hub_env.server
    server.create_repo("testuser/style", adapter_files(tmp_path / "style"))
    store = tmp_path / "store"

    shown = run(store, "show", "hf://testuser/style", "--json")
    server.reset_counters()
    exported = run(store, "export", "hf://testuser/style", "-o", tmp_path / "out")
    composed = run(store, "compose", "hf://testuser/style", "hf://testuser/style", "--name", "twice")

    assert shown.exit_code == exported.exit_code == composed.exit_code == 0, composed.output
    assert server.requests == []
    assert (tmp_path / "out" / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "style" / "adapter_model.safetensors").read_bytes()
    lineage = Library(store).show("twice")["metadata"]["lineage"]
    assert [parent["label"] for parent in lineage["parents"]] == ["hf://testuser/style"] * 2
    assert json.loads(shown.stdout)["refs"] == ["testuser/style:latest"]
