"""The one error hierarchy of the service.

Every error the service means to show a client is a `ServiceError` with a stable,
machine-readable `code`, the HTTP status it maps to, and whether retrying may help.
Third-party errors (Qdrant, Redis, HTTP clients) are wrapped where the library is
called, with `raise ... from e`; `api/errors.py` renders them all the same way.
Low confidence, escalation and abstention are fields of an answer, never errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class ServiceError(Exception):
    """Base of all errors a client may see."""

    code: str = "internal_error"
    http_status: int = 500
    retryable: bool = False

    def __init__(self, message: str, *, code: str | None = None, details: list[str] | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.details = details or []


class BadRequestError(ServiceError):
    code = "bad_request"
    http_status = 400


class ValidationFailedError(ServiceError):
    """Input that parsed but is not acceptable; `details` holds one `path: message` per problem."""

    code = "validation_failed"
    http_status = 422


class NotFoundError(ServiceError):
    code = "not_found"
    http_status = 404


class ConflictError(ServiceError):
    code = "conflict"
    http_status = 409


class PayloadTooLargeError(ServiceError):
    code = "payload_too_large"
    http_status = 413


class UnsupportedMediaTypeError(ServiceError):
    code = "unsupported_media_type"
    http_status = 415


class UnavailableError(ServiceError):
    """A dependency (queue, vector store, model server) cannot be reached right now."""

    code = "unavailable"
    http_status = 503
    retryable = True


class VectorStoreError(UnavailableError):
    code = "vector_store_error"


class QueueError(UnavailableError):
    code = "queue_error"


class ModelError(UnavailableError):
    code = "model_error"


class DocumentError(ServiceError):
    """A file that cannot be ingested; reported per file in the job, not as an HTTP error."""

    code = "document_error"
    http_status = 422


class UnsupportedDocumentError(DocumentError):
    """A file type Sieve does not ingest (images, legacy Office, nested archives...)."""

    code = "unsupported_document_type"


class EmptyDocumentError(DocumentError):
    """A file with no bytes, or with no text once parsed."""

    code = "empty_document"


class CorruptDocumentError(DocumentError):
    """A file whose format is recognised but whose content cannot be read (truncated, damaged)."""

    code = "corrupt_document"


class NoTextLayerError(DocumentError):
    """A PDF without a text layer (a scan); Sieve does not run OCR."""

    code = "no_text_layer"


class UndecodableTextError(DocumentError):
    """A text file that holds binary data or cannot be decoded in any supported encoding."""

    code = "undecodable_text"


class DocumentTooLargeError(DocumentError):
    """A single file over the `max_file_bytes` setting."""

    code = "document_too_large"


class ArchiveError(BadRequestError):
    """An uploaded archive that cannot be expanded safely; detected at upload, so an HTTP error."""

    code = "archive_invalid"


class ArchivePathTraversalError(ArchiveError):
    """A member whose name escapes the extraction folder (`../`, absolute path) or a symbolic link."""

    code = "archive_path_traversal"


class ArchiveTooLargeError(ArchiveError):
    """Too many members, or members too large once decompressed."""

    code = "archive_too_large"
    http_status = 413


class ArchiveBombError(ArchiveTooLargeError):
    """A member that decompresses far beyond its compressed size (a zip bomb)."""

    code = "archive_compression_ratio"


def problem_path(loc: Sequence[int | str], *, prefix: str | None = None, root: str = "body") -> str:
    """A pydantic error location as a dotted path (`settings.rank`), `root` when empty."""
    return ".".join(([prefix] if prefix else []) + [str(part) for part in loc]) or root


def validation_details(error: ValidationError, *, prefix: str | None = None, root: str = "body") -> list[str]:
    """Pydantic's errors as the `path: message` details of a `ValidationFailedError`."""
    return [f"{problem_path(e['loc'], prefix=prefix, root=root)}: {e['msg']}" for e in error.errors()]
