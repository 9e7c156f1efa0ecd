"""Optimize jobs over REST on the real stack (bundled Valkey, in-process worker, embedded
engine, real model and contracts): the embedded engine builds no vector index by itself, so
Sieve optimizes a collection after a big enough ingestion, or when asked."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from core import db
from tests.conftest import make_settings, wait_for_job

pytestmark = pytest.mark.integration

CONTRACT = "cuad_ABILITYINC_06_15_2020-EX-4.25-SERVICES_AGREEMENT.txt"
THRESHOLD = 20  # chunks; the contract has more (41), the note fewer (1)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, valkey_url: str):
    from api.main import create_app

    settings = make_settings(tmp_path_factory.mktemp("sieve-optimize"), valkey_url, optimize_after_chunks=THRESHOLD)
    with TestClient(create_app(settings, models=False)) as c:
        assert c.post("/v1/collections", json={"name": "contracts", "domain": "legal"}).status_code == 201
        yield c


def optimize_jobs(client: TestClient) -> list[dict]:
    """The recorded optimize jobs, oldest first."""
    engine = client.app.state.services.resources.db

    async def rows() -> list[dict]:
        async with engine.connect() as conn:
            query = select(db.jobs).where(db.jobs.c.kind == "optimize").order_by(db.jobs.c.created_at)
            return [dict(row._mapping) for row in await conn.execute(query)]

    return client.portal.call(rows)


def upload(client: TestClient, name: str, data: bytes) -> dict:
    response = client.post("/v1/collections/contracts/documents", files=[("files", (name, data))])
    assert response.status_code == 202, response.text
    return wait_for_job(client, response.json()["job_id"])


def search(client: TestClient) -> list[tuple[str, str]]:
    body = {"collection": "contracts", "question": "Which law governs the agreement?", "k": 5}
    response = client.post("/v1/search", json=body)
    assert response.status_code == 200, response.text
    return [(hit["doc_id"], hit["text"]) for hit in response.json()["results"]]


def test_a_big_ingestion_queues_an_optimize_job_a_small_one_does_not(client: TestClient, eval_dir: Path) -> None:
    ingested = upload(client, CONTRACT, (eval_dir / "cuad" / "corpus" / CONTRACT).read_bytes())
    assert ingested["state"] == "done" and ingested["chunks_done"] >= THRESHOLD
    [automatic] = optimize_jobs(client)
    assert automatic["collection"] == "contracts"
    job = wait_for_job(client, automatic["id"])
    assert job["kind"] == "optimize" and job["state"] == "done"
    assert job["result"]["chunks"] == client.get("/v1/collections/contracts").json()["chunks"]

    small = upload(client, "note.txt", b"This short note is governed by the laws of Delaware.")
    assert small["state"] == "done" and 0 < small["chunks_done"] < THRESHOLD
    assert len(optimize_jobs(client)) == 1


def test_optimize_on_request_keeps_every_chunk_and_answer(client: TestClient) -> None:
    before = search(client)
    chunks = client.get("/v1/collections/contracts").json()["chunks"]
    response = client.post("/v1/collections/contracts/optimize")
    assert response.status_code == 202
    accepted = response.json()
    assert response.headers["Location"] == accepted["status_url"] == f"/v1/jobs/{accepted['job_id']}"
    job = wait_for_job(client, accepted["job_id"])
    assert job["state"] == "done", job
    assert job["result"]["chunks"] == chunks and isinstance(job["result"]["changed"], bool)
    assert search(client) == before
    assert client.get("/v1/collections/contracts").json()["chunks"] == chunks


def test_optimizing_an_unknown_collection_is_a_typed_404(client: TestClient) -> None:
    response = client.post("/v1/collections/nope/optimize")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "collection_not_found"


def test_the_cli_optimizes_and_reports(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from contextlib import nullcontext

    from typer.testing import CliRunner

    from cli import main as cli

    monkeypatch.setattr(cli, "_client", lambda url: nullcontext(client))
    result = CliRunner().invoke(cli.app, ["optimize", "contracts"])
    assert result.exit_code == 0, result.output
    assert "optimizing contracts" in result.output and " done: " in result.output and '"chunks"' in result.output
    missing = CliRunner().invoke(cli.app, ["optimize", "nope"])
    assert missing.exit_code == 1 and "collection_not_found" in missing.output
