"""Tests of manifests: golden canonical bytes, validation messages and blob recognition."""

from __future__ import annotations

import hashlib
import json

import pytest

from store.errors import ManifestError
from store.manifest import (
    MANIFEST_PREFIX,
    FileEntry,
    Manifest,
    canonical_json,
    parse_manifest_blob,
)

SHA_B = "3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d"
SHA_BRACES = "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
PARENT = "a" * 64

GOLDEN_BYTES = (
    b'{"files":['
    b'{"path":"config.json","sha256":"' + SHA_BRACES.encode() + b'","size":2},'
    b'{"path":"weights/b.safetensors","sha256":"' + SHA_B.encode() + b'","size":1}],'
    b'"kind":"adapter",'
    b'"metadata":{"base_model":"tiny/llama","note":"caf\xc3\xa9","rank":8},'
    b'"parents":["' + PARENT.encode() + b'"],'
    b'"store":"adapterhub-manifest",'
    b'"version":1}'
)


def golden_manifest() -> Manifest:
    # Files and metadata keys are given out of order on purpose: the bytes must sort them.
    return Manifest(
        kind="adapter",
        files=(
            FileEntry("weights/b.safetensors", SHA_B, 1),
            FileEntry("config.json", SHA_BRACES, 2),
        ),
        metadata={"rank": 8, "base_model": "tiny/llama", "note": "café"},
        parents=(PARENT,),
    )


def test_golden_file_digests() -> None:
    assert hashlib.sha256(b"b").hexdigest() == SHA_B
    assert hashlib.sha256(b"{}").hexdigest() == SHA_BRACES


def test_canonical_bytes_are_pinned() -> None:
    manifest = golden_manifest()

    assert manifest.to_bytes() == GOLDEN_BYTES
    assert manifest.digest() == hashlib.sha256(GOLDEN_BYTES).hexdigest()
    assert manifest.digest() == "7f8ecf3b84e6ba36ae0a483e19e5146f75ec84d71903cf7c9109d31045dec018"


def test_canonical_json_format() -> None:
    assert canonical_json({"b": [1, 2.5], "a": "é"}) == b'{"a":"\xc3\xa9","b":[1,2.5]}'


def test_every_manifest_starts_with_prefix() -> None:
    assert GOLDEN_BYTES.startswith(MANIFEST_PREFIX)
    assert Manifest(kind="stack").to_bytes().startswith(MANIFEST_PREFIX)


def test_round_trip_through_bytes() -> None:
    manifest = golden_manifest()

    parsed = Manifest.from_bytes(manifest.to_bytes())

    assert parsed == manifest
    assert parsed.files[0].path == "config.json"
    assert parsed.size == 3


def test_metadata_is_normalized_to_json() -> None:
    manifest = Manifest(kind="adapter", metadata={"modules": ("q", "v"), "alpha": 16.0})

    assert manifest.metadata == {"modules": ["q", "v"], "alpha": 16.0}
    assert manifest.to_bytes() == Manifest.from_bytes(manifest.to_bytes()).to_bytes()


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("../escape", "file path '../escape' contains a '..' segment"),
        ("a/../../b", "file path 'a/../../b' contains a '..' segment"),
        ("/etc/passwd", "file path '/etc/passwd' is absolute"),
        ("C:/weights.bin", "file path 'C:/weights.bin' is absolute"),
        ("a\\b.bin", "file path 'a\\\\b.bin' contains a backslash"),
        ("a//b.bin", "file path 'a//b.bin' contains an empty segment"),
        ("folder/", "file path 'folder/' contains an empty segment"),
        ("./a.bin", "file path './a.bin' contains a '.' segment"),
        ("", "file path '' is empty"),
        ("a\nb", "file path 'a\\nb' contains a control character"),
    ],
)
def test_unsafe_file_path_rejected(path: str, problem: str) -> None:
    with pytest.raises(ManifestError) as caught:
        Manifest(kind="adapter", files=(FileEntry(path, SHA_B, 1),))

    assert str(caught.value) == (
        f"Invalid manifest:\n  - {problem}\n"
        "Fix the listed values and build the manifest again. Use relative paths with '/' "
        "between folders, such as 'adapter/config.json'."
    )


def test_all_problems_reported_at_once() -> None:
    files = (
        FileEntry("../a", SHA_B, 1),
        FileEntry("ok.bin", "XYZ", -1),
        FileEntry("ok.bin", SHA_B, 1),
    )

    with pytest.raises(ManifestError) as caught:
        Manifest(kind="", files=files, metadata={"x": float("nan"), 3: "three"}, parents=("abc",))

    assert str(caught.value) == (
        "Invalid manifest:\n"
        "  - kind '' is not a non-empty string\n"
        "  - file path '../a' contains a '..' segment\n"
        "  - sha256 'XYZ' of 'ok.bin' is not 64 lowercase hex digits\n"
        "  - size -1 of 'ok.bin' is not a non-negative integer\n"
        "  - file path 'ok.bin' appears more than once\n"
        "  - parent 'abc' is not an artifact id of 64 lowercase hex digits\n"
        "  - metadata['x'] is nan, which JSON cannot represent\n"
        "  - metadata has the key 3, but JSON keys must be strings\n"
        "Fix the listed values and build the manifest again. Use relative paths with '/' "
        "between folders, such as 'adapter/config.json'."
    )


def test_unsupported_version_lists_supported() -> None:
    data = GOLDEN_BYTES.replace(b'"version":1', b'"version":7')

    with pytest.raises(ManifestError) as caught:
        Manifest.from_bytes(data, source="blob 1234")

    assert str(caught.value) == (
        "Invalid manifest in blob 1234: unsupported manifest version 7. "
        "Supported versions: 1. Upgrade adapterhub to read newer manifests."
    )


def test_missing_and_unknown_keys_rejected() -> None:
    value = json.loads(GOLDEN_BYTES)
    del value["kind"]
    value["extra"] = True
    del value["files"][0]["size"]

    with pytest.raises(ManifestError) as caught:
        Manifest.from_bytes(canonical_json(value))

    assert str(caught.value) == (
        "Invalid manifest:\n"
        "  - manifest is missing the keys kind\n"
        "  - manifest has unknown keys extra\n"
        "  - files[0] is missing the keys size\n"
        "Fix the listed values and build the manifest again."
    )


def test_from_bytes_rejects_unsafe_path() -> None:
    data = GOLDEN_BYTES.replace(b"weights/b.safetensors", b"../b.safetensors")

    with pytest.raises(ManifestError) as caught:
        Manifest.from_bytes(data, source="blob 1234")

    assert str(caught.value) == (
        "Invalid manifest in blob 1234:\n"
        "  - file path '../b.safetensors' contains a '..' segment\n"
        "Fix the listed values and build the manifest again. Use relative paths with '/' "
        "between folders, such as 'adapter/config.json'."
    )


def test_from_bytes_rejects_invalid_json() -> None:
    with pytest.raises(ManifestError) as caught:
        Manifest.from_bytes(b"\xff{", source="blob 1234")

    assert str(caught.value).startswith("Invalid manifest in blob 1234: not UTF-8 JSON (")
    assert str(caught.value).endswith(
        "). Check that the bytes are a manifest written by the store."
    )


def test_parse_manifest_blob_recognizes_manifests() -> None:
    assert parse_manifest_blob(GOLDEN_BYTES, source="blob x") == golden_manifest()


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x01binary weights",
        b'{"files":["listing.txt"],"owner":"someone"}',
        b'{"files":[',
        b"",
    ],
)
def test_parse_manifest_blob_ignores_other_files(data: bytes) -> None:
    assert parse_manifest_blob(data, source="blob x") is None


def test_parse_manifest_blob_rejects_non_canonical_bytes() -> None:
    value = json.loads(GOLDEN_BYTES)
    data = json.dumps(value, sort_keys=True, ensure_ascii=True, separators=(",", ":")).encode()

    with pytest.raises(ManifestError) as caught:
        parse_manifest_blob(data, source="blob x")

    assert str(caught.value) == (
        "Invalid manifest in blob x: the bytes are not in canonical form (sorted keys, no "
        "spaces, files sorted by path), so the blob digest is not the artifact id. Add the "
        "artifact again to store its canonical manifest."
    )
