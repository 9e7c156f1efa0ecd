"""`/v1/search` and the module config API on the real stack: an analyst changes the generic
module's score floor, previews it, saves it, sees it in the history and in searches, and
rolls it back."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from modules.base import ModuleConfig
from tests.conftest import make_settings, wait_for_job

pytestmark = pytest.mark.integration

# Two short contracts (about 12 kB each) with a governing-law clause.
CONTRACTS = [
    "cuad_SPORTHALEYINC_09_29_1997-EX-10.2-10-ENDORSEMENT_AGREEMENT.txt",
    "cuad_LohaCompanyltd_20191209_F-1_EX-10.16_11917878_EX-10.16_Supply_Agreement.txt",
]
QUESTION = "Which state's law governs the agreement?"
ANA = {"X-Sieve-User": "ana"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, valkey_url: str, eval_dir: Path):
    from api.main import create_app

    settings = make_settings(tmp_path_factory.mktemp("sieve-modules"), valkey_url)
    with TestClient(create_app(settings, models=False)) as c:
        assert c.post("/v1/collections", json={"name": "contracts"}).status_code == 201
        files = [("files", (name, (eval_dir / "cuad" / "corpus" / name).read_bytes())) for name in CONTRACTS]
        job = wait_for_job(c, c.post("/v1/collections/contracts/documents", files=files).json()["job_id"])
        assert job["state"] == "done" and not job["errors"], job
        yield c


def search(client: TestClient, **body) -> dict:
    response = client.post("/v1/search", json={"collection": "contracts", "question": QUESTION, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_search_returns_ranked_cited_chunks(client: TestClient) -> None:
    body = search(client, k=5, explain=True)
    assert body["module"] == "generic" and body["config_revision"] == 0 and len(body["config_hash"]) == 16
    assert body["route"] == {"module": "generic", "by": "collection", "score": None}
    results = body["results"]
    assert 1 <= len(results) <= 5
    assert {r["filename"] for r in results} <= set(CONTRACTS)
    assert all(r["kept"] and r["reason"] is None and r["doc_id"].startswith("doc_") and r["text"] for r in results)
    assert any("law" in r["text"].lower() for r in results)
    assert body["dropped"] and all(not d["kept"] and d["reason"] for d in body["dropped"])
    assert {"embed_question", "fetch", "filter", "total"} <= set(body["latency_ms"])
    assert search(client, k=3)["dropped"] is None
    too_many = client.post("/v1/search", json={"collection": "contracts", "question": QUESTION, "k": 101})
    assert too_many.status_code == 422


def test_modules_are_listed_with_schema_and_revision(client: TestClient) -> None:
    modules = {m["key"]: m for m in client.get("/v1/modules").json()}
    generic = modules["generic"]
    assert generic["revision"] == 0 and generic["description"]
    assert generic["config_schema"]["properties"]["score_floor"]["description"]
    config = client.get("/v1/modules/generic/config").json()
    assert config["revision"] == 0 and config["config"]["score_floor"] == 0.0
    missing = client.get("/v1/modules/astrology/config")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "module_not_found"


def test_an_analyst_changes_the_score_floor_previews_saves_and_rolls_back(client: TestClient) -> None:
    before = search(client, k=10)
    similarities = sorted(r["similarity"] for r in before["results"])
    assert len(similarities) >= 4 and similarities[0] < similarities[-1]
    # A floor between the results: the weaker ones must go.
    floor = round((similarities[len(similarities) // 2 - 1] + similarities[len(similarities) // 2]) / 2, 4)
    weaker = {(r["doc_id"], r["text"]) for r in before["results"] if r["similarity"] < floor}
    assert weaker

    preview = client.post(
        "/v1/modules/generic/preview",
        json={"collection": "contracts", "question": QUESTION, "config": {"score_floor": floor}, "k": 10},
    )
    assert preview.status_code == 200, preview.text
    p = preview.json()
    assert p["changes"] == [{"path": "score_floor", "old": 0.0, "new": floor}]
    assert p["current"]["revision"] == 0 and p["current"]["config_hash"] == before["config_hash"]
    assert p["proposed"]["config_hash"] != p["current"]["config_hash"]
    dropped = p["summary"]["kept_only_current"]
    assert dropped and all("below floor" in d["reason"] for d in dropped)
    assert len(dropped) == len(weaker)
    # The proposed config may keep chunks the current one cut at its k limit, never weak ones.
    assert all("limit" in d["reason"] for d in p["summary"]["kept_only_proposed"])
    proposed = {c["id"]: c for c in p["proposed"]["candidates"]}
    assert all(not proposed[d["id"]]["kept"] and proposed[d["id"]]["similarity"] < floor for d in dropped)
    assert client.get("/v1/modules/generic/config").json()["revision"] == 0  # a preview saves nothing

    saved = client.patch(
        "/v1/modules/generic/config",
        json={"config": {"score_floor": floor}, "comment": "fewer weak chunks", "base_revision": 0},
        headers=ANA,
    )
    assert saved.status_code == 200, saved.text
    assert saved.json()["revision"] == 1 and saved.json()["config"]["score_floor"] == floor
    assert saved.json()["config"]["max_chunks"] == ModuleConfig().max_chunks  # PATCH keeps the rest

    history = client.get("/v1/modules/generic/history").json()
    assert [h["revision"] for h in history] == [1]
    assert history[0]["author"] == "ana" and history[0]["comment"] == "fewer weak chunks"
    assert history[0]["created_at"] and history[0]["changes"] == [{"path": "score_floor", "old": 0.0, "new": floor}]

    after = search(client, k=10, explain=True)
    assert after["config_revision"] == 1 and after["config_hash"] == p["proposed"]["config_hash"]
    assert all(r["similarity"] >= floor for r in after["results"])
    assert {(r["doc_id"], r["text"]) for r in after["results"]}.isdisjoint(weaker)
    assert any("below floor" in d["reason"] for d in after["dropped"])

    stale = client.put("/v1/modules/generic/config", json={"config": {"top_k": 10}, "base_revision": 0}, headers=ANA)
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "stale_revision"

    rolled = client.post("/v1/modules/generic/rollback", json={"revision": 0}, headers={"X-Sieve-User": "bo"})
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["revision"] == 2 and rolled.json()["config"]["score_floor"] == 0.0
    assert client.get("/v1/modules/generic/history").json()[0]["comment"] == "rollback to 0"
    restored = search(client, k=10)
    assert restored["config_revision"] == 2 and restored["config_hash"] == before["config_hash"]
    assert [r["doc_id"] for r in restored["results"]] == [r["doc_id"] for r in before["results"]]
    missing = client.post("/v1/modules/generic/rollback", json={"revision": 42})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "revision_not_found"


def test_a_typo_is_refused_and_changes_nothing(client: TestClient) -> None:
    before = client.get("/v1/modules/generic/config").json()
    for method in (client.patch, client.put):
        response = method("/v1/modules/generic/config", json={"config": {"score_flor": 0.5}}, headers=ANA)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "validation_failed"
        assert any(d.startswith("score_flor: unknown setting") for d in error["details"]), error
    assert client.get("/v1/modules/generic/config").json() == before
    invalid = client.post("/v1/modules/generic/config/validate", json={"config": {"score_floor": 2}})
    assert invalid.status_code == 422 and invalid.json()["error"]["details"][0].startswith("score_floor: ")
    valid = client.post("/v1/modules/generic/config/validate", json={"config": {"score_floor": 0.5}})
    assert valid.status_code == 200 and valid.json() == {"valid": True}


def test_auto_collections_route_each_question(client: TestClient) -> None:
    created = client.post("/v1/collections", json={"name": "routed", "domain": "auto"})
    assert created.status_code == 201 and created.json()["domain"] == "auto"
    body = client.post("/v1/search", json={"collection": "routed", "question": QUESTION}).json()
    route = body["route"]
    assert route["by"] == "router" and isinstance(route["score"], float)
    assert body["module"] == route["module"] in {m["key"] for m in client.get("/v1/modules").json()}
    assert "route" in body["latency_ms"]
    named = client.post("/v1/search", json={"collection": "routed", "question": QUESTION, "module": "generic"}).json()
    assert named["route"] == {"module": "generic", "by": "request", "score": None}
    unknown = client.post("/v1/collections", json={"name": "x", "domain": "astrology"})
    assert unknown.status_code == 422 and "auto" in unknown.json()["error"]["details"][0]


def test_ingestion_applies_the_collection_modules_enrichment(client: TestClient, eval_dir: Path) -> None:
    assert client.post("/v1/collections", json={"name": "legal", "domain": "legal"}).status_code == 201
    name = CONTRACTS[0]
    files = [("files", (name, (eval_dir / "cuad" / "corpus" / name).read_bytes()))]
    job = wait_for_job(client, client.post("/v1/collections/legal/documents", files=files).json()["job_id"])
    assert job["state"] == "done", job
    (document,) = client.get("/v1/collections/legal/documents").json()
    assert document["meta"].get("title") and document["meta"].get("party_keys"), document["meta"]
    store = client.app.state.services.resources.store
    records, _ = store.scroll("sieve__default__legal", filter=None, limit=1000)
    assert records and all(r.payload["meta"] == document["meta"] for r in records)
    # The generic collection's chunks carry no domain metadata.
    plain = {d["filename"]: d for d in client.get("/v1/collections/contracts/documents").json()}
    assert plain[name]["meta"] == {}


def test_the_cli_drives_the_same_api(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from contextlib import nullcontext

    from typer.testing import CliRunner

    from cli import main as cli

    monkeypatch.setattr(cli, "_client", lambda url: nullcontext(client))

    def sieve(*args: str) -> str:
        result = CliRunner().invoke(cli.app, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    revision = client.get("/v1/modules/generic/config").json()["revision"]
    preview = sieve("modules", "preview", "generic", "--collection", "contracts", QUESTION, "score_floor=0.99")
    assert "score_floor: 0.0 -> 0.99" in preview and "below floor" in preview
    assert "generic revision" in sieve("modules", "set", "generic", "score_floor=0.99", "--comment", "from the cli")
    assert "score_floor: 0.0 -> 0.99" in sieve("modules", "history", "generic")
    assert f"revision {revision + 1}" in sieve("modules", "list")
    assert '"score_floor": 0.99' in sieve("modules", "config", "generic")
    searched = sieve("search", QUESTION, "--collection", "contracts", "--explain")
    assert f"config revision {revision + 1}" in searched and "below floor" in searched
    sieve("modules", "rollback", "generic", str(revision))
    assert client.get("/v1/modules/generic/config").json()["config"]["score_floor"] == 0.0
    typo = CliRunner().invoke(cli.app, ["modules", "set", "generic", "score_flor=0.5"])
    assert typo.exit_code == 1 and "score_flor: unknown setting" in typo.output
