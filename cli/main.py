"""The `sieve` command: run the service, and script it over its REST API."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import httpx
import typer

app = typer.Typer(help="Sieve: answers over your own documents.", no_args_is_help=True, add_completion=False)
models_app = typer.Typer(help="Model files for the embedded default.", no_args_is_help=True)
app.add_typer(models_app, name="models")
modules_app = typer.Typer(help="Domain modules and their configs, on a running service.", no_args_is_help=True)
app.add_typer(modules_app, name="modules")
adapters_app = typer.Typer(
    help="Fine-tuned LoRA adapters of the small model, on a running service.", no_args_is_help=True
)
app.add_typer(adapters_app, name="adapters")

UrlOpt = Annotated[str, typer.Option("--url", envvar="SIEVE_URL", help="Base URL of a running Sieve.")]
DEFAULT_URL = "http://127.0.0.1:8000"


def _offline_env() -> None:
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DO_NOT_TRACK"):
        os.environ.setdefault(key, "1")


def _logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


# ---- running the service ----


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (default SIEVE_HOST or 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default SIEVE_PORT or 8000).")] = None,
    verbose: bool = False,
) -> None:
    """Start the API (with the ingestion worker and embedded services unless configured otherwise)."""
    _offline_env()
    _logging(verbose)
    import uvicorn

    from api.main import create_app
    from core.settings import get_settings

    settings = get_settings()
    settings.host = host or settings.host
    settings.port = port or settings.port
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


@app.command()
def worker(
    burst: Annotated[bool, typer.Option(help="Stop when the queue is empty.")] = False,
    exclusive: Annotated[
        bool, typer.Option(help="This is the only worker: retry interrupted files at once.")
    ] = False,
) -> None:
    """Run an ingestion worker process (scale out by starting several, with a Qdrant server)."""
    _offline_env()
    _logging()
    from core.settings import get_settings
    from ingest.worker import run_worker

    asyncio.run(run_worker(get_settings(), burst=burst, exclusive=exclusive))


@app.command("finetune-worker")
def finetune_worker(
    burst: Annotated[bool, typer.Option(help="Stop when the queue is empty.")] = False,
) -> None:
    """Run a fine-tuning worker process, one job at a time (`sieve serve` runs its own)."""
    _offline_env()
    _logging()
    from core.settings import get_settings
    from finetune.worker import run_finetune_worker

    asyncio.run(run_finetune_worker(get_settings(), burst=burst))


@models_app.command("prepare")
def models_prepare() -> None:
    """Assemble and verify the GGUF files of the embedded model tiers (once; fast afterwards)."""
    _logging()
    from core.models import resolve_gguf
    from core.settings import get_settings

    settings = get_settings()
    for name, tier in (("small", settings.small), ("large", settings.large)):
        if tier.url or not tier.gguf or (name == "large" and not settings.serve_large):
            continue
        path = resolve_gguf(tier.gguf, settings.resolved_models_dir)
        typer.echo(f"{name} model {tier.model}: {path}")


# ---- scripting a running service ----


def _client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=httpx.Timeout(600.0, connect=5.0))


def _check(response: httpx.Response) -> dict | list:
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            message = f"{error['code']}: {error['message']}"
            for detail in error.get("details", []):
                message += f"\n  {detail}"
        except (ValueError, KeyError):
            message = response.text
        typer.echo(f"error ({response.status_code}) {message}", err=True)
        raise typer.Exit(1)
    return response.json() if response.content else {}


def _files_under(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


@app.command()
def ingest(
    path: Annotated[Path, typer.Argument(exists=True, help="A file, a zip archive or a folder.")],
    collection: Annotated[str, typer.Option("--collection", "-c")],
    domain: Annotated[str, typer.Option(help="Domain module, if the collection must be created.")] = "generic",
    wait: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = True,
    batch: Annotated[int, typer.Option(help="Files per upload request.")] = 200,
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """Upload documents to a collection (created if missing) and follow their ingestion."""
    files = _files_under(path)
    if not files:
        typer.echo("no files to upload", err=True)
        raise typer.Exit(1)
    root = path if path.is_dir() else path.parent
    with _client(url) as client:
        existing = {c["name"] for c in _check(client.get("/v1/collections"))}
        if collection not in existing:
            _check(client.post("/v1/collections", json={"name": collection, "domain": domain}))
            typer.echo(f"created collection {collection} ({domain})")
        job_ids = []
        for start in range(0, len(files), batch):
            group = files[start : start + batch]
            handles = [p.open("rb") for p in group]
            try:
                body = _check(
                    client.post(
                        f"/v1/collections/{collection}/documents",
                        files=[("files", (str(p.relative_to(root)), h)) for p, h in zip(group, handles)],
                    )
                )
            finally:
                for h in handles:
                    h.close()
            job_ids.append(body["job_id"])
            typer.echo(f"job {body['job_id']}: {body['files']} file(s) queued")
        if wait:
            failed = sum(_follow(client, job_id) for job_id in job_ids)
            raise typer.Exit(1 if failed else 0)


def _follow(client: httpx.Client, job_id: str) -> int:
    """Print a job's progress until it ends; returns its number of failed files."""
    last = None
    while True:
        job = _check(client.get(f"/v1/jobs/{job_id}"))
        line = (
            f"{job_id} {job['state']}: files {job['files_done']}/{job['files_total']}, "
            f"chunks {job['chunks_done']}/{job['chunks_total']}"
        )
        if line != last:
            typer.echo(line)
            last = line
        if job["state"] in ("done", "failed"):
            for f in job["files"]:
                detail = f"{f['error']['code']}: {f['error']['message']}" if f["error"] else f"{f['chunks_total']} chunks"
                typer.echo(f"  {f['state']:9} {f['filename']}  {detail}")
            return len(job["errors"])
        time.sleep(1.0)


@app.command()
def optimize(
    collection: Annotated[str, typer.Argument(help="The collection to index.")],
    wait: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = True,
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """Build a collection's vector indexes now (the embedded engine indexes only when optimized)."""
    with _client(url) as client:
        job_id = _check(client.post(f"/v1/collections/{collection}/optimize"))["job_id"]
        typer.echo(f"job {job_id}: optimizing {collection}")
        while wait:
            job = _check(client.get(f"/v1/jobs/{job_id}"))
            if job["state"] in ("done", "failed"):
                typer.echo(f"{job_id} {job['state']}: {json.dumps(job['result'])}")
                raise typer.Exit(1 if job["state"] == "failed" else 0)
            time.sleep(1.0)


@app.command()
def ask(
    question: str,
    collection: Annotated[str, typer.Option("--collection", "-c")],
    module: Annotated[str | None, typer.Option(help="Domain module (default: the collection's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw response.")] = False,
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """Ask a question; prints the answer, its citations, confidence and decision."""
    with _client(url) as client:
        body = {"collection": collection, "question": question}
        if module:
            body["module"] = module
        result = _check(client.post("/v1/ask", json=body))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(result["answer"])
    for i, c in enumerate(result["citations"], 1):
        page = f", page {c['page']}" if c["page"] else ""
        typer.echo(f"  [{i}] {c['filename']}{page}")
    typer.echo(
        f"({result['decision']} by {result['model']}, confidence {result['confidence']:.2f}, "
        f"trace {result['trace_id']})"
    )


def _print_chunk(c: dict) -> None:
    page = f", page {c['page']}" if c["page"] else ""
    verdict = "kept" if c["kept"] else f"dropped: {c['reason']}"
    typer.echo(f"  {c['similarity']:.3f}  {c['filename']}{page}  ({verdict})")
    typer.echo("        " + " ".join(c["text"].split())[:200])


@app.command()
def search(
    question: str,
    collection: Annotated[str, typer.Option("--collection", "-c")],
    module: Annotated[str | None, typer.Option(help="Domain module (default: the collection's).")] = None,
    k: Annotated[int, typer.Option("--k", min=1, max=100, help="Most chunks returned.")] = 10,
    explain: Annotated[bool, typer.Option(help="Also show the dropped candidates and why.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw response.")] = False,
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """Show the chunks a module keeps for a question (no answer is generated)."""
    body = {"collection": collection, "question": question, "k": k, "explain": explain}
    if module:
        body["module"] = module
    with _client(url) as client:
        result = _check(client.post("/v1/search", json=body))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    route = result["route"]
    typer.echo(f"module {result['module']} (by {route['by']}), config revision {result['config_revision']}")
    for c in result["results"]:
        _print_chunk(c)
    if result.get("dropped"):
        typer.echo("dropped:")
        for c in result["dropped"]:
            _print_chunk(c)
    typer.echo(f"({result['latency_ms'].get('total', 0):.0f} ms)")


def _settings(assignments: list[str]) -> dict:
    """`key=value` pairs as a config dict: dotted keys nest, values are JSON when they parse."""
    config: dict = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key:
            typer.echo(f"expected key=value, got {assignment!r}", err=True)
            raise typer.Exit(2)
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config


def _print_revision(r: dict) -> None:
    who = f" by {r['author']} at {r['created_at']}" if r.get("author") else " (defaults)"
    comment = f": {r['comment']}" if r.get("comment") else ""
    typer.echo(f"{r['module']} revision {r['revision']}{who}{comment}  [{r['config_hash']}]")


@modules_app.command("list")
def modules_list(url: UrlOpt = DEFAULT_URL) -> None:
    """Every module with its current config revision."""
    with _client(url) as client:
        for m in _check(client.get("/v1/modules")):
            typer.echo(f"{m['key']:12} revision {m['revision']:<4} {m['description']}")


@modules_app.command("config")
def modules_config(name: str, url: UrlOpt = DEFAULT_URL) -> None:
    """A module's current config."""
    with _client(url) as client:
        current = _check(client.get(f"/v1/modules/{name}/config"))
    _print_revision(current)
    typer.echo(json.dumps(current["config"], indent=2))


@modules_app.command("set")
def modules_set(
    name: str,
    assignments: Annotated[list[str], typer.Argument(help="key=value (values parsed as JSON when they can be).")],
    comment: Annotated[str | None, typer.Option(help="Why; shown in the history.")] = None,
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """Change some settings of a module's config (the others keep their values)."""
    with _client(url) as client:
        saved = _check(
            client.patch(f"/v1/modules/{name}/config", json={"config": _settings(assignments), "comment": comment})
        )
    _print_revision(saved)


@modules_app.command("history")
def modules_history(name: str, url: UrlOpt = DEFAULT_URL) -> None:
    """Every revision of a module's config, newest first, with what it changed."""
    with _client(url) as client:
        entries = _check(client.get(f"/v1/modules/{name}/history"))
    if not entries:
        typer.echo(f"{name}: defaults, never changed")
    for entry in entries:
        _print_revision(entry)
        for change in entry["changes"]:
            typer.echo(f"    {change['path']}: {json.dumps(change['old'])} -> {json.dumps(change['new'])}")


@modules_app.command("rollback")
def modules_rollback(name: str, revision: int, url: UrlOpt = DEFAULT_URL) -> None:
    """Make an earlier revision's config current again (0: the defaults)."""
    with _client(url) as client:
        _print_revision(_check(client.post(f"/v1/modules/{name}/rollback", json={"revision": revision})))


@modules_app.command("preview")
def modules_preview(
    name: str,
    question: str,
    collection: Annotated[str, typer.Option("--collection", "-c")],
    assignments: Annotated[list[str] | None, typer.Argument(help="key=value settings to try.")] = None,
    k: Annotated[int | None, typer.Option("--k", min=1, max=100, help="Curate as search does with this k.")] = None,
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """What a config change would do to a question, before saving it."""
    body = {"collection": collection, "question": question, "config": _settings(assignments or []), "k": k}
    with _client(url) as client:
        result = _check(client.post(f"/v1/modules/{name}/preview", json=body))
    for change in result["changes"]:
        typer.echo(f"{change['path']}: {json.dumps(change['old'])} -> {json.dumps(change['new'])}")
    current = {c["id"]: c for c in result["current"]["candidates"]}
    proposed = {c["id"]: c for c in result["proposed"]["candidates"]}
    typer.echo(f"{'rank':>4}  {'sim':>5}  {'current':30}  {'proposed':30}  chunk")
    for cid in sorted(current.keys() | proposed.keys(), key=lambda i: (current.get(i) or proposed[i])["rank"]):
        row = current.get(cid) or proposed[cid]
        verdicts = [
            ("kept" if c["kept"] else c["reason"]) if c else "not retrieved"
            for c in (current.get(cid), proposed.get(cid))
        ]
        page = f" p{row['page']}" if row["page"] else ""
        typer.echo(
            f"{row['rank']:>4}  {row['similarity']:5.3f}  {verdicts[0][:30]:30}  {verdicts[1][:30]:30}  "
            f"{row['filename']}{page}"
        )
    summary = result["summary"]
    typer.echo(
        f"the change drops {len(summary['kept_only_current'])} chunk(s) and adds "
        f"{len(summary['kept_only_proposed'])}"
    )


# ---- fine-tuning ----


METRICS = ("accuracy", "abstention_recall", "false_abstention_rate")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _finetune_line(job: dict) -> str:
    """One line of a fine-tuning job's progress: phase, then what the phase counts."""
    p = job["progress"] or {}
    phase = p.get("phase", "")
    line = f"{job['job_id']} {job['state']}: {phase}"
    if phase == "curating":
        line += f" {p.get('curated', 0)}/{p.get('pairs', '?')} questions"
    elif phase == "training" and p.get("step"):
        line += f" step {p['step']}/{p.get('total_steps') or '?'}, loss {p['loss']:.4f}"
        if p.get("examples_per_s"):
            line += f", {p['examples_per_s']:.2f} examples/s"
        if p.get("eta_s") is not None:
            line += f", ETA {_duration(p['eta_s'])}"
    elif phase.startswith("evaluating") and "answered" in p:
        line += f" {p['answered']}/{p.get('n_eval', '?')} answers"
    return line


def _print_metrics(metrics: dict | None) -> None:
    """Held-out metrics of the base model and the fine-tuned one, side by side."""
    base, tuned = (metrics or {}).get("base"), (metrics or {}).get("tuned")
    if not base or not tuned:
        typer.echo("  no held-out pairs: nothing was evaluated (eval_fraction 0?)")
        return

    def value(x: float | None) -> str:
        return "    -" if x is None else f"{x:5.3f}"

    typer.echo(f"  {'held-out (n=' + str(tuned['n']) + ')':24} {'base':>5}  {'tuned':>5}")
    for name in METRICS:
        typer.echo(f"  {name:24} {value(base.get(name))}  {value(tuned.get(name))}")


def _print_training(training: dict | None) -> None:
    if training:
        typer.echo(
            f"  training: {training['steps']} steps in {_duration(training['seconds'])} "
            f"({training['seconds_per_step']} s/step), peak memory {training['peak_rss_mib']:.0f} MiB"
        )


def _follow_finetune(client: httpx.Client, job_id: str) -> dict:
    """Print a fine-tuning job's progress until it ends; returns the final job."""
    last = None
    while True:
        job = _check(client.get(f"/v1/jobs/{job_id}"))
        line = _finetune_line(job)
        if line != last:
            typer.echo(line)
            last = line
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(2.0)


def _print_finetune_result(job: dict, module: str) -> None:
    result = job["result"] or {}
    if job["state"] == "failed":
        error = result.get("error") or {}
        typer.echo(f"fine-tuning failed: {error.get('code')}: {error.get('message')}", err=True)
        for detail in error.get("details") or []:
            typer.echo(f"  {detail}", err=True)
        return
    adapter = result["adapter_id"]
    reused = " (reused: the same data, base model and settings were trained before)" if result.get("reused") else ""
    typer.echo(f"adapter {adapter}{reused}")
    _print_metrics(result.get("metrics"))
    _print_training(result.get("training"))
    typer.echo(f"use it: sieve modules set {module} adapter={adapter}")


@app.command()
def finetune(
    collection: Annotated[str, typer.Option("--collection", "-c", help="Collection that gives the context.")],
    module: Annotated[str, typer.Option(help="Domain module the adapter is for.")],
    data: Annotated[
        Path, typer.Option(exists=True, dir_okay=False, help="JSONL, one pair a line: question, answers, answerable.")
    ],
    max_steps: Annotated[int | None, typer.Option(min=1, help="Stop after N optimizer steps.")] = None,
    epochs: Annotated[float | None, typer.Option(help="Passes over the training pairs.")] = None,
    rank: Annotated[int | None, typer.Option(min=1, help="LoRA rank.")] = None,
    eval_fraction: Annotated[float | None, typer.Option(help="Share of the pairs held out for evaluation.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the split, initialisation and order.")] = None,
    setting: Annotated[
        list[str] | None, typer.Option("--set", help="Another LoRA setting, key=value (see POST /v1/finetune).")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = True,
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """Fine-tune the small model for a module (a LoRA adapter), then print its metrics before and after."""
    lora = _settings(setting or [])
    named = {"max_steps": max_steps, "epochs": epochs, "rank": rank, "eval_fraction": eval_fraction, "seed": seed}
    lora.update({key: value for key, value in named.items() if value is not None})
    body = {"collection": collection, "module": module, "pairs": data.read_text(encoding="utf-8"), "settings": lora}
    with _client(url) as client:
        accepted = _check(client.post("/v1/finetune", json=body))
        typer.echo(f"job {accepted['job_id']}: {accepted['pairs']} pair(s) queued ({accepted['status_url']})")
        if not wait:
            return
        job = _follow_finetune(client, accepted["job_id"])
    _print_finetune_result(job, module)
    raise typer.Exit(1 if job["state"] == "failed" else 0)


@adapters_app.command("list")
def adapters_list(
    module: Annotated[str | None, typer.Option(help="Only the adapters of this module.")] = None,
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """The fine-tuned adapters, newest first, with held-out accuracy before and after."""
    with _client(url) as client:
        adapters = _check(client.get("/v1/adapters", params={"module": module} if module else None))
    if not adapters:
        typer.echo("no adapters")
    for a in adapters:
        metrics = a["meta"].get("metrics") or {}
        base, tuned = metrics.get("base") or {}, metrics.get("tuned") or {}
        accuracy = (
            f"accuracy {base['accuracy']:.3f} -> {tuned['accuracy']:.3f}" if "accuracy" in base and "accuracy" in tuned
            else "not evaluated"
        )
        typer.echo(f"{a['id']:24} {a['module']:12} {a['created_at'][:19]}  {accuracy}")


@adapters_app.command("show")
def adapters_show(adapter_id: str, url: UrlOpt = DEFAULT_URL) -> None:
    """One adapter: lineage, hyper-parameters, metrics before and after, training cost."""
    with _client(url) as client:
        a = _check(client.get(f"/v1/adapters/{adapter_id}"))
    meta = a["meta"]
    typer.echo(f"adapter {a['id']} for module {a['module']}, created {a['created_at'][:19]}")
    typer.echo(f"  base model {a['base_model']} (sha256 {meta.get('base_gguf_sha256', '?')})")
    examples = meta.get("examples") or {}
    typer.echo(
        f"  data {meta.get('data_hash', '?')} from collection {meta.get('collection', '?')}: "
        f"{examples.get('train', '?')} training, {examples.get('eval', '?')} held-out pairs "
        f"(job {meta.get('job_id', '?')})"
    )
    typer.echo(f"  hyper-parameters {json.dumps(meta.get('hyperparameters') or {}, sort_keys=True)}")
    _print_metrics(meta.get("metrics"))
    _print_training(meta.get("training"))


@adapters_app.command("import")
def adapters_import(
    folder: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="The adapter's folder: adapter.json and <id>.gguf.")],
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """Register an adapter trained elsewhere (a GPU machine, `bench.finetune_bench`, another Sieve)."""
    manifest = folder / "adapter.json"
    if not manifest.is_file():
        typer.echo(f"error: {manifest} does not exist (a fine-tuning run writes it beside the GGUF)", err=True)
        raise typer.Exit(1)
    ident = json.loads(manifest.read_text()).get("adapter_id", folder.name)
    gguf = folder / f"{ident}.gguf"
    if not gguf.is_file():
        typer.echo(f"error: {gguf} does not exist", err=True)
        raise typer.Exit(1)
    with _client(url) as client, manifest.open("rb") as m, gguf.open("rb") as g:
        a = _check(client.post("/v1/adapters/import", files={"manifest": ("adapter.json", m), "gguf": (gguf.name, g)}))
    typer.echo(f"imported adapter {a['id']} for module {a['module']}")
    typer.echo(f"use it: sieve modules set {a['module']} adapter={a['id']}")


@adapters_app.command("delete")
def adapters_delete(adapter_id: str, url: UrlOpt = DEFAULT_URL) -> None:
    """Delete an adapter no module's current config names (its files too)."""
    with _client(url) as client:
        _check(client.delete(f"/v1/adapters/{adapter_id}"))
    typer.echo(f"deleted adapter {adapter_id}")


# ---- calibration and evaluation (in-process: nothing needs to be running) ----


QUESTIONS_HELP = "JSONL, one question a line: question, answers, answerable, domain."
EVAL_MODES = "cascade,small_only,large_only"


@asynccontextmanager
async def _in_process(settings):
    """The app's services and an httpx client on its REST API, in this process. With the
    embedded Qdrant engine the data folder must not be in use by a running `sieve serve`."""
    from api.main import create_app

    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://sieve", timeout=600.0) as http:
            yield application.state.services, http


@app.command()
def calibrate(
    questions: Annotated[Path, typer.Option(exists=True, dir_okay=False, help=QUESTIONS_HELP)],
    collection: Annotated[str, typer.Option("--collection", "-c", help="The collection holding the documents.")],
    module: Annotated[str | None, typer.Option(help="Domain module (default: the collection's).")] = None,
    limit: Annotated[
        int | None, typer.Option(min=2, help="Use the first N questions (a small-model answer takes 3-8 s on 2 cores).")
    ] = None,
    l2: Annotated[float, typer.Option(min=0.0, help="L2 penalty of the logistic regression.")] = 1.0,
) -> None:
    """Fit each module's confidence calibration from labelled questions and store it as a new version."""
    _offline_env()
    _logging()
    from core.settings import get_settings
    from retrieval.evaluation import calibrate as run_calibration, load_questions

    settings = get_settings()
    items = load_questions(questions, limit)

    async def run():
        async with _in_process(settings) as (services, _http):
            return await run_calibration(
                services.ask, tenant=settings.default_tenant, collection=collection, module=module, items=items,
                l2=l2, progress=typer.echo,
            )

    failed = False
    for report in asyncio.run(run()):
        if report.stored is None:
            typer.echo(f"{report.module}: not calibrated ({report.skipped}; {report.metrics['n']} answers)")
            failed = True
            continue
        m = report.metrics
        typer.echo(f"{report.module}: calibration version {report.stored.version} from {m['n']} answers")
        for kind in ("in_sample", "cross_validated"):
            if kind in m:
                k = m[kind]
                typer.echo(f"  {kind:15} brier {k['brier']:.3f}  ece {k['ece']:.3f}  log-loss {k['log_loss']:.3f}  "
                           f"accuracy@0.5 {k['accuracy']:.3f}  right {k['positives']}/{k['n']}")
        shares = ", ".join(
            f"{share:.0%} below {report.stored.calibrator.threshold_for_share(share):.2f}" for share in (0.2, 0.3, 0.4)
        )
        typer.echo(f"  escalation share -> confidence threshold: {shares}")
    raise typer.Exit(1 if failed else 0)


@app.command("eval")
def evaluate(
    questions: Annotated[Path, typer.Option(exists=True, dir_okay=False, help=QUESTIONS_HELP)],
    corpus: Annotated[
        Path, typer.Option(exists=True, file_okay=False, help="Folder of documents the questions are about.")
    ],
    out: Annotated[Path, typer.Option(help="Where results.jsonl, summary.json/.md and plots are written.")],
    limit: Annotated[int | None, typer.Option(min=1, help="Ask only the first N questions.")] = None,
    modes: Annotated[str, typer.Option(help="Comma-separated, of: cascade, small_only, large_only.")] = EVAL_MODES,
    module: Annotated[str | None, typer.Option(help="Domain module (default: from the questions' domain).")] = None,
    collection: Annotated[
        str | None, typer.Option(help="Collection name (default: eval-<set>-<content hash>).")
    ] = None,
) -> None:
    """Ingest a corpus once, ask every question in each mode, and write per-question results,
    a summary (JSON, Markdown) and plots."""
    _offline_env()
    _logging()
    from core.settings import get_settings
    from retrieval.evaluation import ensure_corpus, evaluate as run_evaluation, load_questions, module_for

    settings = get_settings()
    items = load_questions(questions, limit)
    key = module or module_for(items)
    wanted = [m.strip() for m in modes.split(",") if m.strip()]

    async def run():
        async with _in_process(settings) as (services, http):
            name = await ensure_corpus(http, corpus, domain=key, collection=collection, progress=typer.echo)
            await run_evaluation(
                services.ask, tenant=settings.default_tenant, collection=name, module=key, items=items, modes=wanted,
                out=out, questions_path=questions, progress=typer.echo,
            )

    asyncio.run(run())
    typer.echo((out / "summary.md").read_text())


if __name__ == "__main__":
    app()
