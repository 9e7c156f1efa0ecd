"""A tiny fine-tune end to end over the REST API: real PubMedQA abstracts and pairs, the
real small model (its GGUF converted once into `.cache/models/checkpoints`), two LoRA steps,
the before/after evaluation through llama-server, the adapter registered, the module pointed
at it, and the next answer given with it (its trace names the adapter).

The first run converts the GGUF (2-3 minutes on 2 cores); later runs reuse the checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import make_settings, wait_for_job

pytestmark = pytest.mark.integration

SETTINGS = {"max_steps": 2, "batch_size": 2, "rank": 4, "alpha": 8, "eval_fraction": 0.25, "eval_max_new_tokens": 8}


def dev_pairs(eval_dir: Path) -> tuple[list[dict], list[str]]:
    """Six answerable PubMedQA dev pairs with their abstracts, and two unanswerable ones."""
    rows = [json.loads(line) for line in (eval_dir / "pubmedqa" / "dev.jsonl").read_text().split("\n") if line.strip()]
    answerable = [r for r in rows if r["answerable"]][:6]
    unanswerable = [r for r in rows if not r["answerable"]][:2]
    return answerable + unanswerable, [f"{r['doc_ids'][0]}.txt" for r in answerable]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, valkey_url: str, eval_dir: Path):
    from api.main import create_app

    settings = make_settings(tmp_path_factory.mktemp("sieve-finetune"), valkey_url)
    _, files = dev_pairs(eval_dir)
    with TestClient(create_app(settings)) as c:
        assert c.post("/v1/collections", json={"name": "papers", "domain": "biomedical"}).status_code == 201
        upload = [("files", (name, (eval_dir / "pubmedqa" / "corpus" / name).read_bytes())) for name in files]
        job = wait_for_job(c, c.post("/v1/collections/papers/documents", files=upload).json()["job_id"])
        assert job["state"] == "done" and not job["errors"]
        # The small tier reads two sources: what an analyst sets before fine-tuning it.
        small_context = {"config": {"max_chunks": 2, "context_tokens": 600}}
        assert c.patch("/v1/modules/biomedical/config", json=small_context).status_code == 200
        yield c


def test_finetune_evaluate_register_and_answer_with_the_adapter(client: TestClient, eval_dir: Path) -> None:
    pairs, _ = dev_pairs(eval_dir)
    request = {
        "collection": "papers", "module": "biomedical", "pairs": "\n".join(json.dumps(p) for p in pairs),
        "settings": SETTINGS,
    }
    response = client.post("/v1/finetune", json=request)
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["job_id"], timeout_s=1200)
    assert job["kind"] == "finetune" and job["state"] == "done", job["result"]
    result = job["result"]
    adapter_id = result["adapter_id"]
    assert adapter_id.startswith("biomedical-") and not result["reused"]
    assert result["examples"] == {"train": 6, "eval": 2}
    training = result["training"]
    assert training["steps"] == 2 and all(math.isfinite(x) and x > 0 for x in training["losses"])
    for which in ("base", "tuned"):
        metrics = result["metrics"][which]
        assert metrics["n"] == 2 and 0.0 <= metrics["accuracy"] <= 1.0

    listed = client.get("/v1/adapters", params={"module": "biomedical"}).json()
    assert [a["id"] for a in listed] == [adapter_id]
    assert listed[0]["meta"]["data_hash"] == result["data_hash"]
    # The folder describes itself: imported again (as on another machine), it is the same adapter.
    folder = client.app.state.services.resources.settings.data_dir / "adapters" / adapter_id
    manifest = (folder / "adapter.json").read_bytes()
    assert json.loads(manifest)["metrics"] == result["metrics"]
    files = {"manifest": ("adapter.json", manifest), "gguf": (f"{adapter_id}.gguf", (folder / f"{adapter_id}.gguf").read_bytes())}
    reimported = client.post("/v1/adapters/import", files=files)
    assert reimported.status_code == 201 and reimported.json()["id"] == adapter_id, reimported.text

    # The same data, base model and settings give the same adapter: nothing is trained again.
    again = wait_for_job(client, client.post("/v1/finetune", json=request).json()["job_id"])
    assert again["state"] == "done" and again["result"]["adapter_id"] == adapter_id and again["result"]["reused"]

    assert client.patch("/v1/modules/biomedical/config", json={"config": {"adapter": adapter_id}}).status_code == 200
    answer = client.post("/v1/ask", json={"collection": "papers", "question": pairs[0]["question"]})
    assert answer.status_code == 200, answer.text
    trace = client.get(f"/v1/traces/{answer.json()['trace_id']}").json()
    small_calls = [m for m in trace["models"] if m["tier"] == "small"]
    assert small_calls and small_calls[0]["adapter"] == adapter_id


def test_bad_training_data_is_refused_before_any_job_starts(client: TestClient) -> None:
    response = client.post(
        "/v1/finetune",
        json={"collection": "papers", "module": "biomedical", "pairs": '{"question": "Q?"}\nnot json', "settings": SETTINGS},
    )
    assert response.status_code == 422 and response.json()["error"]["code"] == "finetune_bad_data"
