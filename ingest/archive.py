"""Safe expansion of uploaded zip archives into the files they hold.

Runs at upload time, so every refusal is an `ArchiveError` (HTTP 400, or 413 for size
limits) for the whole upload. Checks:

- names: `../` components, absolute paths (`/x`, `C:\\x`), NUL bytes and symbolic links are
  refused; directories, `__MACOSX/` and dotfiles (any component starting with ".") are skipped;
- size: member count, bytes per member and bytes in total are counted while decompressing
  (header sizes are only used to refuse early, never trusted), and a member that outgrows its
  compressed size by more than `max_ratio` is refused as a zip bomb;
- nested archives are not expanded: a `.zip` inside a zip comes out as a file, which
  `ingest.parse` then reports per file as unsupported.

Files are written under `dest_dir` with generated names (member names never touch the file
system); the caller owns and removes `dest_dir`.
"""

from __future__ import annotations

import re
import stat
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from core.errors import ArchiveBombError, ArchiveError, ArchivePathTraversalError, ArchiveTooLargeError
from core.settings import Settings, get_settings

_READ_BYTES = 64 * 1024
# The ratio check starts once a member has produced this much, so that small, very
# compressible files (a page of spaces) are not mistaken for bombs.
_RATIO_CHECK_FROM_BYTES = 1024 * 1024
_SAFE_SUFFIX_RE = re.compile(r"^\.[A-Za-z0-9]{1,10}$")


class UploadedFile(NamedTuple):
    """A file to ingest: its name relative to the upload (the document's identity) and where
    its bytes are on disk."""

    name: str
    path: Path


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    """Bounds on what archives may expand to; `from_settings` reads the service settings."""

    max_members: int
    max_member_bytes: int
    max_total_bytes: int
    max_ratio: float

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> ArchiveLimits:
        """Members: `max_archive_members`; per member: `max_file_bytes`; all expanded files of one
        upload together: `max_upload_bytes`; ratio: `max_archive_ratio`."""
        settings = settings or get_settings()
        return cls(
            max_members=settings.max_archive_members,
            max_member_bytes=settings.max_file_bytes,
            max_total_bytes=settings.max_upload_bytes,
            max_ratio=settings.max_archive_ratio,
        )


def is_zip(name: str) -> bool:
    """Whether an upload is an archive to expand. Decided by name, since .docx and .xlsx files
    are zips too; a `.zip` that is not one is then refused by `expand_zip` as damaged."""
    return name.lower().endswith(".zip")


def expand_zip(
    archive: Path, dest_dir: Path, limits: ArchiveLimits | None = None, *, name: str | None = None
) -> list[UploadedFile]:
    """The files inside one zip archive, written under `dest_dir` (created if needed); the
    limits apply to this archive alone. `name` (default: the file's) appears in errors.
    Raises like `expand_uploads`."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    expander = _Expander(dest_dir, limits or ArchiveLimits.from_settings())
    try:
        files = expander.expand(name or archive.name, archive)
        _check_unique(files)
    except BaseException:
        expander.remove_written()
        raise
    return files


def expand_uploads(
    uploads: Iterable[tuple[str, Path]], dest_dir: Path, *, limits: ArchiveLimits | None = None
) -> list[UploadedFile]:
    """Replace each `.zip` upload by the files inside it; other uploads pass through.

    `uploads` are (client filename, path on disk) pairs. Returns (relative name, path) pairs:
    an archive member is named by its normalised path inside the archive. Raises
    `ArchivePathTraversalError`, `ArchiveTooLargeError`, `ArchiveBombError`, or `ArchiveError`
    (damaged or encrypted archive, duplicate names, an archive with no files); files already
    extracted by the call are removed first.
    """
    limits = limits or ArchiveLimits.from_settings()
    dest_dir.mkdir(parents=True, exist_ok=True)
    expander = _Expander(dest_dir, limits)
    files: list[UploadedFile] = []
    try:
        for client_name, path in uploads:
            name = normalized_member_name(client_name)
            if name is None:
                raise ArchiveError(f"invalid upload name {client_name!r}")
            if is_zip(name):
                files.extend(expander.expand(name, path))
            else:
                files.append(UploadedFile(name, path))
        _check_unique(files)
    except BaseException:
        expander.remove_written()
        raise
    return files


def normalized_member_name(name: str) -> str | None:
    """`name` as a clean relative POSIX path, or None for a directory entry.

    Backslashes count as separators (some Windows tools write them). Raises
    `ArchivePathTraversalError` for absolute paths and `..` components.
    """
    if "\x00" in name:
        raise ArchivePathTraversalError(f"member name {name!r} contains a NUL byte")
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        raise ArchivePathTraversalError(f"member name {name!r} is an absolute path")
    parts = [part for part in posix.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ArchivePathTraversalError(f"member name {name!r} points outside the archive")
    if not parts or posix.endswith("/"):
        return None
    return "/".join(parts)


def _is_skipped(name: str) -> bool:
    """macOS resource forks and hidden files (`.DS_Store`, `.git/...`) are not documents."""
    parts = name.split("/")
    return parts[0] == "__MACOSX" or any(part.startswith(".") for part in parts)


def _check_unique(files: list[UploadedFile]) -> None:
    seen: set[str] = set()
    for file in files:
        if file.name in seen:
            raise ArchiveError(f"two files are named {file.name!r}", code="archive_duplicate_name")
        seen.add(file.name)


class _Expander:
    """Extracts archives of one upload, keeping the running totals the limits apply to."""

    def __init__(self, dest_dir: Path, limits: ArchiveLimits) -> None:
        self.dest_dir = dest_dir
        self.limits = limits
        self.total_bytes = 0
        self.written: list[Path] = []

    def expand(self, archive_name: str, path: Path) -> list[UploadedFile]:
        try:
            with zipfile.ZipFile(path) as archive:
                members = self._members(archive_name, archive)
                files = [UploadedFile(name, self._extract(archive_name, archive, info)) for name, info in members]
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
            message = f"{archive_name}: damaged or unsupported zip archive ({e})"
            raise ArchiveError(message, code="archive_corrupt") from e
        if not files:
            raise ArchiveError(f"{archive_name}: the archive holds no files", code="archive_empty")
        return files

    def _members(self, archive_name: str, archive: zipfile.ZipFile) -> list[tuple[str, zipfile.ZipInfo]]:
        """Validated (name, info) of the members to extract; refuses early on declared sizes."""
        infos = archive.infolist()
        if len(infos) > self.limits.max_members:
            raise ArchiveTooLargeError(
                f"{archive_name}: {len(infos)} members, more than the limit of {self.limits.max_members}"
            )
        members = []
        declared_total = self.total_bytes
        for info in infos:
            name = normalized_member_name(info.filename)
            if name is None or info.is_dir() or _is_skipped(name):
                continue
            if info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16):
                raise ArchivePathTraversalError(f"{archive_name}: member {name!r} is a symbolic link")
            if info.flag_bits & 0x1:
                raise ArchiveError(f"{archive_name}: member {name!r} is encrypted", code="archive_encrypted")
            if info.file_size > self.limits.max_member_bytes:
                raise ArchiveTooLargeError(
                    f"{archive_name}: member {name!r} is larger than {self.limits.max_member_bytes} bytes"
                )
            declared_total += info.file_size
            if declared_total > self.limits.max_total_bytes:
                raise ArchiveTooLargeError(
                    f"{archive_name}: files larger than {self.limits.max_total_bytes} bytes in total"
                )
            members.append((name, info))
        return members

    def _extract(self, archive_name: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Path:
        """Stream one member to disk, counting the bytes actually produced."""
        suffix = PurePosixPath(info.filename.replace("\\", "/")).suffix
        target = self.dest_dir / f"{len(self.written):06d}{suffix if _SAFE_SUFFIX_RE.match(suffix) else ''}"
        ratio_limit = self.limits.max_ratio * max(info.compress_size, 1)
        written = 0
        with archive.open(info) as source, target.open("xb") as sink:
            self.written.append(target)
            while chunk := source.read(_READ_BYTES):
                written += len(chunk)
                if written > self.limits.max_member_bytes:
                    raise ArchiveTooLargeError(
                        f"{archive_name}: member {info.filename!r} expands beyond {self.limits.max_member_bytes} bytes"
                    )
                if self.total_bytes + written > self.limits.max_total_bytes:
                    raise ArchiveTooLargeError(
                        f"{archive_name}: files expand beyond {self.limits.max_total_bytes} bytes in total"
                    )
                if written > _RATIO_CHECK_FROM_BYTES and written > ratio_limit:
                    raise ArchiveBombError(
                        f"{archive_name}: member {info.filename!r} expands more than {self.limits.max_ratio:g} times "
                        "its compressed size"
                    )
                sink.write(chunk)
        self.total_bytes += written
        return target

    def remove_written(self) -> None:
        for path in self.written:
            path.unlink(missing_ok=True)
