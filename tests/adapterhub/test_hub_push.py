"""Push to the loopback Hub with the real huggingface_hub client: round trips, moved branches, cards."""

from __future__ import annotations

import json

from adapterhub import formats
from adapterhub.hub.options import PushOptions
from adapterhub.library import Library
from tests.adapterhub.test_cli import run
from tests.adapterhub.test_hub_pull import CARD, add_adapter, adapter_files, store_state


def commit_titles(server, repo_id: str, revision: str = "main") -> list[str]:
    repo = server.store.get("model", repo_id)
    return [commit.title for commit in server.store.history(repo, server.store.resolve(repo, revision))]


def stored_card(library: Library, repo_id: str) -> str:
    (record,) = [json.loads(path.read_text()) for path in (library.store.home / "remotes").iterdir()
                 if json.loads(path.read_text())["repo_id"] == repo_id]
    return record["card"]


def test_push_then_pull_composed_adapter(hub_env, tmp_path):
    server = hub_env.server
    first = Library(tmp_path / "first")
    add_adapter(first, tmp_path / "task", 1, "task")
    add_adapter(first, tmp_path / "style", 2, "style")
    first.push("task", PushOptions("testuser/task"))
    first.push("style", PushOptions("testuser/style"))
    composed = run(tmp_path / "first", "compose", "hf://testuser/task", "hf://testuser/style",
                   "--weights", "1.0,0.6", "--method", "svd", "--rank", "4", "--name", "task+style")
    assert composed.exit_code == 0, composed.output

    pushed = run(tmp_path / "first", "push", "task+style", "testuser/task-plus-style")
    second = Library(tmp_path / "second")
    pulled = second.pull("testuser/task-plus-style")

    original = first.show("task+style")
    assert pushed.exit_code == 0, pushed.output
    assert len(original["parents"]) == 2
    assert pulled.artifact_id == original["id"]
    assert second.show(pulled.artifact_id)["metadata"]["lineage"] == original["metadata"]["lineage"]
    assert second.show(pulled.artifact_id)["parents"] == original["parents"]
    hub_card = server.file_bytes("testuser/task-plus-style", "README.md").decode()
    assert stored_card(second, "testuser/task-plus-style") == hub_card
    assert hub_card == stored_card(first, "testuser/task-plus-style")
    assert "base_model_relation: adapter" in hub_card
    assert server.file_paths("testuser/task-plus-style") == [
        ".gitattributes", "README.md", "adapter_config.json", "adapter_model.safetensors"]


def test_push_is_one_commit(hub_env, tmp_path):
    server = hub_env.server
    library = Library(tmp_path / "store")
    add_adapter(library, tmp_path / "task", 0, "task")

    result = run(tmp_path / "store", "push", "task", "testuser/task", "-m", "First upload")

    commit = server.commit_id("testuser/task")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"pushed {library.resolve('task')[:12]} to testuser/task@main (commit {commit[:12]})\n"
        f"{hub_env.endpoint}/testuser/task/commit/{commit}\n"
    )
    assert commit_titles(server, "testuser/task") == ["First upload", "initial commit"]
    assert server.file_bytes("testuser/task", "adapter_model.safetensors") == (
        tmp_path / "task" / "adapter_model.safetensors").read_bytes()


def test_push_keeps_author_prose(hub_env, tmp_path):
    server = hub_env.server
    library = Library(tmp_path / "store")
    add_adapter(library, tmp_path / "task", 0, "task")
    library.push("task", PushOptions("testuser/task"))
    card = server.file_bytes("testuser/task", "README.md").decode()
    server.move_branch("testuser/task", "main", {"README.md": (card + "\n## Notes\n\nWritten by hand.\n").encode()})
    library.pull("testuser/task", name="task")

    library.push("task", PushOptions("testuser/task", message="Refresh the card"))

    assert "Written by hand." in server.file_bytes("testuser/task", "README.md").decode()


def test_pulled_card_survives_push_elsewhere(hub_env, tmp_path):
    server = hub_env.server
    server.create_repo("testuser/style", adapter_files(tmp_path / "style"))
    library = Library(tmp_path / "store")
    library.pull("testuser/style", name="style")

    library.push("style", PushOptions("testorg/style-copy"))

    assert "Hand-written notes." in server.file_bytes("testorg/style-copy", "README.md").decode()


def test_push_refuses_moved_branch(hub_env, tmp_path):
    server = hub_env.server
    store = tmp_path / "store"
    library = Library(store)
    add_adapter(library, tmp_path / "task", 1, "task")
    first = library.push("task", PushOptions("testuser/task"))
    moved = server.move_branch("testuser/task", "main", {"adapter_config.json": b"{}"})
    add_adapter(library, tmp_path / "task2", 2, "task")
    before = store_state(store)

    refused = run(store, "push", "task", "testuser/task")
    assert refused.exit_code == 1
    assert refused.output == (
        f"Error: testuser/task@main moved since this store last saw it: it was at commit "
        f"{first.commit[:12]} when this store pushed it, and is now at {moved[:12]}; run "
        "`adapterhub sync --status` to compare, `adapterhub pull testuser/task` to take the remote "
        "version, or push again with --force to overwrite it\n"
    )
    assert server.commit_id("testuser/task") == moved
    assert store_state(store) == before

    forced = run(store, "push", "task", "testuser/task", "--force")
    assert forced.exit_code == 0, forced.output
    assert server.file_bytes("testuser/task", "adapter_model.safetensors") == (
        tmp_path / "task2" / "adapter_model.safetensors").read_bytes()
    assert commit_titles(server, "testuser/task")[1:] == [
        "Update from another client", f"Upload task:latest ({first.artifact_id[:12]}) with adapterhub",
        "initial commit"]


def test_push_refuses_unknown_adapter(hub_env, tmp_path):
    server = hub_env.server
    server.create_repo("testuser/task", adapter_files(tmp_path / "theirs", seed=3))
    library = Library(tmp_path / "store")
    add_adapter(library, tmp_path / "mine", 4, "task")

    result = run(tmp_path / "store", "push", "task", "testuser/task")

    assert result.exit_code == 1
    assert result.output == (
        "Error: testuser/task@main already contains adapter files (adapter_config.json, "
        "adapter_model.safetensors) that this store never pulled or pushed; run `adapterhub pull "
        "testuser/task` to take the remote version, or push again with --force to replace them\n"
    )


def test_push_branch_and_pull_request(hub_env, tmp_path):
    server = hub_env.server
    library = Library(tmp_path / "store")
    add_adapter(library, tmp_path / "task", 0, "task")
    library.push("task", PushOptions("testuser/task"))

    unchanged = library.push("task", PushOptions("testuser/task", create_pr=True))
    add_adapter(library, tmp_path / "task2", 5, "task")
    branch = library.push("task", PushOptions("testuser/task", branch="dev"))
    proposal = library.push("task", PushOptions("testuser/task", create_pr=True, message="Propose"))

    assert not unchanged.changed
    assert unchanged.pull_request_url is None
    assert branch.changed
    assert branch.commit == server.commit_id("testuser/task", "dev")
    assert server.file_bytes("testuser/task", "adapter_model.safetensors", "dev") == (
        tmp_path / "task2" / "adapter_model.safetensors").read_bytes()
    assert proposal.pull_request_url == f"{hub_env.endpoint}/testuser/task/discussions/1"
    assert proposal.location.revision == "refs/pr/1"
    assert commit_titles(server, "testuser/task", "refs/pr/1")[0] == "Propose"


def test_push_converts_lora_file(hub_env, tmp_path):
    server = hub_env.server
    adapter_files(tmp_path / "task", card=None)
    single = formats.get("lora").to_files(formats.load(tmp_path / "task"))["adapter.lora"]
    (tmp_path / "task.lora").write_bytes(single)
    library = Library(tmp_path / "store")
    library.add(tmp_path / "task.lora", name="task")

    library.push("task", PushOptions("testuser/task", private=True))

    assert server.store.get("model", "testuser/task").private
    pulled = Library(tmp_path / "other").pull("testuser/task")
    assert formats.load(tmp_path / "task").config == Library(tmp_path / "other").load(pulled.artifact_id).config


def test_invalid_hub_card_stops_push(hub_env, tmp_path):
    server = hub_env.server
    library = Library(tmp_path / "store")
    add_adapter(library, tmp_path / "task", 0, "task")
    library.push("task", PushOptions("testuser/task"))
    bad = CARD.replace("library_name: peft", "library_name: peft\nlicense: not-a-license")
    head = server.move_branch("testuser/task", "main", {"README.md": bad.encode()})
    library.pull("testuser/task", name="task")
    server.reset_counters()

    result = run(tmp_path / "store", "push", "task", "testuser/task")

    assert result.exit_code == 1
    assert result.output.startswith("Error: the model card's metadata would be rejected: license:")
    assert server.uploads == 0
    assert server.commit_id("testuser/task") == head
