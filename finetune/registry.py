"""The adapter registry: fine-tuned LoRA adapters, their lineage and their metrics.

An adapter's id is content-addressed: the module, the base model's sha256, the training
data's hash and the hyper-parameters determine it (`adapter_id`), so the same fine-tune
run twice lands on the same record, and a re-run replaces its files. Files live in
`<data_dir>/adapters/<id>/`: the peft folder (for further training or merging) and
`<id>.gguf` (what llama-server loads; its file stem is the name requests select it by) and
`adapter.json` (`AdapterManifest`: lineage, metrics, cost), with which `import_adapter`
registers a folder trained elsewhere (a GPU machine, another Sieve).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from core import db
from core.errors import NotFoundError, ValidationFailedError

MANIFEST = "adapter.json"
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class Adapter:
    id: str
    tenant: str
    module: str
    base_model: str
    path: Path
    meta: dict[str, Any]
    created_at: datetime

    @property
    def gguf(self) -> Path:
        return self.path / f"{self.id}.gguf"


class AdapterManifest(BaseModel):
    """`adapter.json`: what a training run knows of its adapter, written beside its GGUF."""

    model_config = ConfigDict(extra="ignore")

    adapter_id: str = Field(pattern=r"^[a-z][a-z0-9_]*-[0-9a-f]{12}$")
    module: str
    base_gguf_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    data_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    hyperparameters: dict[str, Any]
    metrics: dict[str, Any]
    examples: dict[str, int]
    training: dict[str, Any]


def adapter_id(module: str, base_sha256: str, data_hash: str, hyperparameters: dict[str, Any]) -> str:
    """`<module>-<12 hex>`: a file stem llama-server accepts (no ',' or ':')."""
    key = json.dumps(
        {"module": module, "base": base_sha256, "data": data_hash, "hyperparameters": hyperparameters}, sort_keys=True
    )
    return f"{module}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def adapters_dir(data_dir: Path) -> Path:
    return data_dir / "adapters"


async def save_adapter(engine: AsyncEngine, adapter: Adapter) -> None:
    """Insert or replace the record (same id: the same fine-tune, run again)."""
    values = dict(
        tenant=adapter.tenant, module=adapter.module, base_model=adapter.base_model, path=str(adapter.path),
        meta=adapter.meta, active=True, created_at=adapter.created_at,
    )
    async with engine.begin() as conn:
        existing = await conn.scalar(select(db.adapters.c.id).where(db.adapters.c.id == adapter.id))
        if existing:
            await conn.execute(update(db.adapters).where(db.adapters.c.id == adapter.id).values(**values))
        else:
            await conn.execute(db.adapters.insert().values(id=adapter.id, **values))


async def list_adapters(engine: AsyncEngine, *, tenant: str, module: str | None = None) -> list[Adapter]:
    query = select(db.adapters).where(db.adapters.c.tenant == tenant, db.adapters.c.active.is_(True))
    if module:
        query = query.where(db.adapters.c.module == module)
    async with engine.connect() as conn:
        rows = (await conn.execute(query.order_by(db.adapters.c.created_at.desc()))).all()
    return [_adapter(r) for r in rows]


async def get_adapter(engine: AsyncEngine, *, tenant: str, adapter_id: str) -> Adapter:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(db.adapters).where(db.adapters.c.id == adapter_id, db.adapters.c.tenant == tenant)
            )
        ).first()
    if row is None:
        raise NotFoundError(f"adapter {adapter_id!r} does not exist", code="adapter_not_found")
    return _adapter(row)


async def import_adapter(
    engine: AsyncEngine, data_dir: Path, *, tenant: str, manifest: AdapterManifest, gguf: bytes, base_model: str,
    base_sha256: str,
) -> Adapter:
    """Register an adapter trained elsewhere: its manifest must match its content address
    (`adapter_manifest_mismatch`) and the small tier's base model (`adapter_base_mismatch`),
    and the file must be a GGUF (`adapter_bad_file`). Importing it again replaces it."""
    expected = adapter_id(manifest.module, manifest.base_gguf_sha256, manifest.data_hash, manifest.hyperparameters)
    if expected != manifest.adapter_id:
        raise ValidationFailedError(
            "the manifest does not match its adapter id", code="adapter_manifest_mismatch",
            details=[f"adapter_id: module, base, data and hyper-parameters give {expected!r}, not {manifest.adapter_id!r}"],
        )
    if manifest.base_gguf_sha256 != base_sha256:
        raise ValidationFailedError(
            f"adapter {manifest.adapter_id!r} was trained on another base model", code="adapter_base_mismatch",
            details=[f"base_gguf_sha256: {manifest.base_gguf_sha256[:12]}..., the small tier serves {base_sha256[:12]}..."],
        )
    if not gguf.startswith(GGUF_MAGIC):
        raise ValidationFailedError("the adapter file is not a GGUF file", code="adapter_bad_file",
                                    details=["gguf: does not start with the GGUF magic bytes"])
    folder = adapters_dir(data_dir) / manifest.adapter_id
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in ((f"{manifest.adapter_id}.gguf", gguf), (MANIFEST, manifest.model_dump_json(indent=2).encode())):
        partial = folder / f".{name}.partial"
        partial.write_bytes(content)
        partial.replace(folder / name)
    meta = manifest.model_dump(exclude={"adapter_id", "module"}) | {"base_model": base_model, "imported": True}
    adapter = Adapter(
        id=manifest.adapter_id, tenant=tenant, module=manifest.module, base_model=base_model, path=folder, meta=meta,
        created_at=db.utcnow(),
    )
    await save_adapter(engine, adapter)
    return adapter


async def delete_adapter(engine: AsyncEngine, *, tenant: str, adapter_id: str) -> Adapter:
    """Remove the record, then the files (a crash between the two leaves files the registry
    no longer names, never a record without files); NotFoundError(adapter_not_found)."""
    adapter = await get_adapter(engine, tenant=tenant, adapter_id=adapter_id)
    async with engine.begin() as conn:
        await conn.execute(delete(db.adapters).where(db.adapters.c.id == adapter_id, db.adapters.c.tenant == tenant))
    shutil.rmtree(adapter.path, ignore_errors=True)
    return adapter


async def all_adapter_files(engine: AsyncEngine, *, base_model: str) -> list[Path]:
    """The GGUF file of every registered adapter trained on `base_model` that exists on disk
    (what the embedded small-model server loads; an adapter of another base would stop it
    from starting)."""
    query = select(db.adapters).where(db.adapters.c.active.is_(True), db.adapters.c.base_model == base_model)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [a.gguf for a in map(_adapter, rows) if a.gguf.is_file()]


def _adapter(row: Any) -> Adapter:
    return Adapter(
        id=row.id, tenant=row.tenant, module=row.module, base_model=row.base_model, path=Path(row.path),
        meta=row.meta or {}, created_at=row.created_at,
    )
