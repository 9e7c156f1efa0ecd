"""The cascade end to end: the real small model, and a large tier that is not there.

Escalation is forced by the module's config (`escalate_below=1.0`); the large tier points
at a closed port, so the answer must come back as the small model's, flagged `degraded`,
with a 200. Two model calls in all (one answer; the abstention asks no model)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from core.settings import ModelTier
from tests.conftest import make_settings, wait_for_job

pytestmark = pytest.mark.integration

DOC = (
    "Acme Corp annual report, fiscal 2023.\n\n"
    "Acme Corp reported revenue of $4.2 billion in fiscal 2023, up 8% from fiscal 2022. "
    "Its headquarters are in Denver, Colorado."
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, valkey_url: str):
    from api.main import create_app

    dead = ModelTier(url="http://127.0.0.1:9/v1", model="dead", retries=0, timeout_s=2)
    settings = make_settings(tmp_path_factory.mktemp("sieve-cascade"), valkey_url, large=dead)
    with TestClient(create_app(settings)) as c:
        assert c.post("/v1/collections", json={"name": "acme"}).status_code == 201
        job = wait_for_job(c, c.post("/v1/collections/acme/documents", files=[("files", ("acme_2023.txt", DOC.encode()))]).json()["job_id"])
        assert job["state"] == "done" and not job["errors"]
        saved = c.patch("/v1/modules/generic/config", json={"config": {"escalate_below": 1.0}})
        assert saved.status_code == 200, saved.text
        yield c


def test_a_dead_large_tier_degrades_to_the_small_answer(client: TestClient) -> None:
    response = client.post("/v1/ask", json={"collection": "acme", "question": "What was Acme Corp's revenue in fiscal 2023?"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["degraded"] is True and body["decision"] == "answered"
    assert body["answer"].strip() and body["model"] != "dead"
    trace = client.get(f"/v1/traces/{body['trace_id']}").json()
    small, large = trace["models"]
    assert small["tier"] == "small" and small["prompt_tokens"] > 0 and small["completion_tokens"] > 0
    assert large["tier"] == "large" and large["error"]
    assert {"generate_small", "generate_large", "confidence"} <= set(trace["latency_ms"])
    assert trace["decision"]["degraded"] is True and large["error"] in trace["decision"]["reason"]
    assert trace["confidence"]["value"] == body["confidence"] and trace["confidence"]["threshold"] == 1.0
    assert {"mean_logprob", "min_logprob", "mean_margin", "grounding", "sufficiency"} <= set(trace["confidence"]["features"])
    assert trace["cost"]["total"] == trace["cost"]["small"] == 0.0  # the embedded tiers are priced at 0


def test_a_question_the_documents_cannot_answer_abstains_without_a_model(client: TestClient) -> None:
    body = client.post(
        "/v1/ask", json={"collection": "acme", "question": "What was Globex Corporation's revenue in fiscal 2019?"}
    ).json()
    assert body["decision"] == "abstained" and body["citations"] == [] and not body["degraded"]
    trace = client.get(f"/v1/traces/{body['trace_id']}").json()
    assert trace["models"] == [] and trace["confidence"]["features"]["sufficiency"] < 0.2
