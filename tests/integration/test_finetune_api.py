"""Fine-tuning over REST and the CLI on the real app (real SQLite, real Valkey queue): requests
checked before anything is queued, the job recorded and enqueued, adapters listed, and a
module config naming an adapter checked before it is saved.

No training runs here (it takes minutes to an hour; the slow benchmarks cover it): this
app runs no worker, so a fine-tuning job stays queued. Where the CLI follows a job to its
end, the test writes the worker's progress and result into the job record itself.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from arq.constants import job_key_prefix
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from core import db
from core.models import gguf_sha256, resolve_gguf
from finetune.jobs import QUEUE_NAME, finetune_dir
from finetune.registry import Adapter, adapter_id, save_adapter
from finetune.train import LoraSettings
from tests.conftest import make_settings

pytestmark = pytest.mark.integration

ANA = {"X-Sieve-User": "ana"}
PAIRS = "\n".join(
    json.dumps(p)
    for p in (
        {"id": "q1", "question": "Which state's law governs the agreement?", "answers": ["Delaware"]},
        {"id": "q2", "question": "Who may terminate the agreement?", "answers": ["Either party"]},
        {"id": "q3", "question": "What is the royalty rate?", "answers": [], "answerable": False},
    )
)
METRICS = {
    "base": {"n": 10, "accuracy": 0.4, "abstention_recall": 0.25, "false_abstention_rate": 0.1},
    "tuned": {"n": 10, "accuracy": 0.6, "abstention_recall": 0.75, "false_abstention_rate": None},
}
TRAINING = {"steps": 12, "losses": [2.1, 1.4], "seconds": 3725.0, "seconds_per_step": 310.4, "total_seconds": 3900.0,
            "peak_rss_mib": 2210.0, "mean_tokens": 900.0}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, valkey_url: str):
    from api.main import create_app

    # No worker: it would train for real. Jobs stay queued, which is what these tests check.
    settings = make_settings(tmp_path_factory.mktemp("sieve-finetune"), valkey_url, run_worker_in_api=False)
    with TestClient(create_app(settings, models=False)) as c:
        assert c.post("/v1/collections", json={"name": "contracts", "domain": "legal"}).status_code == 201
        yield c
        # The Valkey is shared by the session: take this app's jobs off the queue.
        ids = finetune_jobs(c)
        if ids:
            redis = c.app.state.services.resources.redis
            c.portal.call(redis.zrem, QUEUE_NAME, *ids)
            c.portal.call(redis.delete, *(job_key_prefix + i for i in ids))


def run(client: TestClient, coroutine_function, *args):
    """Run an async function on the app's event loop (where its database engine lives)."""
    return client.portal.call(coroutine_function, *args)


def finetune_jobs(client: TestClient) -> list[str]:
    """Ids of the recorded fine-tuning jobs, oldest first."""
    engine = client.app.state.services.resources.db

    async def ids() -> list[str]:
        async with engine.connect() as conn:
            query = select(db.jobs.c.id).where(db.jobs.c.kind == "finetune").order_by(db.jobs.c.created_at)
            return list((await conn.scalars(query)).all())

    return run(client, ids)


def set_job(client: TestClient, job_id: str, **values) -> None:
    """Write into a job record what the fine-tuning worker would."""
    engine = client.app.state.services.resources.db

    async def write() -> None:
        async with engine.begin() as conn:
            await conn.execute(update(db.jobs).where(db.jobs.c.id == job_id).values(**values))

    run(client, write)


def add_adapter(client: TestClient, adapter_id: str, module: str, *, tenant: str = "default", age_s: int = 0) -> None:
    resources = client.app.state.services.resources
    adapter = Adapter(
        id=adapter_id, tenant=tenant, module=module, base_model="gemma-3-270m",
        path=resources.settings.data_dir / "adapters" / adapter_id,
        meta={"metrics": METRICS, "hyperparameters": {"rank": 8}, "data_hash": "d" * 64, "base_gguf_sha256": "b" * 64,
              "collection": "contracts", "examples": {"train": 30, "eval": 10}, "training": TRAINING, "job_id": "ft_x"},
        created_at=db.utcnow() - timedelta(seconds=age_s),
    )
    run(client, save_adapter, resources.db, adapter)


def post(client: TestClient, **body):
    return client.post("/v1/finetune", json={"collection": "contracts", "module": "legal", "pairs": PAIRS, **body})


def error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_bad_training_data_is_refused_line_by_line_and_nothing_is_queued(client: TestClient) -> None:
    before = finetune_jobs(client)
    bad = PAIRS + '\nnot json\n{"question": "", "answers": ["x"]}\n{"question": "Why?", "answers": "because"}'
    e = error(post(client, pairs=bad), 422)
    assert e["code"] == "finetune_bad_data"
    assert [d.split(":")[0] for d in e["details"]] == ["line 4", "line 5", "line 6"], e
    assert "not JSON" in e["details"][0] and "'answers' must be a list" in e["details"][2]
    for empty in ("", "\n  \n"):
        assert error(post(client, pairs=empty), 422)["code"] == "finetune_empty_data"
    one = PAIRS.splitlines()[0]
    assert error(post(client, pairs=one, settings={"eval_fraction": 0.9}), 422)["code"] == "finetune_empty_data"
    assert error(post(client, module="astrology"), 404)["code"] == "module_not_found"
    assert error(post(client, collection="nowhere"), 404)["code"] == "collection_not_found"
    assert finetune_jobs(client) == before


def test_bad_settings_are_refused_one_line_per_problem(client: TestClient) -> None:
    before = finetune_jobs(client)
    e = error(post(client, settings={"rnak": 8, "learning_rate": -1, "max_steps": 0}), 422)
    assert e["code"] == "validation_failed"
    assert sorted(d.split(":")[0] for d in e["details"]) == [
        "settings.learning_rate", "settings.max_steps", "settings.rnak"
    ], e
    upload = client.post(
        "/v1/finetune/upload", files={"file": ("pairs.jsonl", PAIRS.encode())},
        data={"collection": "contracts", "module": "legal", "settings": '{"rank": 0, "alpah": 1}'},
    )
    assert sorted(error(upload, 422)["details"]) == [
        "settings.alpah: Extra inputs are not permitted", "settings.rank: Input should be greater than or equal to 1"
    ]
    assert finetune_jobs(client) == before


def test_a_valid_request_is_recorded_queued_and_followed_as_a_job(client: TestClient) -> None:
    response = post(client, settings={"rank": 8, "max_steps": 3})
    assert response.status_code == 202, response.text
    accepted = response.json()
    job_id = accepted["job_id"]
    assert accepted == {"job_id": job_id, "state": "queued", "pairs": 3, "status_url": f"/v1/jobs/{job_id}"}
    assert response.headers["location"] == f"/v1/jobs/{job_id}"
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["kind"] == "finetune" and job["state"] == "queued" and job["collection"] == "contracts"
    assert job["files"] == [] and job["errors"] == [] and job["result"] is None
    assert job["progress"] == {"phase": "queued", "module": "legal", "pairs": 3}
    redis = client.app.state.services.resources.redis
    queued = run(client, lambda: redis.queued_jobs(queue_name=QUEUE_NAME))
    assert job_id in {j.job_id for j in queued}
    request = json.loads((finetune_dir(client.app.state.services.resources.settings) / "jobs" / job_id / "request.json")
                         .read_text())
    assert request["lora"]["rank"] == 8 and request["lora"]["max_steps"] == 3 and request["lora"]["seed"] == 0

    upload = client.post(
        "/v1/finetune/upload", files={"file": ("pairs.jsonl", PAIRS.encode())},
        data={"collection": "contracts", "module": "legal", "settings": '{"epochs": 2}'},
    )
    assert upload.status_code == 202 and upload.json()["pairs"] == 3, upload.text
    assert finetune_jobs(client)[-2:] == [job_id, upload.json()["job_id"]]
    missing = client.get("/v1/jobs/ft_nope")
    assert error(missing, 404)["code"] == "job_not_found"


def test_adapters_are_listed_per_tenant_and_module(client: TestClient) -> None:
    add_adapter(client, "legal-aaaaaaaaaaaa", "legal", age_s=60)
    add_adapter(client, "finance-bbbbbbbbbbbb", "finance")
    add_adapter(client, "legal-cccccccccccc", "legal", tenant="someone-else")
    listed = client.get("/v1/adapters").json()
    assert [a["id"] for a in listed] == ["finance-bbbbbbbbbbbb", "legal-aaaaaaaaaaaa"]
    (legal,) = client.get("/v1/adapters", params={"module": "legal"}).json()
    assert legal["module"] == "legal" and legal["base_model"] == "gemma-3-270m"
    assert legal["meta"]["metrics"] == METRICS and legal["meta"]["training"]["steps"] == 12
    assert client.get("/v1/adapters/legal-aaaaaaaaaaaa").json() == legal
    assert error(client.get("/v1/adapters/legal-cccccccccccc"), 404)["code"] == "adapter_not_found"
    assert error(client.get("/v1/adapters", params={"module": "astrology"}), 404)["code"] == "module_not_found"
    schema = client.get("/openapi.json").json()
    assert {"/v1/finetune", "/v1/finetune/upload", "/v1/adapters", "/v1/adapters/{adapter_id}"} <= set(schema["paths"])
    assert "delete" in schema["paths"]["/v1/adapters/{adapter_id}"]
    assert schema["components"]["schemas"]["LoraSettings"]["properties"]["rank"]["description"]
    modules = {m["key"]: m for m in client.get("/v1/modules").json()}
    assert "GET /v1/adapters" in modules["legal"]["config_schema"]["properties"]["adapter"]["description"]


def test_a_module_config_names_only_an_adapter_of_that_module(client: TestClient) -> None:
    add_adapter(client, "legal-dddddddddddd", "legal")
    add_adapter(client, "finance-eeeeeeeeeeee", "finance")
    add_adapter(client, "legal-cccccccccccc", "legal", tenant="someone-else")
    history = client.get("/v1/modules/legal/history").json()
    for method in (client.put, client.patch):
        unknown = method("/v1/modules/legal/config", json={"config": {"adapter": "legal-000000000000"}}, headers=ANA)
        e = error(unknown, 422)
        assert e["code"] == "adapter_not_found" and e["details"][0].startswith("adapter: ")
        other = method("/v1/modules/legal/config", json={"config": {"adapter": "finance-eeeeeeeeeeee"}}, headers=ANA)
        assert error(other, 422)["code"] == "adapter_module_mismatch"
        elsewhere = method("/v1/modules/legal/config", json={"config": {"adapter": "legal-cccccccccccc"}})
        assert error(elsewhere, 422)["code"] == "adapter_not_found"  # another tenant's
    invalid = client.post("/v1/modules/legal/config/validate", json={"config": {"adapter": "legal-000000000000"}})
    assert error(invalid, 422)["code"] == "adapter_not_found"
    assert client.get("/v1/modules/legal/history").json() == history

    saved = client.patch(
        "/v1/modules/legal/config", json={"config": {"adapter": "legal-dddddddddddd"}, "comment": "tuned"}, headers=ANA
    )
    assert saved.status_code == 200, saved.text
    assert saved.json()["config"]["adapter"] == "legal-dddddddddddd"
    # Other settings change as before; back to the base model is an ordinary change.
    assert client.patch("/v1/modules/legal/config", json={"config": {"max_chunks": 4}}).status_code == 200
    base = client.patch("/v1/modules/legal/config", json={"config": {"adapter": None}})
    assert base.status_code == 200 and base.json()["config"]["adapter"] is None
    latest = client.get("/v1/modules/legal/history").json()
    assert [c["path"] for e in latest[:3] for c in e["changes"]] == ["adapter", "max_chunks", "adapter"]
    assert latest[2]["changes"][0] == {"path": "adapter", "old": None, "new": "legal-dddddddddddd"}
    rolled = client.post("/v1/modules/legal/rollback", json={"revision": latest[2]["revision"]}).json()
    assert rolled["config"]["adapter"] == "legal-dddddddddddd"


def test_an_adapter_is_deleted_only_when_no_module_uses_it_and_rollback_to_it_is_refused(client: TestClient) -> None:
    add_adapter(client, "manuals-111111111111", "manuals")
    folder = client.app.state.services.resources.settings.data_dir / "adapters" / "manuals-111111111111"
    folder.mkdir(parents=True)
    (folder / "manuals-111111111111.gguf").write_bytes(b"GGUF")
    named = client.patch("/v1/modules/manuals/config", json={"config": {"adapter": "manuals-111111111111"}})
    assert named.status_code == 200, named.text

    in_use = error(client.delete("/v1/adapters/manuals-111111111111"), 409)
    assert in_use["code"] == "adapter_in_use" and in_use["details"] == ["module 'manuals': its current config names the adapter"]
    assert client.get("/v1/adapters/manuals-111111111111").status_code == 200 and folder.is_dir()

    assert client.patch("/v1/modules/manuals/config", json={"config": {"adapter": None}}).status_code == 200
    assert client.delete("/v1/adapters/manuals-111111111111").status_code == 204
    assert error(client.get("/v1/adapters/manuals-111111111111"), 404)["code"] == "adapter_not_found"
    assert not folder.exists()
    assert error(client.delete("/v1/adapters/manuals-111111111111"), 404)["code"] == "adapter_not_found"

    # The revision that named it stays in the history, but it cannot be made current again.
    named_revision = named.json()["revision"]
    refused = error(client.post("/v1/modules/manuals/rollback", json={"revision": named_revision}), 422)
    assert refused["code"] == "adapter_not_found"
    assert client.get("/v1/modules/manuals/config").json()["config"]["adapter"] is None


def test_an_adapter_trained_elsewhere_is_imported_only_when_its_manifest_checks_out(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = client.app.state.services.resources.settings
    base_sha = gguf_sha256(resolve_gguf(settings.small.gguf or "", settings.resolved_models_dir))
    hyper = LoraSettings(rank=8).model_dump()
    manifest = {
        "adapter_id": adapter_id("legal", base_sha, "d" * 64, hyper), "module": "legal", "base_gguf_sha256": base_sha,
        "data_hash": "d" * 64, "hyperparameters": hyper, "metrics": METRICS, "examples": {"train": 30, "eval": 10},
        "training": TRAINING,
    }
    gguf = b"GGUF\x03\x00\x00\x00" + bytes(64)

    def upload(m: dict, content: bytes = gguf):
        files = {"manifest": ("adapter.json", json.dumps(m)), "gguf": ("adapter.gguf", content)}
        return client.post("/v1/adapters/import", files=files)

    bad = error(upload({"module": "legal"}), 422)
    assert bad["code"] == "adapter_bad_manifest" and "adapter_id: Field required" in bad["details"]
    tampered = error(upload(dict(manifest, data_hash="e" * 64)), 422)
    assert tampered["code"] == "adapter_manifest_mismatch"
    other_base = dict(manifest, base_gguf_sha256="f" * 64, adapter_id=adapter_id("legal", "f" * 64, "d" * 64, hyper))
    assert error(upload(other_base), 422)["code"] == "adapter_base_mismatch"
    assert error(upload(manifest, b"PK\x03\x04"), 422)["code"] == "adapter_bad_file"
    unknown = dict(manifest, module="astrology", adapter_id=adapter_id("astrology", base_sha, "d" * 64, hyper))
    assert error(upload(unknown), 404)["code"] == "module_not_found"
    assert error(client.get(f"/v1/adapters/{manifest['adapter_id']}"), 404)["code"] == "adapter_not_found"

    imported = upload(manifest)
    assert imported.status_code == 201, imported.text
    adapter = imported.json()
    assert adapter["id"] == manifest["adapter_id"] and adapter["module"] == "legal"
    assert adapter["meta"]["imported"] and adapter["meta"]["metrics"] == METRICS
    assert adapter["meta"]["hyperparameters"]["rank"] == 8
    folder = settings.data_dir / "adapters" / adapter["id"]
    assert (folder / f"{adapter['id']}.gguf").read_bytes() == gguf
    assert json.loads((folder / "adapter.json").read_text())["data_hash"] == "d" * 64
    assert upload(manifest).status_code == 201  # the same adapter again: replaced, still one
    assert [a["id"] for a in client.get("/v1/adapters").json()].count(adapter["id"]) == 1
    assert client.patch("/v1/modules/legal/config", json={"config": {"adapter": adapter["id"]}}).status_code == 200
    assert client.patch("/v1/modules/legal/config", json={"config": {"adapter": None}}).status_code == 200

    from contextlib import nullcontext

    from typer.testing import CliRunner

    from cli import main as cli

    monkeypatch.setattr(cli, "_client", lambda url: nullcontext(client))
    run_folder = tmp_path / manifest["adapter_id"]
    run_folder.mkdir()
    (run_folder / "adapter.json").write_text(json.dumps(manifest))
    missing = CliRunner().invoke(cli.app, ["adapters", "import", str(run_folder)])
    assert missing.exit_code == 1 and f"{manifest['adapter_id']}.gguf does not exist" in missing.output
    (run_folder / f"{manifest['adapter_id']}.gguf").write_bytes(gguf)
    done = CliRunner().invoke(cli.app, ["adapters", "import", str(run_folder)])
    assert done.exit_code == 0 and f"use it: sieve modules set legal adapter={manifest['adapter_id']}" in done.output


def test_the_cli_fine_tunes_follows_the_job_and_lists_adapters(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from contextlib import nullcontext

    from typer.testing import CliRunner

    from cli import main as cli

    monkeypatch.setattr(cli, "_client", lambda url: nullcontext(client))
    data = tmp_path / "pairs.jsonl"
    data.write_text(PAIRS)
    args = ["finetune", "--collection", "contracts", "--module", "legal", "--data", str(data)]

    queued = CliRunner().invoke(cli.app, [*args, "--rank", "4", "--set", "learning_rate=0.001", "--no-wait"])
    assert queued.exit_code == 0, queued.output
    job_id = finetune_jobs(client)[-1]
    assert f"job {job_id}: 3 pair(s) queued" in queued.output
    lora = json.loads((finetune_dir(client.app.state.services.resources.settings) / "jobs" / job_id / "request.json")
                      .read_text())["lora"]
    assert lora["rank"] == 4 and lora["learning_rate"] == 0.001

    # Stand in for the worker: each poll of the CLI moves the newest job one step on.
    steps = [
        dict(state="running", progress={"phase": "training", "step": 3, "total_steps": 12, "loss": 1.23456,
                                        "examples_per_s": 0.5, "eta_s": 65.0}),
        dict(state="done", progress={"phase": "done"},
             result={"adapter_id": "legal-ffffffffffff", "reused": False, "metrics": METRICS, "training": TRAINING}),
    ]
    monkeypatch.setattr(cli.time, "sleep", lambda s: set_job(client, finetune_jobs(client)[-1], **steps.pop(0)))
    done = CliRunner().invoke(cli.app, [*args, "--max-steps", "12"])
    assert done.exit_code == 0, done.output
    assert "running: training step 3/12, loss 1.2346, 0.50 examples/s, ETA 1m 05s" in done.output
    assert "accuracy                 0.400  0.600" in done.output
    assert "false_abstention_rate    0.100      -" in done.output
    assert "12 steps in 1h 02m" in done.output
    assert "use it: sieve modules set legal adapter=legal-ffffffffffff" in done.output

    steps.append(dict(state="failed", result={"error": {"code": "finetune_example_too_long", "message": "too long",
                                                        "details": ["q1: 3000 tokens"]}}))
    failed = CliRunner().invoke(cli.app, args)
    assert failed.exit_code == 1 and "finetune_example_too_long: too long" in failed.output
    assert "q1: 3000 tokens" in failed.output

    add_adapter(client, "legal-999999999999", "legal")
    listed = CliRunner().invoke(cli.app, ["adapters", "list", "--module", "legal"])
    assert listed.exit_code == 0 and "legal-999999999999" in listed.output
    assert "accuracy 0.400 -> 0.600" in listed.output and "finance-" not in listed.output
    shown = CliRunner().invoke(cli.app, ["adapters", "show", "legal-999999999999"])
    assert shown.exit_code == 0, shown.output
    assert "for module legal" in shown.output and '"rank": 8' in shown.output
    assert "30 training, 10 held-out" in shown.output
    missing = CliRunner().invoke(cli.app, ["adapters", "show", "legal-nope"])
    assert missing.exit_code == 1 and "adapter_not_found" in missing.output
    deleted = CliRunner().invoke(cli.app, ["adapters", "delete", "legal-999999999999"])
    assert deleted.exit_code == 0 and "deleted adapter legal-999999999999" in deleted.output
    assert "legal-999999999999" not in CliRunner().invoke(cli.app, ["adapters", "list"]).output


def test_a_module_whose_adapter_is_not_loaded_answers_with_the_base_model(
    tmp_path: Path, valkey_url: str
) -> None:
    """The real small model: the adapter is registered but has no GGUF file, so reloading the
    server's adapters cannot load it; the base model answers, flagged, and the trace says so."""
    from api.main import create_app

    settings = make_settings(tmp_path, valkey_url, run_worker_in_api=False)
    with TestClient(create_app(settings)) as served:
        assert served.post("/v1/collections", json={"name": "notes"}).status_code == 201
        add_adapter(served, "generic-0a0a0a0a0a0a", "generic")
        # An empty collection: no abstention before the model, no escalation after it.
        config = {"adapter": "generic-0a0a0a0a0a0a", "abstain_below": 0.0, "escalate_below": 0.0}
        assert served.patch("/v1/modules/generic/config", json={"config": config}).status_code == 200
        response = served.post("/v1/ask", json={"collection": "notes", "question": "Who wrote the notes?"})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["degraded"] and answer["model"] == settings.small.model
        trace = served.get(f"/v1/traces/{answer['trace_id']}").json()
        assert trace["adapter_missing"] == "generic-0a0a0a0a0a0a"
        assert [(m["adapter"], m.get("error")) for m in trace["models"]] == [
            ("generic-0a0a0a0a0a0a", "adapter_not_found"), ("generic-0a0a0a0a0a0a", "adapter_not_found"), (None, None)
        ]
        assert "generic-0a0a0a0a0a0a not loaded" in trace["decision"]["reason"]
