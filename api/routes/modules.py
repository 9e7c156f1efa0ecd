"""Domain modules and their configs: read, change, validate, preview, history, rollback.

Every change is a new revision of the tenant's config of a module, recorded with its
author (`X-Sieve-User`), time and comment, and applies to the next question. A config
that names a fine-tuned adapter (`adapter`) is saved only if the tenant has that adapter
and it was trained for the module.
"""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import AppServices, AuthorDep, ServicesDep, TenantDep
from api.schemas import (
    ConfigChangeOut,
    ConfigCheck,
    ConfigRevisionOut,
    ConfigUpdate,
    ConfigValid,
    ModuleConfigOut,
    ModuleOut,
    PreviewCandidate,
    PreviewDifference,
    PreviewRequest,
    PreviewResponse,
    PreviewSide,
    PreviewSummary,
    RollbackRequest,
)
from core.errors import NotFoundError, ValidationFailedError
from finetune.registry import get_adapter
from modules import module_class, module_keys
from modules.base import Candidate, ModuleConfig
from modules.configs import Change, Revision, merge
from retrieval.curate import Curated
from retrieval.search import Preview

router = APIRouter(prefix="/v1/modules", tags=["modules"])

_ERRORS = {404: {"description": "`module_not_found`"}}
_INVALID = {
    **_ERRORS,
    422: {
        "description": "`validation_failed`, with one `path: message` detail per problem; `adapter_not_found` "
        "(the tenant has no such adapter) or `adapter_module_mismatch` (it was trained for another module)"
    },
}
_CHANGE_ERRORS = {**_INVALID, 409: {"description": "`stale_revision`: the config changed since `base_revision`"}}


def _config_out(r: Revision) -> ModuleConfigOut:
    return ModuleConfigOut(
        module=r.module, revision=r.revision, config=r.values, config_hash=r.config_hash, author=r.author,
        comment=r.comment, created_at=r.created_at,
    )


def _changes(changes: list[Change]) -> list[ConfigChangeOut]:
    return [ConfigChangeOut(path=c.path, old=c.old, new=c.new) for c in changes]


async def _check_adapter(
    services: AppServices, tenant: str, module: str, config: ModuleConfig, current: Revision | None = None
) -> None:
    """Refuse a config naming an adapter the tenant does not have or that was trained for
    another module. The current config's adapter is not checked again, so a change of other
    settings is not refused for it."""
    name = config.adapter
    if name is None or (current is not None and current.config.adapter == name):
        return
    try:
        adapter = await get_adapter(services.resources.db, tenant=tenant, adapter_id=name)
    except NotFoundError as e:
        raise ValidationFailedError(
            f"adapter {name!r} does not exist", code="adapter_not_found",
            details=[f"adapter: no adapter {name!r} (GET /v1/adapters lists them)"],
        ) from e
    if adapter.module != module:
        raise ValidationFailedError(
            f"adapter {name!r} was trained for module {adapter.module!r}", code="adapter_module_mismatch",
            details=[f"adapter: {name!r} was trained for module {adapter.module!r}, not {module!r}"],
        )


@router.get("", response_model=list[ModuleOut])
async def list_modules(services: ServicesDep, tenant: TenantDep) -> list[ModuleOut]:
    """Every module, with its config's JSON Schema (the documentation of each setting)
    and the tenant's current config revision."""
    out = []
    for key in module_keys():
        cls = module_class(key)
        current = await services.configs.current(tenant, key)
        out.append(
            ModuleOut(
                key=key, description=cls.description, config_schema=cls.config_model.model_json_schema(),
                revision=current.revision, config_hash=current.config_hash,
            )
        )
    return out


@router.get("/{name}/config", response_model=ModuleConfigOut, responses=_ERRORS)
async def get_config(name: str, services: ServicesDep, tenant: TenantDep) -> ModuleConfigOut:
    """The module's current config (revision 0: its defaults)."""
    return _config_out(await services.configs.current(tenant, name))


@router.put("/{name}/config", response_model=ModuleConfigOut, responses=_CHANGE_ERRORS)
async def replace_config(
    name: str, body: ConfigUpdate, services: ServicesDep, tenant: TenantDep, author: AuthorDep
) -> ModuleConfigOut:
    """Replace the whole config: **settings missing from `config` take their defaults**
    (to change a few settings and keep the others, use PATCH). Saving a config equal to
    the current one changes nothing and returns the current revision."""
    config = services.configs.validate(name, body.config)
    await _check_adapter(services, tenant, name, config, await services.configs.current(tenant, name))
    revision = await services.configs.save(
        tenant, name, body.config, author=author, comment=body.comment, base_revision=body.base_revision
    )
    return _config_out(revision)


@router.patch("/{name}/config", response_model=ModuleConfigOut, responses=_CHANGE_ERRORS)
async def patch_config(
    name: str, body: ConfigUpdate, services: ServicesDep, tenant: TenantDep, author: AuthorDep
) -> ModuleConfigOut:
    """Change only the settings in `config` (nested settings are merged); the others keep
    their current values."""
    current = await services.configs.current(tenant, name)
    await _check_adapter(
        services, tenant, name, services.configs.validate(name, merge(current.values, body.config)), current
    )
    revision = await services.configs.patch(
        tenant, name, body.config, author=author, comment=body.comment, base_revision=body.base_revision
    )
    return _config_out(revision)


@router.post("/{name}/config/validate", response_model=ConfigValid, responses=_INVALID)
async def validate_config(name: str, body: ConfigCheck, services: ServicesDep, tenant: TenantDep) -> ConfigValid:
    """Check a whole config without saving it: 200 if valid, else 422 with one
    `path: message` detail per problem."""
    await _check_adapter(services, tenant, name, services.configs.validate(name, body.config))
    return ConfigValid()


@router.get("/{name}/history", response_model=list[ConfigRevisionOut], responses=_ERRORS)
async def config_history(name: str, services: ServicesDep, tenant: TenantDep) -> list[ConfigRevisionOut]:
    """Every saved revision, newest first, with author, time, comment and what it changed."""
    entries = await services.configs.history(tenant, name)
    return [
        ConfigRevisionOut(**_config_out(e.revision).model_dump(), changes=_changes(e.changes)) for e in entries
    ]


@router.post("/{name}/rollback", response_model=ModuleConfigOut, responses=_INVALID)
async def rollback_config(
    name: str, body: RollbackRequest, services: ServicesDep, tenant: TenantDep, author: AuthorDep
) -> ModuleConfigOut:
    """Make an earlier revision's config current again, as a new revision
    (404 `revision_not_found` for a revision that does not exist; 422 `adapter_not_found`
    when it names an adapter deleted since)."""
    target = await services.configs.revision(tenant, name, body.revision)
    await _check_adapter(services, tenant, name, target.config, await services.configs.current(tenant, name))
    return _config_out(await services.configs.rollback(tenant, name, body.revision, author=author))


def _side(curated: Curated, config_hash: str, revision: int | None) -> PreviewSide:
    return PreviewSide(
        config_hash=config_hash,
        revision=revision,
        candidates=[
            PreviewCandidate(
                id=c.id, doc_id=c.doc_id, filename=c.filename, page=c.page, rank=c.rank,
                similarity=c.similarity, kept=c.kept, reason=c.reason,
            )
            for c in sorted(curated.candidates, key=lambda c: c.rank)
        ],
    )


def _differences(only: list[tuple[Candidate, str]]) -> list[PreviewDifference]:
    return [
        PreviewDifference(id=c.id, doc_id=c.doc_id, filename=c.filename, page=c.page, reason=reason)
        for c, reason in only
    ]


@router.post("/{name}/preview", response_model=PreviewResponse, responses=_INVALID)
async def preview_config(name: str, body: PreviewRequest, services: ServicesDep, tenant: TenantDep) -> PreviewResponse:
    """What a change would do to one question, before it is saved: the candidates chunk by
    chunk under the current config and under the proposed one (`config` merged onto the
    current config), and which chunks only one of them keeps."""
    preview = await services.search.preview(
        tenant=tenant, collection=body.collection, module=name, question=body.question, changes=body.config, k=body.k
    )
    return PreviewResponse(
        module=name,
        changes=_changes(preview.changes),
        current=_side(preview.before, preview.current.config_hash, preview.current.revision),
        proposed=_side(preview.after, preview.proposed_hash, None),
        summary=PreviewSummary(
            kept_only_current=_differences(Preview.kept_only_by(preview.before, preview.after)),
            kept_only_proposed=_differences(Preview.kept_only_by(preview.after, preview.before)),
        ),
    )
