"""Versioned module configs: what analysts change, per tenant, without a restart.

Every change is a new revision (author, time, comment) of a module's whole config in the
`config_revisions` table; revision 0 is the module's defaults and is never stored. An
invalid change is refused with one `path: message` per problem, a change based on a stale
revision is refused, and any revision can be restored (as a new revision). The query path
asks for the current revision per request, so a saved change applies to the next question.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from core import db
from core.errors import ConflictError, NotFoundError, ValidationFailedError, problem_path
from modules.base import ModuleConfig
from modules.registry import module_class

log = logging.getLogger(__name__)

_revisions = db.config_revisions


def config_hash(config: ModuleConfig) -> str:
    """sha256 of the config's canonical JSON, 16 hex characters."""
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Revision:
    """One revision of a module's config; revision 0 (the defaults) has no author or time."""

    module: str
    revision: int
    config: ModuleConfig
    author: str | None = None
    comment: str | None = None
    created_at: datetime | None = None

    @property
    def config_hash(self) -> str:
        return config_hash(self.config)

    @property
    def values(self) -> dict[str, Any]:
        """The config as JSON-compatible values."""
        return self.config.model_dump(mode="json")


@dataclass(frozen=True)
class Change:
    """One setting that differs between two configs; nested settings are dotted paths."""

    path: str
    old: Any
    new: Any


@dataclass(frozen=True)
class HistoryEntry:
    revision: Revision
    changes: list[Change]


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`; lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """The settings that differ, in path order (a missing setting reads as None)."""
    a, b = flatten(old), flatten(new)
    return [Change(path, a.get(path), b.get(path)) for path in sorted(a.keys() | b.keys()) if a.get(path) != b.get(path)]


def merge(base: dict[str, Any], partial: dict[str, Any]) -> dict[str, Any]:
    """`partial` laid over `base`; nested dicts are merged, everything else is replaced."""
    merged = dict(base)
    for key, value in partial.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _problems(error: ValidationError, known: list[str]) -> list[str]:
    """Pydantic's errors as `path: message` lines, unknown keys with a suggestion."""
    lines = []
    for e in error.errors():
        path = problem_path(e["loc"], root="config")
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(e["loc"][-1]), known, n=1) if len(e["loc"]) == 1 else []
            lines.append(f"{path}: unknown setting" + (f" (did you mean {close[0]}?)" if close else ""))
        else:
            lines.append(f"{path}: {e['msg']}")
    return lines


def _require_object(module: str, raw: Any) -> None:
    if not isinstance(raw, dict):
        raise ValidationFailedError(
            f"the config of module {module!r} must be an object", details=["config: must be an object"]
        )


class ConfigStore:
    """Module config revisions of every tenant, in the metadata database (async)."""

    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    # ---- reading ----

    async def current(self, tenant: str, module: str) -> Revision:
        """The tenant's current config of `module` (revision 0, the defaults, when none is stored)."""
        module_class(module)  # unknown module -> module_not_found
        async with self.engine.connect() as conn:
            return await self._current(conn, tenant, module)

    async def revision(self, tenant: str, module: str, revision: int) -> Revision:
        """One revision; unknown -> NotFoundError(revision_not_found)."""
        config_model = module_class(module).config_model
        if revision == 0:
            return Revision(module=module, revision=0, config=config_model())
        async with self.engine.connect() as conn:
            row = (await conn.execute(self._select(tenant, module).where(_revisions.c.revision == revision))).first()
        if row is None:
            raise NotFoundError(
                f"module {module!r} has no config revision {revision}", code="revision_not_found"
            )
        return self._revision(module, row)

    async def history(self, tenant: str, module: str) -> list[HistoryEntry]:
        """Every stored revision, newest first, each with its changes from the previous one
        (the first from the defaults)."""
        config_model = module_class(module).config_model
        async with self.engine.connect() as conn:
            rows = (await conn.execute(self._select(tenant, module).order_by(_revisions.c.revision))).all()
        entries = []
        previous = config_model().model_dump(mode="json")
        for row in rows:
            revision = self._revision(module, row)
            entries.append(HistoryEntry(revision=revision, changes=diff(previous, revision.values)))
            previous = revision.values
        return entries[::-1]

    # ---- validating ----

    def validate(self, module: str, raw: Any) -> ModuleConfig:
        """`raw` as `module`'s config; missing settings take their defaults.

        Raises `ValidationFailedError` with one `path: message` per problem."""
        config_model = module_class(module).config_model
        _require_object(module, raw)
        try:
            return config_model.model_validate(raw)
        except ValidationError as e:
            problems = _problems(e, list(config_model.model_fields))
            raise ValidationFailedError(
                f"the config of module {module!r} is not valid ({len(problems)} problem(s))", details=problems
            ) from e

    # ---- changing ----

    async def save(
        self,
        tenant: str,
        module: str,
        raw: dict[str, Any],
        *,
        author: str,
        comment: str | None = None,
        base_revision: int | None = None,
    ) -> Revision:
        """Store `raw` (a whole config; missing settings take defaults) as the next revision.

        `base_revision`: the revision the change was made from; if another change was
        saved since, `ConflictError(stale_revision)`. A config equal to the current one
        stores nothing and returns the current revision."""
        config = self.validate(module, raw)
        async with self.engine.begin() as conn:
            current = await self._current(conn, tenant, module)
            self._check_base(current, base_revision)
            if config == current.config:
                return current
            values = config.model_dump(mode="json")
            try:
                await conn.execute(
                    insert(_revisions).values(
                        tenant=tenant, module=module, revision=current.revision + 1, config=values,
                        author=author, comment=comment, created_at=db.utcnow(),
                    )
                )
            except IntegrityError as e:
                # Another change took this revision number between our read and write.
                raise ConflictError(
                    f"the config of module {module!r} changed meanwhile; reload and retry", code="stale_revision"
                ) from e
        return await self.revision(tenant, module, current.revision + 1)

    async def patch(
        self,
        tenant: str,
        module: str,
        partial: dict[str, Any],
        *,
        author: str,
        comment: str | None = None,
        base_revision: int | None = None,
    ) -> Revision:
        """Change only the settings in `partial` (nested dicts merged) and save the result."""
        _require_object(module, partial)
        current = await self.current(tenant, module)
        self._check_base(current, base_revision)
        # The current revision is the base: a change saved meanwhile makes this one stale.
        return await self.save(
            tenant, module, merge(current.values, partial), author=author, comment=comment,
            base_revision=current.revision,
        )

    async def rollback(self, tenant: str, module: str, revision: int, *, author: str) -> Revision:
        """A new revision whose config equals `revision`'s (0: the defaults)."""
        target = await self.revision(tenant, module, revision)
        return await self.save(tenant, module, target.values, author=author, comment=f"rollback to {revision}")

    # ---- helpers ----

    @staticmethod
    def _check_base(current: Revision, base_revision: int | None) -> None:
        if base_revision is not None and base_revision != current.revision:
            raise ConflictError(
                f"the config of module {current.module!r} is at revision {current.revision}, "
                f"not {base_revision}; reload it and apply the change again",
                code="stale_revision",
            )

    @staticmethod
    def _select(tenant: str, module: str):
        return select(_revisions).where(_revisions.c.tenant == tenant, _revisions.c.module == module)

    async def _current(self, conn: AsyncConnection, tenant: str, module: str) -> Revision:
        latest = (
            select(func.max(_revisions.c.revision))
            .where(_revisions.c.tenant == tenant, _revisions.c.module == module)
            .scalar_subquery()
        )
        row = (await conn.execute(self._select(tenant, module).where(_revisions.c.revision == latest))).first()
        if row is None:
            return Revision(module=module, revision=0, config=module_class(module).config_model())
        return self._revision(module, row)

    @staticmethod
    def _revision(module: str, row: Any) -> Revision:
        config_model = module_class(module).config_model
        stored = dict(row.config)
        # A setting the module no longer has (the module was upgraded since) is ignored
        # rather than making every question to the module fail.
        retired = stored.keys() - config_model.model_fields.keys()
        if retired:
            log.warning("module %s revision %d: ignoring retired settings %s", module, row.revision, sorted(retired))
        config = config_model.model_validate({k: v for k, v in stored.items() if k not in retired})
        return Revision(
            module=module, revision=row.revision, config=config, author=row.author, comment=row.comment,
            created_at=row.created_at,
        )
