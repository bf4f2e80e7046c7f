"""Errors users meet with the Hub: each message, exit code 1 from the CLI, and an unchanged store."""

from __future__ import annotations

import hashlib

import pytest
from huggingface_hub import constants

from adapterhub.library import Library
from tests.adapterhub.test_cli import run
from tests.adapterhub.test_hub_pull import adapter_files, store_state
from tests.hubserver.repos import AddFile
from tests.hubserver.server import READ_TOKEN


@pytest.fixture
def store(hub_env, tmp_path):
    """A store holding one adapter, and the repo testuser/style on the Hub with another."""
    home = tmp_path / "store"
    adapter_files(tmp_path / "local", seed=1, card=None)
    assert run(home, "add", tmp_path / "local", "--name", "task").exit_code == 0
    hub_env.server.create_repo("testuser/style", adapter_files(tmp_path / "style", seed=2))
    return home


def fails(home, *args: str) -> str:
    """Run a command that must fail without touching the store; return its output."""
    before = store_state(home)
    result = run(home, *args)
    assert result.exit_code == 1, result.output
    assert store_state(home) == before
    return result.output


def test_push_without_token(store, hub_env, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")

    output = fails(store, "push", "task", "testuser/task")

    assert output == (
        "Error: pushing to testuser/task needs a Hugging Face token with write access, and none is "
        f"set; create one at {hub_env.endpoint}/settings/tokens and set HF_TOKEN to it, or run "
        "`hf auth login`\n"
    )
    assert hub_env.server.requests == []


def test_push_with_read_only_token(store, hub_env, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", READ_TOKEN)

    output = fails(store, "push", "task", "testuser/task")

    assert output == (
        "Error: the token in use (user testuser) is read-only, and pushing to testuser/task needs "
        f"write access; create a token with write access at {hub_env.endpoint}/settings/tokens "
        "and set HF_TOKEN to it\n"
    )
    assert hub_env.server.store.get("model", "testuser/task") is None


def test_pull_with_invalid_token(store, hub_env, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_unknown_token")

    output = fails(store, "pull", "testuser/style")

    assert output == (
        "Error: the Hub rejected the token in use (Invalid credentials in Authorization header); "
        f"set HF_TOKEN to a valid token from {hub_env.endpoint}/settings/tokens, or unset it to "
        "read public repos anonymously\n"
    )
    assert "hf_unknown_token" not in output


def test_push_to_namespace_without_rights(store, hub_env):
    output = fails(store, "push", "task", "otheruser/task")

    assert output == (
        "Error: the Hub denied permission to create the repo otheruser/task (You don't have "
        "the rights to create a model repo under the namespace otheruser: testuser cannot write "
        "to otheruser); use a token with write access to it: create one at "
        f"{hub_env.endpoint}/settings/tokens and set HF_TOKEN\n"
    )


def test_pull_missing_repo(store, hub_env):
    output = fails(store, "pull", "testuser/absent")

    assert output == (
        f"Error: repo testuser/absent not found on {hub_env.endpoint}; check the name, and if the "
        "repo is private set HF_TOKEN to a token that can read it\n"
    )


def test_pull_missing_revision(store):
    output = fails(store, "pull", "testuser/style@no-such-branch")

    assert output == (
        "Error: revision 'no-such-branch' not found in testuser/style; give a branch, tag or "
        "commit id of the repo, or leave out @REVISION to use main\n"
    )


def test_pull_gated_repo(store, hub_env):
    hub_env.server.set_gated("testuser/style")

    output = fails(store, "pull", "testuser/style")

    assert output == (
        "Error: testuser/style is a gated repo, and the token in use has no access to it; request "
        f"access at {hub_env.endpoint}/testuser/style, and once it is granted set HF_TOKEN to a "
        "token of that account\n"
    )


def test_offline_without_stored_copy(store, hub_env, monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE once, when huggingface_hub.constants is imported, so
    # setting the variable now would change nothing in this process; patch the constant instead.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    message = (
        "Error: cannot pull testuser/style@main: HF_HUB_OFFLINE is set, so huggingface_hub makes "
        "no network requests, and this store has no copy of it; unset HF_HUB_OFFLINE (or set it "
        "to 0) and run the command again\n"
    )

    assert fails(store, "pull", "testuser/style") == message
    assert fails(store, "show", "hf://testuser/style") == message
    assert hub_env.server.requests == []


def test_offline_uses_stored_copy(store, hub_env, monkeypatch):
    pulled = Library(store).pull("testuser/style")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub_env.server.reset_counters()

    result = run(store, "pull", "testuser/style")
    shown = run(store, "show", "hf://testuser/style")

    assert result.exit_code == shown.exit_code == 0
    assert result.output == (
        f"offline: kept the copy of testuser/style@main pulled at commit {pulled.commit[:12]} as "
        "testuser/style:latest\n"
    )
    assert hub_env.server.requests == []


def test_pull_repo_that_is_not_an_adapter(store, hub_env):
    hub_env.server.create_repo("testuser/model", {"config.json": b"{}", "model.safetensors": b"\0" * 16})

    output = fails(store, "pull", "testuser/model")

    assert output == (
        "Error: testuser/model@main is not a PEFT adapter: it has no adapter_config.json (files: "
        ".gitattributes, config.json, model.safetensors); pull a repo saved with PEFT's "
        "save_pretrained or push_to_hub\n"
    )
    assert hub_env.server.downloads == {}


def test_pull_names_adapter_subfolders(store, hub_env, tmp_path):
    files = adapter_files(tmp_path / "nested", card=None)
    hub_env.server.create_repo("testuser/nested", {f"lora/{name}": data for name, data in files.items()})

    output = fails(store, "pull", "testuser/nested")

    assert output == (
        "Error: testuser/nested@main is not a PEFT adapter: it has no adapter_config.json (files: "
        ".gitattributes, lora/adapter_config.json, lora/adapter_model.safetensors); adapter "
        "configs lie in: lora, pass one with --subfolder\n"
    )


def test_pull_config_that_is_not_peft(store, hub_env, tmp_path):
    files = adapter_files(tmp_path / "robot", card=None)
    commit = hub_env.server.create_repo("testuser/robot", {**files, "adapter_config.json": b'{"base_model": "x"}'})

    output = fails(store, "pull", "testuser/robot")

    assert output == (
        f"Error: testuser/robot@{commit[:12]}: adapter_config.json has no 'peft_type' (keys: "
        "base_model), so it is not a PEFT adapter; save the adapter with PEFT's save_pretrained; "
        "the repo contains no adapter that adapterhub can read\n"
    )


def test_cut_off_download_stores_nothing(store, hub_env):
    server = hub_env.server
    size = len(server.file_bytes("testuser/style", "adapter_model.safetensors"))
    # One cut response and huggingface_hub's five retries, none of which completes.
    server.truncate_next_download("adapter_model.safetensors", times=6)

    output = fails(store, "pull", "testuser/style")

    assert output == (
        "Error: cannot download adapter_model.safetensors from "
        f"testuser/style@{server.commit_id('testuser/style')[:12]}: the download failed "
        "(RemoteProtocolError: peer closed connection without sending complete message body "
        f"(received {size // 2} bytes, expected {size})); nothing was stored, run the command again\n"
    )
    assert not list((store / "tmp").iterdir())


def test_unsafe_remote_path(store, hub_env):
    server = hub_env.server
    repo = server.store.get("model", "testuser/style")
    # The test Hub refuses such paths in uploads, so the file is committed behind its back.
    entry = server.store.entry_for_bytes(b"{}", lfs=False)
    additions = [AddFile("../escape.json", entry), AddFile("/etc/escape.json", entry)]
    server.store.commit(repo, "refs/heads/main", additions, "Escape", "", "mallory")

    output = fails(store, "pull", "testuser/style")

    assert output == (
        "Error: testuser/style@main lists files whose paths would leave the download folder: "
        "'../escape.json' (it has an empty, '.' or '..' segment), '/etc/escape.json' (it is an "
        "absolute path); nothing was downloaded. Report the repo to its owner and pull another "
        "revision\n"
    )
    assert server.downloads == {}


def test_unsafe_subfolder_is_usage_error(store):
    result = run(store, "pull", "testuser/style", "--subfolder", "../outside")

    assert result.exit_code == 2
    assert result.output == (
        "Error: invalid --subfolder '../outside': it has an empty, '.' or '..' segment; give a "
        "folder inside the repo, such as adapters/style\n"
    )


def test_download_with_wrong_bytes_stores_nothing(store, hub_env):
    server = hub_env.server
    content = server.file_bytes("testuser/style", "adapter_model.safetensors")
    sha256 = server.store.resolve(server.store.get("model", "testuser/style"), "main").tree[
        "adapter_model.safetensors"].sha256
    # Damage the file on the test Hub's disk: same size, different bytes than its LFS sha256.
    blob = server.blobs.path(sha256)
    blob.chmod(0o644)
    blob.write_bytes(content[:-1] + bytes([content[-1] ^ 1]))

    output = fails(store, "pull", "testuser/style")

    commit = server.commit_id("testuser/style")
    cached = hub_env.cache_dir / "models--testuser--style" / "snapshots" / commit / "adapter_model.safetensors"
    actual = hashlib.sha256(blob.read_bytes()).hexdigest()
    assert output == (
        f"Error: adapter_model.safetensors downloaded from testuser/style@{commit[:12]} has "
        f"{len(content)} bytes with hash {actual}, but the Hub lists {len(content)} bytes with hash "
        f"{sha256}; nothing was stored and the file was removed from the HF cache. Pull again, and "
        "if this repeats, report the repo: its file differs from its listing\n"
    )
    assert not cached.exists()
    assert not (hub_env.cache_dir / "models--testuser--style" / "blobs" / sha256).exists()

    blob.write_bytes(content)
    assert run(store, "pull", "testuser/style").exit_code == 0
