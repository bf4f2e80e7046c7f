"""Tests of reference parsing and of the ref files under refs/."""

from __future__ import annotations

from pathlib import Path

import pytest

from store.errors import (
    CorruptReferenceError,
    InvalidReferenceError,
    ReferenceConflictError,
)
from store.refs import (
    NAME_SYNTAX,
    TAG_SYNTAX,
    IdRef,
    NamedRef,
    RefEntry,
    RefFiles,
    parse_ref,
    validate_name,
)

ID_A = "a" * 64
ID_B = "b" * 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("task", NamedRef("task", "latest")),
        ("task:v2", NamedRef("task", "v2")),
        ("org/task-lora:1.0-rc_1", NamedRef("org/task-lora", "1.0-rc_1")),
        ("a.b+c_d", NamedRef("a.b+c_d", "latest")),
        ("Org/.hidden", NamedRef("Org/.hidden", "latest")),
        ("sha256:ABCDEF12", IdRef("abcdef12")),
        ("SHA256:0123456789abcdef", IdRef("0123456789abcdef")),
        ("C" * 64, IdRef("c" * 64)),
        (f"sha256:{ID_A}", IdRef(ID_A)),
    ],
)
def test_parse_valid_reference(text: str, expected: object) -> None:
    assert parse_ref(text) == expected


def test_reference_string_forms() -> None:
    assert str(parse_ref("task")) == "task:latest"
    assert str(parse_ref("sha256:abcdef12")) == "sha256:abcdef12"
    assert str(parse_ref(ID_A)) == ID_A
    assert parse_ref(ID_A).is_full_id


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "",
            "Invalid reference '': expected 'name[:tag]', 'sha256:<hex prefix>' or a 64-digit "
            "artifact id.",
        ),
        (
            "task:",
            "Invalid reference 'task:': the tag after ':' is empty. Write 'name' for the "
            "'latest' tag, or 'name:tag'.",
        ),
        ("bad name", f"Invalid reference name 'bad name': it contains ' '. {NAME_SYNTAX}"),
        ("/abs/task", f"Invalid reference name '/abs/task': it starts with '/'. {NAME_SYNTAX}"),
        (
            "org/../task",
            "Invalid reference name 'org/../task': it has an empty, '.' or '..' segment. "
            + NAME_SYNTAX,
        ),
        (
            "org//task",
            "Invalid reference name 'org//task': it has an empty, '.' or '..' segment. "
            + NAME_SYNTAX,
        ),
        (
            "org/",
            f"Invalid reference name 'org/': it has an empty, '.' or '..' segment. {NAME_SYNTAX}",
        ),
        (
            "n" * 201,
            f"Invalid reference name '{'n' * 201}': it has 201 characters. {NAME_SYNTAX}",
        ),
        ("task:v 1", f"Invalid tag 'v 1'. {TAG_SYNTAX}"),
        ("task:v1:extra", f"Invalid tag 'v1:extra'. {TAG_SYNTAX}"),
        ("task:-v1", f"Invalid tag '-v1'. {TAG_SYNTAX}"),
        (f"task:{'t' * 129}", f"Invalid tag '{'t' * 129}'. {TAG_SYNTAX}"),
        (
            "sha256:abc",
            "Invalid reference 'sha256:abc': the id prefix has 3 hex digits, but at least 8 "
            "are needed. Use more digits of the artifact id.",
        ),
        (
            "sha256:xyz12345",
            "Invalid reference 'sha256:xyz12345': the id prefix 'xyz12345' must contain only "
            "hex digits (0-9, a-f). Copy the prefix from the artifact id.",
        ),
        (
            f"sha256:{ID_A}0",
            f"Invalid reference 'sha256:{ID_A}0': the id prefix has 65 hex digits, but an "
            "artifact id has 64. Copy the artifact id again.",
        ),
    ],
)
def test_parse_invalid_reference(text: str, message: str) -> None:
    with pytest.raises(InvalidReferenceError) as caught:
        parse_ref(text)

    assert str(caught.value) == message


def test_syntax_descriptions() -> None:
    assert NAME_SYNTAX == (
        "A name starts with a letter or digit, contains only letters, digits and the "
        "characters . _ + / -, has no empty, '.' or '..' segment between slashes, and has at "
        "most 200 characters, such as 'org/task-lora'."
    )
    assert TAG_SYNTAX == (
        "A tag starts with a letter or digit, contains only letters, digits and the "
        "characters . _ -, and has at most 128 characters, such as 'latest' or 'v2'."
    )


def test_names_that_read_as_ids_are_rejected() -> None:
    with pytest.raises(InvalidReferenceError) as caught:
        validate_name("d" * 64)
    assert str(caught.value) == (
        f"Invalid reference name '{'d' * 64}': 64 hex digits would be read as an artifact id. "
        f"{NAME_SYNTAX}"
    )

    with pytest.raises(InvalidReferenceError) as caught:
        validate_name("sha256")
    assert str(caught.value) == (
        "Invalid reference name 'sha256': 'sha256' is reserved for id prefixes such as "
        f"'sha256:1a2b3c4d'. {NAME_SYNTAX}"
    )


@pytest.fixture
def ref_files(tmp_path: Path) -> RefFiles:
    (tmp_path / "refs").mkdir()
    (tmp_path / "tmp").mkdir()
    return RefFiles(tmp_path / "refs", tmp_path / "tmp")


def test_write_and_read_ref_file(ref_files: RefFiles) -> None:
    ref_files.write("org/task", "v1", ID_A)

    path = ref_files.root / "org" / "task" / "v1"
    assert path.read_text() == ID_A + "\n"
    assert ref_files.read("org/task", "v1") == ID_A
    assert ref_files.read("org/task", "v2") is None
    assert ref_files.read("other", "latest") is None


def test_write_replaces_target(ref_files: RefFiles) -> None:
    ref_files.write("task", "latest", ID_A)
    ref_files.write("task", "latest", ID_B)

    assert ref_files.read("task", "latest") == ID_B
    assert list(ref_files.tmp_dir.iterdir()) == []


def test_delete_removes_empty_folders(ref_files: RefFiles) -> None:
    ref_files.write("org/team/task", "v1", ID_A)
    ref_files.write("org/other", "v1", ID_B)

    assert ref_files.delete("org/team/task", "v1")

    assert not (ref_files.root / "org" / "team").exists()
    assert (ref_files.root / "org" / "other" / "v1").is_file()
    assert not ref_files.delete("org/team/task", "v1")


def test_entries_sorted_by_name_and_tag(ref_files: RefFiles) -> None:
    ref_files.write("zeta", "latest", ID_A)
    ref_files.write("alpha/beta", "v2", ID_B)
    ref_files.write("alpha/beta", "v1", ID_A)

    assert ref_files.entries() == [
        RefEntry("alpha/beta", "v1", ID_A),
        RefEntry("alpha/beta", "v2", ID_B),
        RefEntry("zeta", "latest", ID_A),
    ]


def test_name_through_ref_file_conflicts(ref_files: RefFiles) -> None:
    ref_files.write("task", "latest", ID_A)

    with pytest.raises(ReferenceConflictError) as caught:
        ref_files.write("task/latest", "v1", ID_B)

    assert str(caught.value) == (
        "Cannot store reference 'task/latest:v1': the ref file of 'task:latest' is at "
        f"'{ref_files.root / 'task' / 'latest'}', where this name needs a folder. "
        "Choose another name."
    )


def test_tag_on_folder_conflicts(ref_files: RefFiles) -> None:
    ref_files.write("task/latest", "v1", ID_A)

    with pytest.raises(ReferenceConflictError) as caught:
        ref_files.write("task", "latest", ID_B)

    assert str(caught.value) == (
        "Cannot store reference 'task:latest': references named 'task/latest/...' use "
        f"'{ref_files.root / 'task' / 'latest'}' as a folder. Choose another tag or name."
    )


def test_corrupt_ref_file(ref_files: RefFiles) -> None:
    path = ref_files.root / "task" / "latest"
    path.parent.mkdir()
    path.write_text("not an id\n")

    with pytest.raises(CorruptReferenceError) as caught:
        ref_files.read("task", "latest")

    assert str(caught.value) == (
        f"Ref file '{path}' contains 'not an id\\n', expected a 64-digit lowercase hex "
        "artifact id and a newline. Set the reference again or delete the file."
    )


def test_scan_reports_invalid_files(ref_files: RefFiles) -> None:
    ref_files.write("task", "latest", ID_A)
    backup = ref_files.root / "task" / "latest~"
    backup.write_text(ID_B + "\n")
    corrupt = ref_files.root / "task" / "v2"
    corrupt.write_text("")

    entries, problems = ref_files.scan()

    assert entries == [RefEntry("task", "latest", ID_A)]
    assert problems == [
        f"File '{backup}' is not a ref file: 'task/latest~' is not a valid name/tag path. "
        "Move it out of the refs folder.",
        f"Ref file '{corrupt}' contains '', expected a 64-digit lowercase hex artifact id and "
        "a newline. Set the reference again or delete the file.",
    ]


def test_symlink_out_of_refs_rejected(ref_files: RefFiles, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (ref_files.root / "evil").symlink_to(outside)

    with pytest.raises(InvalidReferenceError) as caught:
        ref_files.write("evil", "latest", ID_A)

    assert str(caught.value) == (
        f"Reference 'evil:latest' resolves to '{outside / 'latest'}', outside "
        f"'{ref_files.root}'. Remove the symlink under '{ref_files.root}'."
    )
    assert not (outside / "latest").exists()
