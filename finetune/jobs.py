"""Fine-tuning jobs: the request checked and recorded, then an arq job that builds the
examples with the module's curated context, trains in a child process, and registers the
adapter.

`create_finetune_job` refuses bad input (malformed or empty JSONL, an unknown module or
collection, a question longer than the model's context) before anything is queued. The
arq job `finetune` then:

1. curates every pair's context with the module's current config on the collection
   (the query-time stages) and writes the examples, content-addressed, under
   `<data_dir>/finetune/data/<sha256>.jsonl`;
2. returns at once if the registry already holds the adapter those examples, that base
   model and those settings produce (the adapter id is content-addressed);
3. runs `python -m finetune.run` in a child process (the model's memory is freed when it
   exits, and the API stays responsive), relaying its progress into the job record: phase,
   step, loss, examples/s, ETA;
4. registers the adapter with its metrics, and reloads the embedded small-model server so
   that a module config naming the adapter takes effect on the next question.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from arq import ArqRedis
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from core import catalog, db
from core.errors import NotFoundError, ServiceError, ValidationFailedError
from core.models import gguf_sha256, resolve_gguf
from core.runtime import chat_template_path
from core.settings import Settings
from finetune.data import Pair, build_examples, examples_hash, parse_pairs, write_examples
from finetune.registry import Adapter, AdapterManifest, adapter_id, adapters_dir, get_adapter, save_adapter
from finetune.run import FinetuneSpec
from finetune.train import LoraSettings
from ingest.jobs import set_job
from modules import module_keys

log = logging.getLogger(__name__)

QUEUE_NAME = "sieve:finetune"
JOB_KIND = "finetune"
JOB_TIMEOUT_S = 6 * 3600
# A question alone longer than this many characters cannot fit any small model's context.
MAX_QUESTION_CHARS = 4000


def finetune_dir(settings: Settings) -> Path:
    return settings.data_dir / "finetune"


async def create_finetune_job(
    engine: AsyncEngine,
    redis: ArqRedis,
    settings: Settings,
    *,
    tenant: str,
    collection: str,
    module: str,
    pairs_jsonl: str,
    lora: LoraSettings,
) -> str:
    """Check a fine-tuning request, record it as a job and enqueue it; returns the job id.

    Raises `NotFoundError` for an unknown module or collection and `ValidationFailedError`
    for bad training data, before anything is queued."""
    if module not in module_keys():
        raise NotFoundError(f"unknown module {module!r}", code="module_not_found", details=[f"modules: {', '.join(module_keys())}"])
    await catalog.get_collection(engine, tenant=tenant, name=collection)
    pairs = parse_pairs(pairs_jsonl)
    too_long = [f"{p.id}: {len(p.question)} characters" for p in pairs if len(p.question) > MAX_QUESTION_CHARS]
    if too_long:
        raise ValidationFailedError(
            f"{len(too_long)} question(s) are longer than {MAX_QUESTION_CHARS} characters",
            code="finetune_example_too_long", details=too_long[:20],
        )
    train_share = 1 - lora.eval_fraction
    if round(len(pairs) * train_share) < 1:
        raise ValidationFailedError(
            f"{len(pairs)} pair(s) leave nothing to train on with eval_fraction={lora.eval_fraction}",
            code="finetune_empty_data",
        )

    job_id = "ft_" + uuid.uuid4().hex[:20]
    work = finetune_dir(settings) / "jobs" / job_id
    work.mkdir(parents=True, exist_ok=True)
    (work / "pairs.jsonl").write_text(pairs_jsonl, encoding="utf-8")
    request = {"tenant": tenant, "collection": collection, "module": module, "lora": lora.model_dump(), "pairs": len(pairs)}
    (work / "request.json").write_text(json.dumps(request))
    async with engine.begin() as conn:
        await conn.execute(
            insert(db.jobs).values(
                id=job_id, tenant=tenant, kind=JOB_KIND, collection=collection, state="queued", files_total=0,
                progress={"phase": "queued", "module": module, "pairs": len(pairs)}, created_at=db.utcnow(),
            )
        )
    await redis.enqueue_job("finetune", job_id, _job_id=job_id, _queue_name=QUEUE_NAME)
    return job_id


def small_tier_base(settings: Settings) -> tuple[Path, str]:
    """The small tier's GGUF, which adapters are trained on, and its sha256. Blocking (may
    assemble and hash the file): call it from a thread."""
    gguf = resolve_gguf(settings.small.gguf or "", settings.resolved_models_dir)
    return gguf, gguf_sha256(gguf)


def plan_run(
    settings: Settings, *, module: str, examples_file: Path, data_hash: str, lora: LoraSettings, adapters_root: Path
) -> FinetuneSpec:
    """The spec of a training run of the small tier on `examples_file` (with the base GGUF's
    sha256). The adapter id (and so its folder under `adapters_root`) is content-addressed.
    Blocking (may assemble and hash the GGUF): call it from a thread."""
    tier = settings.small
    gguf, base_sha = small_tier_base(settings)
    ident = adapter_id(module, base_sha, data_hash, lora.model_dump())
    template = chat_template_path(tier.chat_template)
    spec = FinetuneSpec(
        adapter_id=ident, module=module, base_gguf=str(gguf), base_sha256=base_sha, data_hash=data_hash,
        checkpoints_dir=str(settings.resolved_models_dir / "checkpoints"),
        chat_template=str(template) if template else None, examples_file=str(examples_file),
        out_dir=str(adapters_root / ident), lora=lora, stop=tier.stop or ["\n\n"],
        server_context_tokens=tier.context_tokens,
    )
    return spec


# ---- the worker side ----


async def finetune(ctx: dict[str, Any], job_id: str) -> str:
    """arq job: run fine-tuning job `job_id`; returns its final state."""
    services = ctx["sieve"]
    resources = services.resources
    engine: AsyncEngine = resources.db
    settings: Settings = resources.settings
    async with engine.connect() as conn:
        job = (await conn.execute(select(db.jobs).where(db.jobs.c.id == job_id))).first()
    if job is None:
        log.warning("finetune: job %s not found; dropping", job_id)
        return "missing"
    if job.state in ("done", "failed"):
        return job.state
    work = finetune_dir(settings) / "jobs" / job_id
    request = json.loads((work / "request.json").read_text())
    progress: dict[str, Any] = dict(job.progress or {}, phase="preparing")
    await set_job(engine, job_id, state="running", started_at=db.utcnow(), progress=progress)
    try:
        result = await _run(services, job_id, work, request, progress)
    except ServiceError as e:
        await set_job(
            engine, job_id, state="failed", finished_at=db.utcnow(), error=f"{e.code}: {e.message}",
            result={"error": {"code": e.code, "message": e.message, "details": e.details}},
        )
        return "failed"
    except Exception as e:  # a bug or a library failure: recorded, not retried
        log.exception("finetune job %s failed", job_id)
        await set_job(
            engine, job_id, state="failed", finished_at=db.utcnow(), error=f"internal_error: {e!r}",
            result={"error": {"code": "internal_error", "message": repr(e), "details": []}},
        )
        return "failed"
    await set_job(engine, job_id, state="done", finished_at=db.utcnow(), result=result,
                   progress=dict(progress, phase="done"))
    return "done"


async def _run(services: Any, job_id: str, work: Path, request: dict[str, Any], progress: dict[str, Any]) -> dict[str, Any]:
    resources = services.resources
    engine, settings = resources.db, resources.settings
    tenant, module_key = request["tenant"], request["module"]
    lora = LoraSettings(**request["lora"])
    pairs = parse_pairs((work / "pairs.jsonl").read_text(encoding="utf-8"))

    async def report(**values: Any) -> None:
        progress.update(values)
        await set_job(engine, job_id, progress=dict(progress))

    await report(phase="curating", curated=0)
    examples = await _curate(services, tenant, request["collection"], module_key, pairs, report)
    data_hash = examples_hash(examples)
    data_file = finetune_dir(settings) / "data" / f"{data_hash}.jsonl"
    if not data_file.exists():
        write_examples(examples, data_file)

    tier = settings.small
    spec = await asyncio.to_thread(
        plan_run, settings, module=module_key, examples_file=data_file, data_hash=data_hash, lora=lora,
        adapters_root=adapters_dir(settings.data_dir),
    )
    new_id, out_dir = spec.adapter_id, Path(spec.out_dir)
    try:
        existing = await get_adapter(engine, tenant=tenant, adapter_id=new_id)
    except NotFoundError:
        existing = None
    if existing is not None and existing.gguf.is_file():
        return {"adapter_id": new_id, "reused": True, **existing.meta}

    spec_file = work / "spec.json"
    spec_file.write_text(spec.model_dump_json())
    outcome = await _run_child(spec_file, report)

    manifest = AdapterManifest.model_validate(outcome)
    meta = manifest.model_dump(exclude={"adapter_id", "module"}) | {
        "base_model": tier.model, "collection": request["collection"], "job_id": job_id,
    }
    adapter = Adapter(
        id=new_id, tenant=tenant, module=module_key, base_model=tier.model, path=out_dir, meta=meta,
        created_at=db.utcnow(),
    )
    await save_adapter(engine, adapter)
    await report(phase="loading")
    await services.reload_adapters()
    return {"adapter_id": new_id, "reused": False, **meta}


async def _curate(services: Any, tenant: str, collection: str, module_key: str, pairs: list[Pair], report) -> list:
    """Every pair with the context the module's current config gives at query time."""
    from retrieval.curate import curate

    search_service = services.search
    record = await catalog.get_collection(services.resources.db, tenant=tenant, name=collection)
    module, _revision = await search_service.module_for(tenant, module_key)
    search = search_service.search_context(record.vector_name, tenant)
    system_prompt = services.resources.settings.small.system_prompt
    done = 0
    examples = []
    for pair in pairs:
        examples += await asyncio.to_thread(
            build_examples, [pair], lambda p: curate(module, p.question, search).kept, system_prompt
        )
        done += 1
        if done % 10 == 0 or done == len(pairs):
            await report(curated=done)
    return examples


async def _run_child(spec_file: Path, report) -> dict[str, Any]:
    """Run `python -m finetune.run SPEC`, relaying its JSON progress lines; returns its result."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "finetune.run", str(spec_file),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=str(Path(__file__).resolve().parents[1]), env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    last_report = 0.0
    assert process.stdout is not None and process.stderr is not None
    stderr_task = asyncio.create_task(process.stderr.read())
    async for raw in process.stdout:
        try:
            message = json.loads(raw)
        except ValueError:
            continue
        kind = message.pop("event", None)
        if kind == "result":
            result = message
        elif kind == "error":
            error = message
        elif kind == "progress" and (time.monotonic() - last_report > 1.0 or message.get("phase") != "training"):
            last_report = time.monotonic()
            await report(**message)
    await process.wait()
    stderr = (await stderr_task).decode(errors="replace")
    if error is not None:
        raise ValidationFailedError(error["message"], code=error["code"], details=error.get("details") or [])
    if process.returncode != 0 or result is None:
        raise ServiceError(
            f"the training process exited with {process.returncode}: {stderr[-2000:]}", code="finetune_failed"
        )
    return result
