"""Repositories of the test Hub: refs, commits, file trees and the LFS decision.

Repo metadata (refs, commits, trees) lives in memory, and file contents in the BlobStore on
disk. Every commit contains the full tree, so reading any revision is a dict lookup. All methods
take the store's lock, and Commit objects are never modified once created, so callers may read
a returned commit's tree without holding the lock.
"""

from __future__ import annotations

import fnmatch
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import PurePosixPath
from typing import Iterable, Mapping, Union

from .blobs import BlobStore
from .errors import HubError, bad_request, conflict, entry_not_found, revision_not_found
from .gitobjects import Commit, FileEntry, utc_now

# LFS patterns of the `.gitattributes` that huggingface.co puts into a new model repo.
DEFAULT_LFS_PATTERNS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack "
    "*.npy *.npz *.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors "
    "saved_model/**/* *.tar.* *.tar *.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents*"
).split()
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in DEFAULT_LFS_PATTERNS
).encode()

# hub-docs recommend LFS above 10 MB. The Hub also stores binary files (a NUL byte in the
# first 512 bytes) with LFS. Its exact rule is not visible from the client.
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
SAMPLE_SIZE = 512

HEADS = "refs/heads/"
TAGS = "refs/tags/"
PULL_REQUESTS = "refs/pr/"
COMMIT_ID = re.compile(r"[0-9a-f]{7,40}")


@dataclass(frozen=True)
class AddFile:
    path: str
    entry: FileEntry


@dataclass(frozen=True)
class DeleteFile:
    path: str


@dataclass(frozen=True)
class DeleteFolder:
    path: str


Operation = Union[AddFile, DeleteFile, DeleteFolder]


@dataclass
class Repo:
    """One repository: its refs (`refs/heads/main` → commit id), every commit, and its LFS objects."""

    repo_type: str
    repo_id: str
    private: bool
    created_at: datetime
    refs: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    lfs_objects: set[str] = field(default_factory=set)
    gated: bool = False
    downloads: int = 0
    next_pull_request: int = 1

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]


def validate_path(path: str) -> str:
    """Return `path` if it is a valid file path inside a repo, or raise a 400 HubError."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise bad_request(f"Invalid path in repo: {path!r}")
    if ".git" in parts:
        raise bad_request(f"Invalid path in repo: {path!r} is inside a .git folder")
    return path


def _pattern_matches(pattern: str, path: str) -> bool:
    # Git matches a pattern without a slash against the file name at any depth, and a pattern
    # with a slash against the whole path.
    # NOTE: fnmatch's `*` also crosses "/", so `a/*` matches `a/b/c`; git would not.
    pattern = pattern.lstrip("/")
    if "/" in pattern:
        return fnmatch.fnmatchcase(path, pattern)
    return fnmatch.fnmatchcase(PurePosixPath(path).name, pattern)


def _lfs_patterns(gitattributes: bytes) -> list[str]:
    patterns = []
    for line in gitattributes.decode(errors="replace").splitlines():
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith("#") and "filter=lfs" in fields[1:]:
            patterns.append(fields[0])
    return patterns


def _ignore_patterns(gitignore: str) -> list[str]:
    lines = (line.strip() for line in gitignore.splitlines())
    return [line for line in lines if line and not line.startswith(("#", "!"))]


class RepoStore:
    """All repos of one server, keyed by (repo type, repo id)."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self.lock = threading.RLock()
        self._repos: dict[tuple[str, str], Repo] = {}

    # Repos

    def create(self, repo_type: str, repo_id: str, private: bool, author: str) -> tuple[Repo, bool]:
        """Create a repo with an initial commit holding the default `.gitattributes`.

        Returns the repo and whether it was created. An existing repo is returned unchanged.
        """
        with self.lock:
            existing = self._repos.get((repo_type, repo_id))
            if existing is not None:
                return existing, False
            repo = Repo(repo_type, repo_id, private, utc_now())
            entry = self.entry_for_bytes(DEFAULT_GITATTRIBUTES, lfs=False)
            initial = Commit.create(None, {".gitattributes": entry}, "initial commit", "", author)
            repo.commits[initial.oid] = initial
            repo.refs[HEADS + "main"] = initial.oid
            self._repos[(repo_type, repo_id)] = repo
            return repo, True

    def get(self, repo_type: str, repo_id: str) -> Repo | None:
        with self.lock:
            return self._repos.get((repo_type, repo_id))

    def delete(self, repo_type: str, repo_id: str) -> bool:
        with self.lock:
            return self._repos.pop((repo_type, repo_id), None) is not None

    def repos_of_type(self, repo_type: str) -> list[Repo]:
        with self.lock:
            return [repo for (kind, _), repo in self._repos.items() if kind == repo_type]

    # Revisions

    def resolve(self, repo: Repo, revision: str) -> Commit:
        """Return the commit a branch, tag, `refs/...` name or (abbreviated) commit id points to."""
        with self.lock:
            ref = self._find_ref(repo, revision)
            if ref is not None:
                return repo.commits[repo.refs[ref]]
            if COMMIT_ID.fullmatch(revision):
                matches = [oid for oid in repo.commits if oid.startswith(revision)]
                if len(matches) == 1:
                    return repo.commits[matches[0]]
            raise revision_not_found(revision)

    def branch_ref(self, repo: Repo, revision: str) -> str:
        """Return the full ref name of a branch or pull request that can take commits."""
        with self.lock:
            ref = self._find_ref(repo, revision)
            if ref is None:
                raise revision_not_found(revision)
            if not ref.startswith((HEADS, PULL_REQUESTS)):
                raise bad_request(f"Cannot commit to {revision}: only branches and pull requests take commits")
            return ref

    def _find_ref(self, repo: Repo, revision: str) -> str | None:
        for candidate in (revision, HEADS + revision, TAGS + revision):
            if candidate.startswith("refs/") and candidate in repo.refs:
                return candidate
        return None

    def create_ref(self, repo: Repo, ref: str, commit_oid: str) -> None:
        with self.lock:
            if ref in repo.refs:
                raise conflict(f"Reference already exists: {ref}")
            repo.refs[ref] = commit_oid

    def delete_ref(self, repo: Repo, ref: str) -> None:
        with self.lock:
            if ref == HEADS + "main":
                raise HubError(403, "Cannot delete the default branch main")
            if repo.refs.pop(ref, None) is None:
                raise revision_not_found(ref.split("/", 2)[-1])

    def open_pull_request(self, repo: Repo, base_oid: str) -> tuple[str, int]:
        """Create `refs/pr/<n>` at `base_oid` and return the ref and its number."""
        with self.lock:
            number = repo.next_pull_request
            repo.next_pull_request += 1
            ref = f"{PULL_REQUESTS}{number}"
            repo.refs[ref] = base_oid
            return ref, number

    # Files and commits

    def entry_for_bytes(self, content: bytes, lfs: bool) -> FileEntry:
        """Store `content` in the blob store and return its tree entry."""
        sha256 = self.blobs.put_bytes(content)
        return FileEntry.for_content(sha256, len(content), lfs, content)

    def upload_mode(self, commit: Commit, path: str, size: int, sample: bytes) -> str:
        """Return "lfs" or "regular", the storage the Hub would choose for a new file at `path`."""
        gitattributes = commit.tree.get(".gitattributes")
        patterns = _lfs_patterns(self.blobs.read(gitattributes.sha256)) if gitattributes else []
        if any(_pattern_matches(pattern, path) for pattern in patterns):
            return "lfs"
        if size > LFS_SIZE_THRESHOLD or b"\0" in sample[:SAMPLE_SIZE]:
            return "lfs"
        return "regular"

    def is_ignored(self, commit: Commit, path: str, gitignore: str | None) -> bool:
        """Return whether `.gitignore` rules (sent with the request, else the repo's) exclude `path`."""
        if gitignore is None:
            existing = commit.tree.get(".gitignore")
            gitignore = self.blobs.read(existing.sha256).decode(errors="replace") if existing else ""
        return any(_pattern_matches(pattern.rstrip("/"), path) for pattern in _ignore_patterns(gitignore))

    def commit(
        self,
        repo: Repo,
        ref: str,
        operations: Iterable[Operation],
        title: str,
        description: str,
        author: str,
        parent_commit: str | None = None,
    ) -> Commit:
        """Apply `operations` on top of `ref`, record the commit and move `ref` to it.

        `parent_commit` (a full or abbreviated id) must match the ref's current commit, otherwise
        the commit is rejected with 412, as huggingface.co does when a branch moved meanwhile.
        """
        with self.lock:
            head_oid = repo.refs[ref]
            if parent_commit is not None and not head_oid.startswith(parent_commit.lower()):
                raise HubError(
                    412,
                    f"Parent commit {parent_commit} is not the head of {ref} (now {head_oid}): "
                    "a commit has happened since. Pull the new head and try again.",
                )

            tree = dict(repo.commits[head_oid].tree)
            for operation in operations:
                self._apply(tree, operation, head_oid)

            commit = Commit.create(head_oid, tree, title, description, author)
            repo.commits[commit.oid] = commit
            repo.refs[ref] = commit.oid
            repo.lfs_objects.update(entry.sha256 for entry in tree.values() if entry.lfs)
            return commit

    @staticmethod
    def _apply(tree: dict[str, FileEntry], operation: Operation, head_oid: str) -> None:
        if isinstance(operation, AddFile):
            folder_prefix = operation.path + "/"
            if any(path.startswith(folder_prefix) for path in tree):
                raise bad_request(f"Cannot add file {operation.path}: a folder has that name")
            for parent in PurePosixPath(operation.path).parents:
                if str(parent) in tree:
                    raise bad_request(f"Cannot add file {operation.path}: {parent} is a file")
            tree[operation.path] = operation.entry
        elif isinstance(operation, DeleteFile):
            if tree.pop(operation.path, None) is None:
                # The client adds a hint about folder deletes when the message has this exact wording.
                message = f"A file with this name doesn't exist: {operation.path}"
                raise entry_not_found(operation.path, head_oid, message)
        else:
            prefix = operation.path.rstrip("/") + "/"
            doomed = [path for path in tree if path.startswith(prefix)]
            if not doomed:
                raise entry_not_found(operation.path, head_oid)
            for path in doomed:
                del tree[path]

    # History

    def history(self, repo: Repo, commit: Commit) -> list[Commit]:
        """Return `commit` and its ancestors, newest first."""
        with self.lock:
            chain = [commit]
            while chain[-1].parent is not None:
                chain.append(repo.commits[chain[-1].parent])
            return chain

    def last_commit_touching(self, repo: Repo, commit: Commit, path: str, is_folder: bool) -> Commit:
        """Return the newest commit, at or before `commit`, that changed `path` (a file or folder)."""

        def snapshot(tree: Mapping[str, FileEntry]) -> object:
            if not is_folder:
                return tree.get(path)
            prefix = path + "/"
            return {name: entry for name, entry in tree.items() if name.startswith(prefix)}

        chain = self.history(repo, commit)
        for current, parent in zip(chain, chain[1:]):
            if snapshot(current.tree) != snapshot(parent.tree):
                return current
        return chain[-1]
