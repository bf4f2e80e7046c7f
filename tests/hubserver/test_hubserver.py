"""Tests of the loopback Hub server, driven by the real huggingface_hub client."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx2
import numpy as np
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    HfFileSystem,
    constants,
    hf_hub_download,
    hf_hub_url,
    list_models,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.numpy import save as save_safetensors

from .fixtures import HubEnvironment
from .gitobjects import git_blob_oid
from .server import READ_TOKEN, HubServer

# huggingface_hub 2.4 uploads LFS objects with `data=<bytes>` (lfs.py › _upload_single_part),
# which httpx2 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

REPO_ID = "testuser/tiny-adapter"
README = """---
library_name: peft
base_model: testorg/tiny-base
pipeline_tag: text-generation
tags:
- lora
---
# tiny-adapter

A LoRA adapter for tests.
"""


def _adapter_files() -> dict[str, bytes]:
    tensors = {
        "base_model.layers.0.lora_A.weight": np.arange(16, dtype=np.float32).reshape(4, 4),
        "base_model.layers.0.lora_B.weight": np.ones((8, 4), dtype=np.float32),
    }
    config = {"peft_type": "LORA", "r": 4, "base_model_name_or_path": "testorg/tiny-base"}
    return {
        "adapter_model.safetensors": save_safetensors(tensors, metadata={"format": "pt"}),
        "adapter_config.json": json.dumps(config, indent=2, sort_keys=True).encode(),
        "README.md": README.encode(),
    }


def _write_folder(folder: Path, files: dict[str, bytes]) -> Path:
    for path, content in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(content)
    return folder


@pytest.fixture
def adapter(hub_env: HubEnvironment, tmp_path: Path) -> dict[str, bytes]:
    """Create REPO_ID and upload the adapter folder to main; return the uploaded files."""
    files = _adapter_files()
    api = HfApi()
    api.create_repo(REPO_ID)
    api.upload_folder(folder_path=_write_folder(tmp_path / "adapter", files), repo_id=REPO_ID)
    return files


def _status(error: HfHubHTTPError) -> int:
    return error.response.status_code


def test_hub_env_points_client_at_server(hub_env: HubEnvironment) -> None:
    assert constants.ENDPOINT == hub_env.endpoint
    assert hub_env.endpoint.startswith("http://127.0.0.1:")
    assert hf_hub_url(REPO_ID, "README.md").startswith(hub_env.endpoint + "/")
    assert HfApi().whoami()["name"] == "testuser"
    assert ("GET", "/api/whoami-v2") in hub_env.server.requests


def test_create_repo_exist_ok(hub_env: HubEnvironment) -> None:
    api = HfApi()
    url = api.create_repo(REPO_ID)
    assert url.repo_id == REPO_ID
    assert url == f"{hub_env.endpoint}/{REPO_ID}"

    with pytest.raises(HfHubHTTPError) as raised:
        api.create_repo(REPO_ID)
    assert _status(raised.value) == 409
    assert api.create_repo(REPO_ID, exist_ok=True) == url
    # A new repo starts with the Hub's default .gitattributes.
    assert hub_env.server.file_paths(REPO_ID) == [".gitattributes"]


def test_upload_folder_uses_lfs_for_safetensors(hub_env: HubEnvironment, adapter: dict[str, bytes]) -> None:
    server = hub_env.server
    assert server.uploads == 3
    assert ("POST", f"/{REPO_ID}.git/info/lfs/objects/batch") in server.requests
    assert sum(1 for method, _ in server.requests if method == "PUT") == 1
    assert server.file_bytes(REPO_ID, "adapter_model.safetensors") == adapter["adapter_model.safetensors"]


def test_model_info_files_metadata(hub_env: HubEnvironment, adapter: dict[str, bytes]) -> None:
    info = HfApi().model_info(REPO_ID, files_metadata=True)
    siblings = {sibling.rfilename: sibling for sibling in info.siblings}

    weights = siblings["adapter_model.safetensors"]
    assert weights.lfs is not None
    assert weights.lfs.sha256 == hashlib.sha256(adapter["adapter_model.safetensors"]).hexdigest()
    assert weights.lfs.size == len(adapter["adapter_model.safetensors"])
    assert weights.size == len(adapter["adapter_model.safetensors"])
    readme = siblings["README.md"]
    assert readme.lfs is None
    assert readme.blob_id == git_blob_oid(adapter["README.md"])

    assert info.sha == hub_env.server.commit_id(REPO_ID)
    assert info.library_name == "peft"
    assert info.pipeline_tag == "text-generation"
    assert info.card_data.base_model == "testorg/tiny-base"
    assert {"peft", "lora", "safetensors", "base_model:testorg/tiny-base"} <= set(info.tags)
    assert info.safetensors.parameters == {"F32": 48}


def test_list_repo_tree(hub_env: HubEnvironment, adapter: dict[str, bytes]) -> None:
    api = HfApi()
    api.upload_file(path_or_fileobj=b"notes", path_in_repo="docs/notes.txt", repo_id=REPO_ID)

    top = {entry.path: entry for entry in api.list_repo_tree(REPO_ID)}
    assert sorted(top) == [
        ".gitattributes",
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "docs",
    ]
    assert type(top["docs"]).__name__ == "RepoFolder"

    recursive = {entry.path: entry for entry in api.list_repo_tree(REPO_ID, recursive=True, expand=True)}
    assert "docs/notes.txt" in recursive
    weights = recursive["adapter_model.safetensors"]
    assert weights.lfs.sha256 == hashlib.sha256(adapter["adapter_model.safetensors"]).hexdigest()
    assert weights.last_commit.title == "Upload folder using huggingface_hub"
    assert recursive["docs/notes.txt"].last_commit.oid == hub_env.server.commit_id(REPO_ID)

    sub = [entry.path for entry in api.list_repo_tree(REPO_ID, path_in_repo="docs")]
    assert sub == ["docs/notes.txt"]


def test_list_repo_tree_follows_pages(hub_env: HubEnvironment, adapter: dict[str, bytes]) -> None:
    hub_env.server.page_size = 2
    paths = [entry.path for entry in HfApi().list_repo_tree(REPO_ID)]
    assert len(paths) == 4
    tree_requests = [path for method, path in hub_env.server.requests if "/tree/" in path]
    assert len(tree_requests) == 2


def test_downloads_give_identical_bytes(
    hub_env: HubEnvironment, adapter: dict[str, bytes], tmp_path: Path
) -> None:
    server = hub_env.server
    server.reset_counters()
    for path, content in adapter.items():
        downloaded = hf_hub_download(REPO_ID, path, cache_dir=tmp_path / "single")
        assert Path(downloaded).read_bytes() == content

    snapshot = Path(snapshot_download(REPO_ID, cache_dir=tmp_path / "snapshot"))
    for path, content in adapter.items():
        assert (snapshot / path).read_bytes() == content

    gitattributes_size = len(server.file_bytes(REPO_ID, ".gitattributes"))
    assert server.bytes_served == 2 * sum(map(len, adapter.values())) + gitattributes_size
    assert server.downloads[(REPO_ID, "adapter_model.safetensors")] == 2


def test_cache_blob_names_follow_hub_etags(hub_env: HubEnvironment, adapter: dict[str, bytes]) -> None:
    hf_hub_download(REPO_ID, "adapter_model.safetensors")
    hf_hub_download(REPO_ID, "README.md")
    blobs = hub_env.cache_dir / "models--testuser--tiny-adapter" / "blobs"
    assert (blobs / hashlib.sha256(adapter["adapter_model.safetensors"]).hexdigest()).is_file()
    assert (blobs / git_blob_oid(adapter["README.md"])).is_file()


def test_cached_download_serves_no_bytes(hub_env: HubEnvironment, adapter: dict[str, bytes]) -> None:
    server = hub_env.server
    first = hf_hub_download(REPO_ID, "adapter_model.safetensors")
    server.reset_counters()

    second = hf_hub_download(REPO_ID, "adapter_model.safetensors")
    assert second == first
    assert server.bytes_served == 0
    assert [method for method, _ in server.requests] == ["HEAD"]


def test_branch_upload_and_commit_revision(hub_env: HubEnvironment, adapter: dict[str, bytes]) -> None:
    api = HfApi()
    first_commit = api.model_info(REPO_ID).sha
    api.create_branch(REPO_ID, branch="feature/v2")
    api.upload_file(
        path_or_fileobj=b'{"r": 8}', path_in_repo="adapter_config.json", repo_id=REPO_ID, revision="feature/v2"
    )

    on_branch = hf_hub_download(REPO_ID, "adapter_config.json", revision="feature/v2")
    on_main = hf_hub_download(REPO_ID, "adapter_config.json")
    at_commit = hf_hub_download(REPO_ID, "adapter_config.json", revision=first_commit)
    assert Path(on_branch).read_bytes() == b'{"r": 8}'
    assert Path(on_main).read_bytes() == adapter["adapter_config.json"]
    assert Path(at_commit).read_bytes() == adapter["adapter_config.json"]

    refs = api.list_repo_refs(REPO_ID)
    assert sorted(branch.name for branch in refs.branches) == ["feature/v2", "main"]
    branch_head = hub_env.server.commit_id(REPO_ID, "feature/v2")
    assert api.model_info(REPO_ID, revision="feature/v2").sha == branch_head


def test_tag_and_commit_history(hub_env: HubEnvironment, adapter: dict[str, bytes]) -> None:
    api = HfApi()
    api.create_tag(REPO_ID, tag="v1")
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="adapter_config.json", repo_id=REPO_ID)

    at_tag = hf_hub_download(REPO_ID, "adapter_config.json", revision="v1")
    assert Path(at_tag).read_bytes() == adapter["adapter_config.json"]
    hub_env.server.page_size = 1
    commits = api.list_repo_commits(REPO_ID, formatted=True)
    assert [commit.title for commit in commits] == [
        "Upload adapter_config.json with huggingface_hub",
        "Upload folder using huggingface_hub",
        "initial commit",
    ]
    assert commits[0].formatted_title == commits[0].title


def test_paths_info(hub_env: HubEnvironment, adapter: dict[str, bytes]) -> None:
    paths = ["README.md", "absent.txt", "adapter_model.safetensors"]
    entries = HfApi().get_paths_info(REPO_ID, paths, expand=True)
    by_path = {entry.path: entry for entry in entries}
    assert sorted(by_path) == ["README.md", "adapter_model.safetensors"]
    assert by_path["README.md"].blob_id == git_blob_oid(adapter["README.md"])
    assert by_path["adapter_model.safetensors"].lfs.pointer_size > 0
    assert by_path["README.md"].last_commit.oid == hub_env.server.commit_id(REPO_ID)


def test_delete_file_and_folder(hub_env: HubEnvironment, adapter: dict[str, bytes]) -> None:
    api = HfApi()
    api.upload_file(path_or_fileobj=b"a", path_in_repo="logs/a.txt", repo_id=REPO_ID)
    api.create_commit(
        REPO_ID,
        [CommitOperationDelete("README.md"), CommitOperationDelete("logs/")],
        commit_message="Remove card and logs",
    )
    remaining = hub_env.server.file_paths(REPO_ID)
    assert remaining == [".gitattributes", "adapter_config.json", "adapter_model.safetensors"]


def test_invalid_card_metadata_rejected(hub_env: HubEnvironment, adapter: dict[str, bytes]) -> None:
    broken = b"---\nlibrary_name: [peft\n---\n# card\n"
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        HfApi().upload_file(path_or_fileobj=broken, path_in_repo="README.md", repo_id=REPO_ID)
    assert hub_env.server.file_bytes(REPO_ID, "README.md") == adapter["README.md"]


def test_private_repo_hidden_from_anonymous(hub_env: HubEnvironment) -> None:
    HfApi().create_repo("testuser/secret", private=True)
    assert HfApi().model_info("testuser/secret").private is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).model_info("testuser/secret")
    assert [info.id for info in HfApi(token=False).list_models(search="secret")] == []


def test_hf_file_system_reads_files(hub_env: HubEnvironment, adapter: dict[str, bytes]) -> None:
    fs = HfFileSystem()
    expected = sorted(f"{REPO_ID}/{path}" for path in [".gitattributes", *adapter])
    assert sorted(fs.ls(REPO_ID, detail=False)) == expected
    assert fs.read_bytes(f"{REPO_ID}/adapter_config.json") == adapter["adapter_config.json"]


def test_second_snapshot_sends_one_request(hub_env: HubEnvironment, adapter: dict[str, bytes]) -> None:
    first = snapshot_download(REPO_ID)
    hub_env.server.reset_counters()
    assert snapshot_download(REPO_ID) == first
    assert hub_env.server.requests == [("GET", f"/api/models/{REPO_ID}/revision/main")]


def test_stale_parent_commit_rejected(hub_env: HubEnvironment, adapter: dict[str, bytes]) -> None:
    api = HfApi()
    parent = api.model_info(REPO_ID).sha
    hub_env.server.move_branch(REPO_ID, "main", {"adapter_config.json": b'{"r": 16}'})

    operation = CommitOperationAdd(path_in_repo="notes.txt", path_or_fileobj=b"mine")
    with pytest.raises(HfHubHTTPError) as raised:
        api.create_commit(REPO_ID, [operation], commit_message="Add notes", parent_commit=parent)
    assert _status(raised.value) == 412
    assert "notes.txt" not in hub_env.server.file_paths(REPO_ID)


def test_current_parent_commit_accepted(hub_env: HubEnvironment, adapter: dict[str, bytes]) -> None:
    api = HfApi()
    parent = api.model_info(REPO_ID).sha
    operation = CommitOperationAdd(path_in_repo="notes.txt", path_or_fileobj=b"mine")
    info = api.create_commit(REPO_ID, [operation], commit_message="Add notes", parent_commit=parent)
    assert info.oid == hub_env.server.commit_id(REPO_ID)
    assert [commit.title for commit in api.list_repo_commits(REPO_ID)] == [
        "Add notes",
        "Upload folder using huggingface_hub",
        "initial commit",
    ]


def test_create_pr_opens_pull_request_ref(hub_env: HubEnvironment, adapter: dict[str, bytes]) -> None:
    api = HfApi()
    operation = CommitOperationAdd(path_in_repo="adapter_config.json", path_or_fileobj=b"{}")
    info = api.create_commit(REPO_ID, [operation], commit_message="Propose config", create_pr=True)
    assert info.pr_num == 1
    assert info.pr_revision == "refs/pr/1"

    refs = api.list_repo_refs(REPO_ID, include_pull_requests=True)
    assert [ref.ref for ref in refs.pull_requests] == ["refs/pr/1"]
    assert Path(hf_hub_download(REPO_ID, "adapter_config.json", revision="refs/pr/1")).read_bytes() == b"{}"
    assert hub_env.server.file_bytes(REPO_ID, "adapter_config.json") == adapter["adapter_config.json"]


def test_unchanged_upload_sends_no_commit(
    hub_env: HubEnvironment, adapter: dict[str, bytes], tmp_path: Path
) -> None:
    server = hub_env.server
    head = server.commit_id(REPO_ID)
    server.reset_counters()
    HfApi().upload_folder(folder_path=_write_folder(tmp_path / "again", adapter), repo_id=REPO_ID)
    assert server.commit_id(REPO_ID) == head
    assert server.uploads == 0
    assert not [path for method, path in server.requests if "/commit/" in path]


def test_gated_repo_raises(hub_env: HubEnvironment, adapter: dict[str, bytes]) -> None:
    hub_env.server.set_gated(REPO_ID)
    with pytest.raises(GatedRepoError):
        hf_hub_download(REPO_ID, "adapter_config.json")
    assert HfApi().model_info(REPO_ID).gated == "manual"


def test_missing_repo_raises(hub_env: HubEnvironment) -> None:
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("testuser/absent")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("testuser/absent", "README.md")


def test_missing_revision_raises(hub_env: HubEnvironment, adapter: dict[str, bytes]) -> None:
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO_ID, "README.md", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        HfApi().model_info(REPO_ID, revision="no-such-branch")


def test_missing_file_raises(hub_env: HubEnvironment, adapter: dict[str, bytes]) -> None:
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO_ID, "missing.bin")
    with pytest.raises(EntryNotFoundError):
        HfApi().delete_file("missing.bin", REPO_ID)
    assert not HfApi().file_exists(REPO_ID, "missing.bin")


def test_read_token_cannot_write(hub_env: HubEnvironment, adapter: dict[str, bytes]) -> None:
    api = HfApi(token=READ_TOKEN)
    assert api.whoami()["auth"]["accessToken"]["role"] == "read"
    with pytest.raises(HfHubHTTPError) as raised:
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO_ID)
    assert _status(raised.value) == 403
    assert "read-only" in str(raised.value)
    with pytest.raises(HfHubHTTPError) as raised:
        api.create_repo("testuser/other")
    assert _status(raised.value) == 403
    assert Path(api.hf_hub_download(REPO_ID, "README.md")).read_bytes() == README.encode()


def test_write_without_token_rejected(hub_env: HubEnvironment, adapter: dict[str, bytes]) -> None:
    api = HfApi(token=False)
    with pytest.raises(RepositoryNotFoundError) as raised:
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO_ID)
    assert _status(raised.value) == 401
    with pytest.raises(HfHubHTTPError) as raised:
        api.create_repo("testuser/other")
    assert _status(raised.value) == 401


def test_invalid_token_rejected(hub_env: HubEnvironment) -> None:
    with pytest.raises(HfHubHTTPError) as raised:
        HfApi(token="hf_unknown").whoami()
    assert _status(raised.value) == 401


def test_list_models_search(hub_env: HubEnvironment, adapter: dict[str, bytes]) -> None:
    api = HfApi()
    api.create_repo("testorg/unrelated-model")
    found = list(api.list_models(filter="peft", search="tiny"))
    assert [info.id for info in found] == [REPO_ID]
    assert found[0].library_name == "peft"
    assert "lora" in found[0].tags
    # The module-level function uses the patched default HfApi.
    assert [info.id for info in list_models(author="testorg")] == ["testorg/unrelated-model"]
    assert list(api.list_models(search="absent")) == []


def test_list_models_follows_pages(hub_env: HubEnvironment) -> None:
    api = HfApi()
    for name in ("a", "b", "c"):
        api.create_repo(f"testuser/{name}")
    hub_env.server.page_size = 2
    listed = [info.id for info in api.list_models(author="testuser")]
    assert listed == ["testuser/a", "testuser/b", "testuser/c"]
    assert [info.id for info in api.list_models(author="testuser", limit=1)] == ["testuser/a"]


def test_range_request_reads_safetensors_header(hub_env: HubEnvironment, adapter: dict[str, bytes]) -> None:
    metadata = HfApi().parse_safetensors_file_metadata(REPO_ID, "adapter_model.safetensors")
    assert metadata.metadata == {"format": "pt"}
    assert metadata.parameter_count == {"F32": 48}


def test_range_returns_partial_content(hub_env: HubEnvironment, adapter: dict[str, bytes]) -> None:
    url = f"{hub_env.endpoint}/{REPO_ID}/resolve/main/adapter_config.json"
    content = adapter["adapter_config.json"]
    response = httpx2.get(url, headers={"Range": "bytes=2-5"})
    assert response.status_code == 206
    assert response.content == content[2:6]
    assert response.headers["Content-Range"] == f"bytes 2-5/{len(content)}"
    assert httpx2.get(url, headers={"Range": f"bytes={len(content)}-"}).status_code == 416


def test_truncated_download_restarts(hub_env: HubEnvironment, adapter: dict[str, bytes]) -> None:
    server = hub_env.server
    size = len(adapter["adapter_model.safetensors"])
    server.reset_counters()
    server.truncate_next_download("adapter_model.safetensors")

    downloaded = hf_hub_download(REPO_ID, "adapter_model.safetensors")
    assert Path(downloaded).read_bytes() == adapter["adapter_model.safetensors"]
    assert server.downloads[(REPO_ID, "adapter_model.safetensors")] == 2
    # The client reads 10 MiB chunks, so the half file it got is dropped and the retry starts over.
    assert server.bytes_served == size // 2 + size


def test_truncated_download_resumes_with_range(hub_env: HubEnvironment) -> None:
    chunk = 10 * 1024 * 1024  # huggingface_hub's DOWNLOAD_CHUNK_SIZE
    content = np.random.default_rng(0).bytes(chunk + 1024 * 1024)
    server = hub_env.server
    server.create_repo("testuser/big", {"weights.bin": content})
    server.truncate_next_download("weights.bin", cut_at=chunk + 512 * 1024)

    downloaded = hf_hub_download("testuser/big", "weights.bin")
    assert Path(downloaded).read_bytes() == content
    assert server.downloads[("testuser/big", "weights.bin")] == 2
    assert server.bytes_served == (chunk + 512 * 1024) + (len(content) - chunk)


def test_truncated_download_leaves_no_file(hub_env: HubEnvironment, adapter: dict[str, bytes]) -> None:
    # One cut response plus the client's 5 retries, none of which writes any bytes.
    hub_env.server.truncate_next_download("adapter_model.safetensors", times=6)
    with pytest.raises(httpx2.RemoteProtocolError):
        hf_hub_download(REPO_ID, "adapter_model.safetensors")

    repo_cache = hub_env.cache_dir / "models--testuser--tiny-adapter"
    assert list((repo_cache / "blobs").iterdir()) == []
    assert not list((repo_cache / "snapshots").rglob("adapter_model.safetensors"))


def test_server_context_manager_stops(tmp_path: Path) -> None:
    with HubServer(tmp_path) as server:
        endpoint = server.endpoint
        assert httpx2.get(f"{endpoint}/api/models").json() == []
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(f"{endpoint}/api/models")
