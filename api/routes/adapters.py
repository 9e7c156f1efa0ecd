"""Fine-tuned LoRA adapters of the small model: what each was trained on, and how well it does.

A module answers with an adapter once its config names it (`PUT`/`PATCH
/v1/modules/{name}/config` with `adapter`); switching back or to another one is an
ordinary config change, with history and rollback. An adapter is deleted only when no
module's current config names it. An adapter trained elsewhere (a GPU machine, another
Sieve) is imported from the folder its run wrote: the GGUF and `adapter.json`.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, File, Query, UploadFile, status
from pydantic import ValidationError

from api.deps import ServicesDep, TenantDep
from api.schemas import AdapterOut
from core.errors import ConflictError, PayloadTooLargeError, ValidationFailedError, validation_details
from finetune.jobs import small_tier_base
from finetune.registry import Adapter, AdapterManifest, delete_adapter, get_adapter, import_adapter, list_adapters
from modules import module_class, module_keys

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])


def _adapter_out(a: Adapter) -> AdapterOut:
    return AdapterOut(id=a.id, module=a.module, base_model=a.base_model, created_at=a.created_at, meta=a.meta)


@router.get("", response_model=list[AdapterOut], responses={404: {"description": "`module_not_found`"}})
async def read_adapters(
    services: ServicesDep,
    tenant: TenantDep,
    module: Annotated[str | None, Query(description="Only the adapters trained for this module.")] = None,
) -> list[AdapterOut]:
    """The tenant's adapters, newest first, with their lineage and held-out metrics."""
    if module is not None:
        module_class(module)  # unknown module -> module_not_found
    adapters = await list_adapters(services.resources.db, tenant=tenant, module=module)
    return [_adapter_out(a) for a in adapters]


@router.post(
    "/import",
    status_code=status.HTTP_201_CREATED,
    response_model=AdapterOut,
    responses={
        404: {"description": "`module_not_found`"},
        413: {"description": "`adapter_too_large`: a file over the `max_file_bytes` setting"},
        422: {
            "description": "`adapter_bad_manifest` (one `path: message` detail per problem), "
            "`adapter_manifest_mismatch`, `adapter_base_mismatch` (trained on another small model), `adapter_bad_file`"
        },
    },
)
async def import_adapter_files(
    gguf: Annotated[UploadFile, File(description="The adapter in llama.cpp's GGUF LoRA format (`<id>.gguf`).")],
    manifest: Annotated[UploadFile, File(description="`adapter.json`, as the fine-tuning run wrote it beside the GGUF.")],
    services: ServicesDep,
    tenant: TenantDep,
) -> AdapterOut:
    """Register an adapter trained elsewhere, for the tenant, and load it into the embedded
    small-model server. Its manifest must match its content-addressed id and the small
    tier's base model; importing the same adapter again replaces it."""
    settings = services.resources.settings
    for upload in (gguf, manifest):
        if upload.size is not None and upload.size > settings.max_file_bytes:
            raise PayloadTooLargeError(f"{upload.filename} is over {settings.max_file_bytes} bytes", code="adapter_too_large")
    try:
        parsed = AdapterManifest.model_validate_json(await manifest.read())
    except ValidationError as e:
        raise ValidationFailedError(
            "adapter.json is not a valid manifest", code="adapter_bad_manifest", details=validation_details(e, root="manifest")
        ) from e
    module_class(parsed.module)  # unknown module -> module_not_found
    _base_gguf, base_sha = await asyncio.to_thread(small_tier_base, settings)
    adapter = await import_adapter(
        services.resources.db, settings.data_dir, tenant=tenant, manifest=parsed, gguf=await gguf.read(),
        base_model=settings.small.model, base_sha256=base_sha,
    )
    await services.finetune.reload_adapters()
    return _adapter_out(adapter)


@router.get("/{adapter_id}", response_model=AdapterOut, responses={404: {"description": "`adapter_not_found`"}})
async def read_adapter(adapter_id: str, services: ServicesDep, tenant: TenantDep) -> AdapterOut:
    """One adapter: module, base model, hyper-parameters, training data hash, base model
    sha256, the base and fine-tuned metrics on held-out pairs, and the training's cost."""
    return _adapter_out(await get_adapter(services.resources.db, tenant=tenant, adapter_id=adapter_id))


@router.delete(
    "/{adapter_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"description": "`adapter_not_found`"}, 409: {"description": "`adapter_in_use`"}},
)
async def remove_adapter(adapter_id: str, services: ServicesDep, tenant: TenantDep) -> None:
    """Delete an adapter's record and files and unload it from the embedded small-model
    server. Refused (409 `adapter_in_use`) while a module's current config names it: point
    the module at another adapter, or none, first. Config revisions that named it stay in
    the history; rolling back to one is refused with `adapter_not_found`."""
    adapter = await get_adapter(services.resources.db, tenant=tenant, adapter_id=adapter_id)
    users = [key for key in module_keys() if (await services.configs.current(tenant, key)).config.adapter == adapter.id]
    if users:
        raise ConflictError(
            f"adapter {adapter.id!r} is in use", code="adapter_in_use",
            details=[f"module {key!r}: its current config names the adapter" for key in users],
        )
    await delete_adapter(services.resources.db, tenant=tenant, adapter_id=adapter.id)
    await services.finetune.reload_adapters()
