"""Git object ids for the test Hub: blob, LFS pointer, tree and commit hashing.

The ids follow git's object format, so a file's `blobId`, a folder's `oid` and a commit id look and
behave like the ones huggingface.co returns: 40 lowercase hex digits, and the same content always
gives the same blob id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Mapping

LFS_POINTER_TEMPLATE = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"


def git_blob_oid(content: bytes) -> str:
    """Return git's blob id of `content`: sha1 of `blob <len>\\0` followed by the content."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """Return the Git LFS pointer file that git stores in place of an LFS file's content."""
    return LFS_POINTER_TEMPLATE.format(oid=sha256, size=size).encode()


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit's tree.

    `sha256` names the content in the blob store. `git_oid` is the id git would give the file:
    the blob id of the content for a regular file, the blob id of the pointer for an LFS file.
    """

    sha256: str
    size: int
    lfs: bool
    git_oid: str

    @classmethod
    def for_content(cls, sha256: str, size: int, lfs: bool, content: bytes | None) -> "FileEntry":
        """Build the entry for a file. Only regular files need `content`, to compute their blob id."""
        if lfs:
            return cls(sha256, size, True, git_blob_oid(lfs_pointer(sha256, size)))
        if content is None:
            raise ValueError("a regular file entry needs its content to compute the git blob id")
        return cls(sha256, size, False, git_blob_oid(content))

    @property
    def pointer_size(self) -> int:
        """Length in bytes of the LFS pointer file."""
        return len(lfs_pointer(self.sha256, self.size))


def _tree_oid(entries: Mapping[str, FileEntry], prefix: str) -> str:
    """Compute git's tree id of the folder `prefix` ('' for the root) in a flat path → entry map."""
    children: dict[str, tuple[bytes, str]] = {}
    for path, entry in entries.items():
        if not path.startswith(prefix):
            continue
        name, _, rest = path[len(prefix) :].partition("/")
        if rest:
            children.setdefault(name + "/", (b"40000", prefix + name + "/"))
        else:
            children[name] = (b"100644", entry.git_oid)

    # Git sorts tree entries by name, comparing a folder's name as if it ended with "/".
    body = b""
    for sort_key in sorted(children):
        mode, ref = children[sort_key]
        name = sort_key.rstrip("/")
        oid = _tree_oid(entries, ref) if mode == b"40000" else ref
        body += mode + b" " + name.encode() + b"\0" + bytes.fromhex(oid)
    return hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()


def tree_oid(entries: Mapping[str, FileEntry], folder: str = "") -> str:
    """Return git's tree id of `folder` (a path without trailing slash, '' for the root)."""
    return _tree_oid(entries, folder + "/" if folder else "")


def utc_now() -> datetime:
    """Return the current time in UTC, truncated to milliseconds as the Hub reports it."""
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def format_hub_date(moment: datetime) -> str:
    """Format `moment` as the Hub does: `2024-05-01T12:00:00.000Z`. The client accepts only a trailing Z."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class Commit:
    """A commit: the full file tree at that point, its parent and its message.

    `tree` maps every file path to its entry; folders are implicit, as in the Hub's API.
    """

    oid: str
    parent: str | None
    tree: Mapping[str, FileEntry]
    title: str
    description: str
    author: str
    created_at: datetime = field(compare=False)

    @classmethod
    def create(
        cls,
        parent: str | None,
        tree: Mapping[str, FileEntry],
        title: str,
        description: str,
        author: str,
    ) -> "Commit":
        """Build a commit whose id is git's commit id for the same tree, parent, author and message."""
        created_at = utc_now()
        timestamp = int(created_at.timestamp())
        lines = [f"tree {tree_oid(tree)}"]
        if parent is not None:
            lines.append(f"parent {parent}")
        signature = f"{author} <{author}@users.noreply.huggingface.co> {timestamp} +0000"
        lines += [f"author {signature}", f"committer {signature}", ""]
        message = title + (f"\n\n{description}" if description else "")
        body = ("\n".join(lines) + "\n" + message).encode()
        oid = hashlib.sha1(b"commit %d\0" % len(body) + body).hexdigest()
        return cls(oid, parent, dict(tree), title, description, author, created_at)
