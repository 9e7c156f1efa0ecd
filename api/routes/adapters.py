"""Fine-tuned LoRA adapters of the small model: what each was trained on, and how well it does.

A module answers with an adapter once its config names it (`PUT`/`PATCH
/v1/modules/{name}/config` with `adapter`); switching back or to another one is an
ordinary config change, with history and rollback. An adapter is deleted only when no
module's current config names it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from api.deps import ServicesDep, TenantDep
from api.schemas import AdapterOut
from core.errors import ConflictError
from finetune.registry import Adapter, delete_adapter, get_adapter, list_adapters
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
