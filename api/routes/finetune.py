"""Fine-tuning: a LoRA adapter of the small model, trained on an analyst's labelled questions.

A request is checked (training data, module, collection, settings) before anything is
queued; the job then curates every question's context with the module, trains, evaluates
the base and the fine-tuned model on held-out pairs, and registers the adapter
(`GET /v1/adapters`). A module config that names the adapter serves it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Response, UploadFile, status
from pydantic import ValidationError

from api.deps import ServicesDep, TenantDep
from api.schemas import PAIRS_DESCRIPTION, FinetuneAccepted, FinetuneRequest
from core.errors import PayloadTooLargeError, ValidationFailedError, validation_details
from finetune.jobs import create_finetune_job
from finetune.train import LoraSettings
from ingest.jobs import get_job

router = APIRouter(prefix="/v1/finetune", tags=["finetune"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "`module_not_found`, `collection_not_found`"},
    413: {"description": "`finetune_data_too_large`: the training data is over the `max_file_bytes` setting"},
    422: {
        "description": "`finetune_bad_data` (one `line N: problem` detail per bad line), `finetune_empty_data`, "
        "`finetune_example_too_long`, or `validation_failed` (one `path: message` detail per bad setting)"
    },
}


async def _start(
    services: ServicesDep, response: Response, *, tenant: str, collection: str, module: str, pairs: str,
    lora: LoraSettings,
) -> FinetuneAccepted:
    r = services.resources
    limit = r.settings.max_file_bytes
    if len(pairs.encode()) > limit:
        raise PayloadTooLargeError(f"the training data is over {limit} bytes", code="finetune_data_too_large")
    job_id = await create_finetune_job(
        r.db, r.redis, r.settings, tenant=tenant, collection=collection, module=module, pairs_jsonl=pairs, lora=lora
    )
    job = await get_job(r.db, tenant=tenant, job_id=job_id)
    status_url = f"/v1/jobs/{job_id}"
    response.headers["Location"] = status_url
    return FinetuneAccepted(job_id=job_id, state=job.state, pairs=job.progress["pairs"], status_url=status_url)


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=FinetuneAccepted, responses=_ERRORS)
async def start_finetune(
    body: FinetuneRequest, response: Response, services: ServicesDep, tenant: TenantDep
) -> FinetuneAccepted:
    """Fine-tune the small model for a module on labelled questions (JSONL in `pairs`).

    Answers at once with a job id (and a `Location` header); follow it at
    `GET /v1/jobs/{job_id}`. Bad training data, an unknown module or collection and bad
    settings are refused here, before anything is queued. The finished job's `result`
    holds `adapter_id` and `metrics` (`base` and `tuned`); the same data, module config,
    base model and settings give the same adapter, which a second run reuses."""
    return await _start(
        services, response, tenant=tenant, collection=body.collection, module=body.module, pairs=body.pairs,
        lora=body.settings,
    )


@router.post("/upload", status_code=status.HTTP_202_ACCEPTED, response_model=FinetuneAccepted, responses=_ERRORS)
async def upload_finetune(
    file: Annotated[UploadFile, File(description=PAIRS_DESCRIPTION)],
    collection: Annotated[str, Form(description="Collection whose documents give each question its context.")],
    module: Annotated[str, Form(description="Key of the domain module the adapter is for.")],
    response: Response,
    services: ServicesDep,
    tenant: TenantDep,
    settings: Annotated[
        str | None, Form(description="LoRA hyper-parameters as a JSON object (see `POST /v1/finetune`).")
    ] = None,
) -> FinetuneAccepted:
    """`POST /v1/finetune` with the training data as an uploaded JSONL file (multipart form)."""
    limit = services.resources.settings.max_file_bytes
    if file.size is not None and file.size > limit:
        raise PayloadTooLargeError(f"the training data is over {limit} bytes", code="finetune_data_too_large")
    try:
        pairs = (await file.read()).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValidationFailedError(
            "the training data is not UTF-8 text", code="finetune_bad_data", details=[f"file: {e}"]
        ) from e
    return await _start(
        services, response, tenant=tenant, collection=collection, module=module, pairs=pairs,
        lora=_lora_settings(settings),
    )


def _lora_settings(raw: str | None) -> LoraSettings:
    """The `settings` form field as `LoraSettings`; problems as `settings.<path>: message`,
    as the JSON route's request validation words them."""
    try:
        values = json.loads(raw) if raw else {}
    except ValueError as e:
        raise ValidationFailedError("the request is not valid", details=[f"settings: not JSON ({e})"]) from e
    if not isinstance(values, dict):
        raise ValidationFailedError("the request is not valid", details=["settings: must be a JSON object"])
    try:
        return LoraSettings.model_validate(values)
    except ValidationError as e:
        raise ValidationFailedError("the request is not valid", details=validation_details(e, prefix="settings")) from e
