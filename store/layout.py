"""The store home on disk: where it is, its VERSION file and its folders.

docs/store-format.md specifies the whole layout. This module creates a new home and checks
the format version of an existing one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from store.atomic import write_atomic
from store.blobs import BlobStore
from store.errors import StoreNotFoundError, StoreVersionError, store_io_error
from store.locking import StoreLock
from store.refs import RefFiles

logger = logging.getLogger(__name__)

__all__ = ["FORMAT_VERSION", "SUPPORTED_FORMAT_VERSIONS", "home_default", "open_layout"]

FORMAT_VERSION = 1
"""The store format version that new stores get."""

SUPPORTED_FORMAT_VERSIONS = (1,)
"""Store format versions that this code opens."""


def home_default() -> Path:
    """Return the default store home.

    That is ``$ADAPTERHUB_HOME`` if set, else ``$XDG_DATA_HOME/adapterhub``, else
    ``~/.local/share/adapterhub``. Empty variables count as unset.
    """
    if os.environ.get("ADAPTERHUB_HOME"):
        return Path(os.environ["ADAPTERHUB_HOME"]).expanduser()
    if os.environ.get("XDG_DATA_HOME"):
        return Path(os.environ["XDG_DATA_HOME"]).expanduser() / "adapterhub"
    return Path.home() / ".local" / "share" / "adapterhub"


def open_layout(
    home: Path, blobs: BlobStore, ref_files: RefFiles, lock: StoreLock, *, create: bool
) -> None:
    """Check the VERSION file of ``home`` and create missing folders, or a new store.

    Raises StoreNotFoundError when there is no store and ``create`` is False,
    StoreVersionError for an unsupported version and StoreIOError when the disk fails.
    """
    version_file = home / "VERSION"
    try:
        text = version_file.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        if not create:
            raise StoreNotFoundError(
                f"No store at '{home}': '{version_file}' is missing. Open it with "
                "create=True to create a store there, or set ADAPTERHUB_HOME to an existing "
                "store."
            ) from None
        _create_folders(blobs, ref_files)
        # The lock keeps a concurrent gc from deleting the staged VERSION file.
        with lock.shared():
            write_atomic(version_file, f"{FORMAT_VERSION}\n".encode("ascii"), blobs.tmp_dir)
        logger.info("Created store at %s", home)
        return
    except OSError as exc:
        raise store_io_error("read", version_file, exc) from exc

    _check_format_version(text, version_file)
    _create_folders(blobs, ref_files)


def _create_folders(blobs: BlobStore, ref_files: RefFiles) -> None:
    blobs.create_folders()
    try:
        ref_files.root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise store_io_error("create the folder", ref_files.root, exc) from exc


def _check_format_version(text: str, version_file: Path) -> None:
    found = text.strip()
    if found.isdigit() and int(found) in SUPPORTED_FORMAT_VERSIONS:
        return
    supported = ", ".join(str(version) for version in SUPPORTED_FORMAT_VERSIONS)
    raise StoreVersionError(
        f"Unsupported store format version {found!r} in '{version_file}'. This code supports "
        f"store format versions: {supported}. Upgrade adapterhub to open this store, or set "
        "ADAPTERHUB_HOME to another store.",
        found=found,
        supported=SUPPORTED_FORMAT_VERSIONS,
    )
