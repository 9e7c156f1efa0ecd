"""`ConfigStore`: versioned module configs on a real (temporary) SQLite database."""

from __future__ import annotations

import pytest

from core import db
from core.errors import ConflictError, NotFoundError, ValidationFailedError
from modules.base import ModuleConfig
from modules.configs import Change, ConfigStore, config_hash, diff, merge

pytestmark = pytest.mark.unit


@pytest.fixture
async def store(tmp_path):
    engine = db.create_engine_async(f"sqlite+aiosqlite:///{tmp_path / 'sieve.db'}")
    await db.create_schema(engine)
    yield ConfigStore(engine)
    await engine.dispose()


async def test_nothing_stored_means_revision_zero_with_the_defaults(store: ConfigStore) -> None:
    current = await store.current("t1", "generic")
    assert current.revision == 0 and current.config == ModuleConfig() and current.author is None
    assert current.config_hash == config_hash(ModuleConfig()) and len(current.config_hash) == 16
    assert await store.history("t1", "generic") == []


async def test_save_stores_a_new_revision_with_defaults_for_missing_keys(store: ConfigStore) -> None:
    saved = await store.save("t1", "generic", {"score_floor": 0.3}, author="ana", comment="tighter")
    assert (saved.revision, saved.author, saved.comment) == (1, "ana", "tighter")
    assert saved.config.score_floor == 0.3 and saved.config.max_chunks == ModuleConfig().max_chunks
    assert saved.created_at is not None
    assert await store.current("t1", "generic") == saved
    # A full replacement: what the second save omits goes back to its default.
    replaced = await store.save("t1", "generic", {"max_chunks": 3}, author="bo")
    assert replaced.revision == 2 and replaced.config.score_floor == 0.0 and replaced.config.max_chunks == 3


async def test_revisions_belong_to_one_tenant(store: ConfigStore) -> None:
    await store.save("t1", "generic", {"score_floor": 0.3}, author="ana")
    other = await store.current("t2", "generic")
    assert other.revision == 0 and other.config.score_floor == 0.0
    assert await store.history("t2", "generic") == []
    with pytest.raises(NotFoundError) as e:
        await store.rollback("t2", "generic", 1, author="eve")
    assert e.value.code == "revision_not_found"


async def test_saving_the_current_config_again_is_a_no_op(store: ConfigStore) -> None:
    assert (await store.save("t1", "generic", {}, author="ana")).revision == 0
    first = await store.save("t1", "generic", {"top_k": 20}, author="ana")
    again = await store.save("t1", "generic", {"top_k": 20}, author="bo", comment="same")
    assert again == first
    assert len(await store.history("t1", "generic")) == 1


async def test_invalid_configs_are_refused_with_one_line_per_problem(store: ConfigStore) -> None:
    with pytest.raises(ValidationFailedError) as e:
        await store.save("t1", "generic", {"score_flor": 0.5, "top_k": 0, "retrieval": "magic"}, author="ana")
    details = e.value.details
    assert len(details) == 3
    assert "score_flor: unknown setting (did you mean score_floor?)" in details
    assert any(d.startswith("top_k: ") and "greater than or equal to 1" in d for d in details)
    assert any(d.startswith("retrieval: ") for d in details)
    assert (await store.current("t1", "generic")).revision == 0
    with pytest.raises(ValidationFailedError) as e:
        store.validate("generic", ["not", "a", "dict"])
    assert e.value.details == ["config: must be an object"]
    assert store.validate("generic", {"fusion": "dbsf"}).fusion == "dbsf"


async def test_unknown_module_is_module_not_found(store: ConfigStore) -> None:
    for call in (store.current("t1", "astrology"), store.history("t1", "astrology")):
        with pytest.raises(NotFoundError) as e:
            await call
        assert e.value.code == "module_not_found"


async def test_a_stale_base_revision_is_a_conflict(store: ConfigStore) -> None:
    await store.save("t1", "generic", {"top_k": 20}, author="ana")
    ok = await store.save("t1", "generic", {"top_k": 30}, author="ana", base_revision=1)
    assert ok.revision == 2
    for change in (
        store.save("t1", "generic", {"top_k": 50}, author="bo", base_revision=1),
        store.patch("t1", "generic", {"top_k": 50}, author="bo", base_revision=0),
    ):
        with pytest.raises(ConflictError) as e:
            await change
        assert e.value.code == "stale_revision" and e.value.http_status == 409
    assert (await store.current("t1", "generic")).config.top_k == 30


async def test_patch_changes_only_the_given_settings(store: ConfigStore) -> None:
    await store.save("t1", "generic", {"top_k": 20, "max_chunks": 4}, author="ana")
    patched = await store.patch("t1", "generic", {"score_floor": 0.25}, author="bo", comment="floor", base_revision=1)
    assert patched.revision == 2
    assert (patched.config.top_k, patched.config.max_chunks, patched.config.score_floor) == (20, 4, 0.25)
    with pytest.raises(ValidationFailedError) as e:
        await store.patch("t1", "generic", {"score_flor": 0.5}, author="bo")
    assert e.value.details[0].startswith("score_flor: unknown setting")


async def test_history_lists_revisions_newest_first_with_their_changes(store: ConfigStore) -> None:
    await store.save("t1", "generic", {"score_floor": 0.3}, author="ana", comment="first")
    await store.patch("t1", "generic", {"score_floor": 0.4, "fusion": "dbsf"}, author="bo", comment="second")
    history = await store.history("t1", "generic")
    assert [h.revision.revision for h in history] == [2, 1]
    assert [(h.revision.author, h.revision.comment) for h in history] == [("bo", "second"), ("ana", "first")]
    assert history[0].changes == [Change("fusion", "rrf", "dbsf"), Change("score_floor", 0.3, 0.4)]
    assert history[1].changes == [Change("score_floor", 0.0, 0.3)]


async def test_rollback_restores_a_revision_as_a_new_one(store: ConfigStore) -> None:
    await store.save("t1", "generic", {"score_floor": 0.3}, author="ana")
    await store.patch("t1", "generic", {"top_k": 10}, author="ana")
    back = await store.rollback("t1", "generic", 1, author="bo")
    assert back.revision == 3 and back.comment == "rollback to 1" and back.author == "bo"
    assert back.config == (await store.revision("t1", "generic", 1)).config
    defaults = await store.rollback("t1", "generic", 0, author="bo")
    assert defaults.revision == 4 and defaults.config == ModuleConfig()
    with pytest.raises(NotFoundError) as e:
        await store.rollback("t1", "generic", 99, author="bo")
    assert e.value.code == "revision_not_found"


async def test_revisions_survive_a_new_engine(tmp_path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'sieve.db'}"
    engine = db.create_engine_async(url)
    await db.create_schema(engine)
    await ConfigStore(engine).save("t1", "generic", {"max_chunks": 2}, author="ana")
    await engine.dispose()
    reopened = db.create_engine_async(url)
    try:
        current = await ConfigStore(reopened).current("t1", "generic")
        assert current.revision == 1 and current.config.max_chunks == 2
    finally:
        await reopened.dispose()


def test_diff_flattens_nested_settings_and_merge_keeps_siblings() -> None:
    old = {"a": 1, "limits": {"x": 1, "y": 2}}
    new = {"a": 1, "limits": {"x": 5, "y": 2}, "b": True}
    assert diff(old, new) == [Change("b", None, True), Change("limits.x", 1, 5)]
    assert merge(old, {"limits": {"x": 5}}) == {"a": 1, "limits": {"x": 5, "y": 2}}


async def test_a_retired_setting_in_a_stored_revision_is_ignored(store: ConfigStore) -> None:
    # A module upgraded since the revision was saved no longer has `old_knob`.
    async with store.engine.begin() as conn:
        await conn.execute(
            db.config_revisions.insert().values(
                tenant="t1", module="generic", revision=1, config={"old_knob": 3, "max_chunks": 2},
                author="ana", created_at=db.utcnow(),
            )
        )
    current = await store.current("t1", "generic")
    assert current.revision == 1 and current.config.max_chunks == 2
