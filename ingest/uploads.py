"""Staging of uploaded files: size limits, archive expansion, one folder per upload.

Everything a job will ingest is written under `data_dir/uploads/<upload id>/` before the
job is enqueued, so workers (in this process or, with a shared volume, elsewhere) read
files from disk and a retried job finds them again.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from core.errors import BadRequestError, PayloadTooLargeError
from ingest.archive import ArchiveLimits, expand_zip, is_zip
from ingest.jobs import StagedFile

COPY_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class UploadLimits:
    max_upload_bytes: int
    max_file_bytes: int
    archive: ArchiveLimits


def clean_filename(name: str) -> str:
    """The name a document is known by: the client's relative path, without directories
    that would escape (`..`, absolute roots) and with forward slashes."""
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", ".", "..", "/")]
    if not parts:
        raise BadRequestError(f"invalid file name {name!r}", code="invalid_filename")
    return "/".join(parts)


class UploadStager:
    """Receives the files of one upload into a fresh staging folder."""

    def __init__(self, uploads_dir: Path, limits: UploadLimits):
        self.limits = limits
        self.dir = uploads_dir / ("up_" + uuid.uuid4().hex[:16])
        self.dir.mkdir(parents=True)
        self.files: list[StagedFile] = []
        self._received = 0
        self._names: set[str] = set()

    async def add(self, filename: str | None, chunks: AsyncIterator[bytes]) -> None:
        """Stream one uploaded file to disk; a zip archive is replaced by its members."""
        name = clean_filename(filename or "upload")
        target = self.dir / f"{len(self.files):05d}_{uuid.uuid4().hex[:8]}"
        size = 0
        with target.open("wb") as out:
            async for chunk in chunks:
                size += len(chunk)
                self._received += len(chunk)
                if self._received > self.limits.max_upload_bytes:
                    raise PayloadTooLargeError(
                        f"upload exceeds {self.limits.max_upload_bytes} bytes", code="upload_too_large"
                    )
                out.write(chunk)
        if is_zip(name):
            # Members are named by their path inside the archive, so uploading the same
            # archive again replaces the same documents.
            members_dir = target.with_name(target.name + "_x")
            for member_name, path in expand_zip(target, members_dir, self.limits.archive, name=name):
                self._stage(member_name, path)
            target.unlink()
        else:
            if size > self.limits.max_file_bytes:
                raise PayloadTooLargeError(
                    f"{name!r} exceeds the {self.limits.max_file_bytes}-byte limit per file", code="file_too_large"
                )
            self._stage(name, target)

    def _stage(self, name: str, path: Path) -> None:
        if name in self._names:
            raise BadRequestError(f"file {name!r} appears twice in the upload", code="duplicate_filename")
        self._names.add(name)
        self.files.append(StagedFile(filename=name, path=path, bytes=path.stat().st_size))

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

