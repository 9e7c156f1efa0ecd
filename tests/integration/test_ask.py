"""`POST /v1/ask` end to end: real documents, the real embedding model, the embedded
small model behind llama.cpp's OpenAI-compatible server."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import make_settings, wait_for_job

pytestmark = pytest.mark.integration

PDF = "AMCOR_2023Q4_EARNINGS.pdf"
CONTRACT = "cuad_ABILITYINC_06_15_2020-EX-4.25-SERVICES_AGREEMENT.txt"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, valkey_url: str, eval_dir: Path):
    from api.main import create_app

    settings = make_settings(tmp_path_factory.mktemp("sieve-ask"), valkey_url)
    with TestClient(create_app(settings)) as c:
        assert c.post("/v1/collections", json={"name": "mixed"}).status_code == 201
        files = [
            ("files", (PDF, (eval_dir / "financebench" / "pdfs" / PDF).read_bytes())),
            ("files", (CONTRACT, (eval_dir / "cuad" / "corpus" / CONTRACT).read_bytes())),
        ]
        job = wait_for_job(c, c.post("/v1/collections/mixed/documents", files=files).json()["job_id"])
        assert job["state"] == "done" and not job["errors"]
        yield c


def test_answer_cites_the_document_and_page_it_used(client: TestClient) -> None:
    response = client.post(
        "/v1/ask", json={"collection": "mixed", "question": "What were Amcor's net sales in the fourth quarter?"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["answer"].strip()
    assert body["decision"] in ("answered", "escalated", "abstained")
    assert 0.0 <= body["confidence"] <= 1.0
    assert body["model"] and body["trace_id"].startswith("tr_")
    assert body["citations"], body
    first = body["citations"][0]
    assert first["filename"] == PDF and isinstance(first["page"], int) and 1 <= first["page"] <= 14
    assert first["text"] and first["doc_id"].startswith("doc_")


def test_trace_records_stages_and_model_calls(client: TestClient) -> None:
    body = client.post(
        "/v1/ask", json={"collection": "mixed", "question": "Which law governs the services agreement?"}
    ).json()
    trace = client.get(f"/v1/traces/{body['trace_id']}").json()
    assert trace["question"] == "Which law governs the services agreement?"
    assert trace["route"] == {"module": "generic", "by": "collection", "score": None}
    assert trace["module"]["key"] == "generic" and trace["module"]["config_revision"] == 0
    assert len(trace["module"]["config_hash"]) == 16 and body["route"]["module"] == "generic"
    assert {"fetch", "normalize", "filter", "generate_small"} <= set(trace["latency_ms"])
    candidates = trace["stages"]["candidates"]
    assert candidates and any(c["kept"] for c in candidates)
    assert all(c["reason"] for c in candidates if not c["kept"])
    assert trace["models"][0]["prompt_tokens"] > 0 and trace["models"][0]["completion_tokens"] > 0


def test_asking_an_unknown_collection_is_a_typed_404(client: TestClient) -> None:
    response = client.post("/v1/ask", json={"collection": "nope", "question": "anything?"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "collection_not_found"
    empty = client.post("/v1/ask", json={"collection": "mixed", "question": ""})
    assert empty.status_code == 422
