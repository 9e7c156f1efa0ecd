"""The `sieve` command: run the service, and script it over its REST API."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer

app = typer.Typer(help="Sieve: answers over your own documents.", no_args_is_help=True, add_completion=False)
models_app = typer.Typer(help="Model files for the embedded default.", no_args_is_help=True)
app.add_typer(models_app, name="models")

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


if __name__ == "__main__":
    app()
