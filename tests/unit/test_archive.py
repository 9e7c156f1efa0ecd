"""Safe zip expansion: names, links, sizes and bombs."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from core.errors import ArchiveBombError, ArchiveError, ArchivePathTraversalError, ArchiveTooLargeError
from ingest.archive import ArchiveLimits, expand_uploads, expand_zip, is_zip, normalized_member_name
from tests.fixtures.make_docs import write_zip, write_zip_bomb, write_zip_with_symlink

pytestmark = pytest.mark.unit

LIMITS = ArchiveLimits(max_members=50, max_member_bytes=10_000_000, max_total_bytes=20_000_000, max_ratio=200.0)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "expanded"


def test_members_come_out_with_relative_names_and_bytes(tmp_path: Path, dest: Path) -> None:
    archive = write_zip(tmp_path, "reports.zip", {"2023/q1.txt": b"first quarter", "notes.md": b"# Notes"})
    plain = tmp_path / "memo.txt"
    plain.write_text("memo")

    files = expand_uploads([("reports.zip", archive), ("memo.txt", plain)], dest, limits=LIMITS)

    assert [file.name for file in files] == ["2023/q1.txt", "notes.md", "memo.txt"]
    assert files[0].path.read_bytes() == b"first quarter"
    assert files[0].path.parent == dest and files[0].path.suffix == ".txt"
    assert files[2].path == plain


def test_macos_folders_dotfiles_and_directories_are_skipped(tmp_path: Path, dest: Path) -> None:
    archive = write_zip(
        tmp_path,
        "mac.zip",
        {
            "__MACOSX/._report.txt": b"fork",
            ".DS_Store": b"x",
            "docs/.hidden/a.txt": b"x",
            "docs/": b"",
            "docs/report.txt": b"report",
        },
    )

    files = expand_uploads([("mac.zip", archive)], dest, limits=LIMITS)

    assert [file.name for file in files] == ["docs/report.txt"]


@pytest.mark.parametrize(
    "member", ["../evil.txt", "docs/../../evil.txt", "/etc/evil.txt", "C:/evil.txt", "..\\evil.txt"]
)
def test_path_traversal_is_refused(tmp_path: Path, dest: Path, member: str) -> None:
    archive = write_zip(tmp_path, "evil.zip", {"fine.txt": b"fine", member: b"evil"})

    with pytest.raises(ArchivePathTraversalError) as caught:
        expand_uploads([("evil.zip", archive)], dest, limits=LIMITS)

    assert caught.value.code == "archive_path_traversal"
    assert caught.value.http_status == 400
    assert not (tmp_path / "evil.txt").exists()
    assert list(dest.iterdir()) == []  # nothing left behind, not even the member extracted first


def test_symbolic_link_is_refused(tmp_path: Path, dest: Path) -> None:
    with pytest.raises(ArchivePathTraversalError, match="symbolic link"):
        expand_uploads([("links.zip", write_zip_with_symlink(tmp_path))], dest, limits=LIMITS)


def test_zip_bomb_is_stopped_while_streaming(tmp_path: Path, dest: Path) -> None:
    bomb = write_zip_bomb(tmp_path, megabytes=50)
    assert bomb.stat().st_size < 200_000
    generous = ArchiveLimits(max_members=10, max_member_bytes=10**9, max_total_bytes=10**9, max_ratio=200.0)

    with pytest.raises(ArchiveBombError) as caught:
        expand_uploads([("bomb.zip", bomb)], dest, limits=generous)

    assert caught.value.code == "archive_compression_ratio"
    assert caught.value.http_status == 413
    assert list(dest.iterdir()) == []


def test_header_understating_a_member_size_is_refused(tmp_path: Path, dest: Path) -> None:
    """The headers claim 10 bytes for a 3 MB member: extraction stops at the claimed size and
    the CRC check fails, so the lie yields an error, never a silently truncated file."""
    archive = write_zip(tmp_path, "liar.zip", {"big.txt": b"abc" * 1_000_000}, compression=zipfile.ZIP_STORED)
    data = bytearray(archive.read_bytes())
    real_size = (3_000_000).to_bytes(4, "little")
    size_fields = [index for index in range(len(data) - 4) if data[index : index + 4] == real_size]
    # Stored member: [compressed, uncompressed] in the local header, then in the central directory.
    assert len(size_fields) == 4
    for offset in (size_fields[1], size_fields[3]):
        data[offset : offset + 4] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(data))

    with pytest.raises(ArchiveError) as caught:
        expand_uploads([("liar.zip", archive)], dest, limits=LIMITS)

    assert caught.value.code == "archive_corrupt"
    assert list(dest.iterdir()) == []


def test_member_count_limit(tmp_path: Path, dest: Path) -> None:
    archive = write_zip(tmp_path, "many.zip", {f"f{index}.txt": b"x" for index in range(51)})

    with pytest.raises(ArchiveTooLargeError, match="51 members"):
        expand_uploads([("many.zip", archive)], dest, limits=LIMITS)


def test_total_size_limit_spans_archives(tmp_path: Path, dest: Path) -> None:
    first = write_zip(tmp_path, "a.zip", {"a.txt": bytes(range(256)) * 4000})  # ~1 MB each
    second = write_zip(tmp_path, "b.zip", {"b.txt": bytes(range(256)) * 4000})
    limits = ArchiveLimits(max_members=10, max_member_bytes=2_000_000, max_total_bytes=1_500_000, max_ratio=200.0)

    with pytest.raises(ArchiveTooLargeError) as caught:
        expand_uploads([("a.zip", first), ("b.zip", second)], dest, limits=limits)

    assert caught.value.code == "archive_too_large"
    assert list(dest.iterdir()) == []


def test_nested_archive_comes_out_as_a_file(tmp_path: Path, dest: Path) -> None:
    inner = write_zip(tmp_path, "inner.zip", {"deep.txt": b"deep"})
    outer = write_zip(tmp_path, "outer.zip", {"inner.zip": inner.read_bytes(), "top.txt": b"top"})

    files = expand_uploads([("outer.zip", outer)], dest, limits=LIMITS)

    assert [file.name for file in files] == ["inner.zip", "top.txt"]
    assert zipfile.is_zipfile(files[0].path)


def test_damaged_archive_and_duplicates_and_empty(tmp_path: Path, dest: Path) -> None:
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(ArchiveError) as caught:
        expand_uploads([("damaged.zip", damaged)], dest, limits=LIMITS)
    assert caught.value.code == "archive_corrupt"

    archive = write_zip(tmp_path, "dup.zip", {"memo.txt": b"in archive"})
    plain = tmp_path / "memo.txt"
    plain.write_text("plain")
    with pytest.raises(ArchiveError) as caught:
        expand_uploads([("dup.zip", archive), ("memo.txt", plain)], dest, limits=LIMITS)
    assert caught.value.code == "archive_duplicate_name"

    only_junk = write_zip(tmp_path, "junk.zip", {"__MACOSX/x": b"x", ".DS_Store": b"x"})
    with pytest.raises(ArchiveError) as caught:
        expand_uploads([("junk.zip", only_junk)], dest, limits=LIMITS)
    assert caught.value.code == "archive_empty"


def test_expand_zip_alone_and_is_zip(tmp_path: Path, dest: Path) -> None:
    archive = write_zip(tmp_path, "Reports.ZIP", {"a/b.txt": b"b"})
    docx_like = write_zip(tmp_path, "report.docx", {"word/document.xml": b"<w/>"})

    files = expand_zip(archive, dest / "reports", LIMITS)

    assert is_zip(archive.name) and not is_zip(docx_like.name)
    assert [(file.name, file.path.read_bytes()) for file in files] == [("a/b.txt", b"b")]
    with pytest.raises(ArchiveBombError):
        expand_zip(write_zip_bomb(tmp_path, megabytes=5), dest / "bomb", LIMITS)
    assert list((dest / "bomb").iterdir()) == []


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("a/b.txt", "a/b.txt"), ("a\\b.txt", "a/b.txt"), ("./a//b.txt", "a/b.txt"), ("dir/", None), ("", None)],
)
def test_normalized_member_name(raw: str, expected: str | None) -> None:
    assert normalized_member_name(raw) == expected
