"""The adapter registry on a real SQLite database: what the small-model server loads, tenant
isolation, and re-registering the same fine-tune."""

from __future__ import annotations

from pathlib import Path

import pytest

from core import db
from core.errors import NotFoundError
from finetune.registry import Adapter, all_adapter_files, get_adapter, list_adapters, save_adapter

pytestmark = pytest.mark.unit


def adapter(tmp_path: Path, ident: str, *, base: str = "gemma-3-270m", tenant: str = "t1", file: bool = True) -> Adapter:
    folder = tmp_path / ident
    folder.mkdir(exist_ok=True)
    record = Adapter(
        id=ident, tenant=tenant, module="legal", base_model=base, path=folder, meta={"metrics": {}},
        created_at=db.utcnow(),
    )
    if file:
        record.gguf.write_bytes(b"GGUF")
    return record


@pytest.fixture
async def engine(tmp_path: Path):
    engine = db.create_engine_async(f"sqlite+aiosqlite:///{tmp_path / 'sieve.db'}")
    await db.create_schema(engine)
    yield engine
    await engine.dispose()


async def test_the_server_loads_only_existing_adapters_of_its_base_model(engine, tmp_path: Path) -> None:
    await save_adapter(engine, adapter(tmp_path, "legal-aaa"))
    await save_adapter(engine, adapter(tmp_path, "legal-bbb", base="qwen2.5-coder-0.5b-instruct"))
    await save_adapter(engine, adapter(tmp_path, "legal-ccc", file=False))
    assert await all_adapter_files(engine, base_model="gemma-3-270m") == [tmp_path / "legal-aaa" / "legal-aaa.gguf"]


async def test_adapters_are_per_tenant_and_re_registering_replaces(engine, tmp_path: Path) -> None:
    await save_adapter(engine, adapter(tmp_path, "legal-aaa"))
    updated = adapter(tmp_path, "legal-aaa")
    await save_adapter(engine, Adapter(**{**updated.__dict__, "meta": {"metrics": {"tuned": {"accuracy": 0.9}}}}))
    listed = await list_adapters(engine, tenant="t1", module="legal")
    assert [a.id for a in listed] == ["legal-aaa"] and listed[0].meta["metrics"]["tuned"]["accuracy"] == 0.9
    assert await list_adapters(engine, tenant="t2") == []
    with pytest.raises(NotFoundError) as err:
        await get_adapter(engine, tenant="t2", adapter_id="legal-aaa")
    assert err.value.code == "adapter_not_found"
