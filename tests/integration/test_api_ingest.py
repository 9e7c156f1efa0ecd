"""Collections, uploads, jobs and documents over REST, on the real stack: the bundled
Valkey queue, the in-process worker, the embedded Qdrant engine, the real embedding model
and real documents from the evaluation sets."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.vectorstore import Filter, Match
from tests.conftest import make_settings, wait_for_job

pytestmark = pytest.mark.integration

CONTRACTS = [
    "cuad_ABILITYINC_06_15_2020-EX-4.25-SERVICES_AGREEMENT.txt",
    "cuad_2ThemartComInc_19990826_10-12G_EX-10.10_6700288_EX-10.10_Co-Branding_Agreement_Agency_Agreement.txt",
]
EARNINGS_PDF = "AMCOR_2023Q4_EARNINGS.pdf"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, valkey_url: str):
    from api.main import create_app

    settings = make_settings(tmp_path_factory.mktemp("sieve"), valkey_url, max_upload_bytes=30_000_000)
    with TestClient(create_app(settings, models=False)) as c:
        yield c


def upload(client: TestClient, collection: str, files: list[tuple[str, bytes]]) -> dict:
    response = client.post(
        f"/v1/collections/{collection}/documents", files=[("files", (name, data)) for name, data in files]
    )
    assert response.status_code == 202, response.text
    return wait_for_job(client, response.json()["job_id"])


def collection(client: TestClient, name: str) -> dict:
    return client.get(f"/v1/collections/{name}").json()


@pytest.fixture(scope="module")
def corpus(client: TestClient, eval_dir: Path) -> dict[str, bytes]:
    """A collection `docs` holding two contracts and an earnings release."""
    files = {name: (eval_dir / "cuad" / "corpus" / name).read_bytes() for name in CONTRACTS}
    files[EARNINGS_PDF] = (eval_dir / "financebench" / "pdfs" / EARNINGS_PDF).read_bytes()
    assert client.post("/v1/collections", json={"name": "docs", "domain": "generic"}).status_code == 201
    job = upload(client, "docs", list(files.items()))
    assert job["state"] == "done", job
    return files


def test_collections_are_created_listed_and_validated(client: TestClient) -> None:
    created = client.post("/v1/collections", json={"name": "contracts", "domain": "generic"})
    assert created.status_code == 201
    assert created.json()["documents"] == 0
    assert "contracts" in [c["name"] for c in client.get("/v1/collections").json()]

    again = client.post("/v1/collections", json={"name": "contracts"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "collection_exists"
    bad = client.post("/v1/collections", json={"name": "../etc"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_failed"
    unknown = client.post("/v1/collections", json={"name": "x", "domain": "astrology"})
    assert unknown.status_code == 422 and "domain" in unknown.json()["error"]["details"][0]
    typo = client.post("/v1/collections", json={"name": "x", "domian": "generic"})
    assert typo.status_code == 422 and any("domian" in d for d in typo.json()["error"]["details"])
    error = client.get("/v1/collections/nope").json()["error"]
    assert error["code"] == "collection_not_found" and error["request_id"].startswith("req_")


def test_upload_ingests_every_file_with_progress_and_metadata(client: TestClient, corpus: dict[str, bytes]) -> None:
    docs = {d["filename"]: d for d in client.get("/v1/collections/docs/documents").json()}
    assert set(docs) == set(corpus)
    pdf = docs[EARNINGS_PDF]
    assert pdf["kind"] == "pdf" and pdf["pages"] == 14 and pdf["chunks"] > 10
    assert len(pdf["content_hash"]) == 64
    assert all(d["chunks"] > 0 and d["ingested_at"] for d in docs.values())
    assert collection(client, "docs")["chunks"] == sum(d["chunks"] for d in docs.values())


def test_reuploading_identical_files_adds_no_chunks(client: TestClient, corpus: dict[str, bytes]) -> None:
    before = collection(client, "docs")
    job = upload(client, "docs", list(corpus.items()))
    assert job["state"] == "done"
    assert {f["state"] for f in job["files"]} == {"unchanged"}
    after = collection(client, "docs")
    assert (after["documents"], after["chunks"]) == (before["documents"], before["chunks"])


def test_a_changed_file_replaces_its_chunks(client: TestClient, corpus: dict[str, bytes]) -> None:
    name = CONTRACTS[0]
    changed = corpus[name].replace(b"Governing Law", b"Governing Law of Atlantis", 1)
    assert changed != corpus[name]
    job = upload(client, "docs", [(name, changed)])
    assert job["files"][0]["state"] == "done"
    doc_id = job["files"][0]["doc_id"]

    store = client.app.state.services.resources.store
    vector_name = "sieve__default__docs"
    of_doc = Filter(must=[Match(key="doc_id", value=doc_id)])
    records, _ = store.scroll(vector_name, filter=of_doc, limit=10_000)
    assert {r.payload["content_hash"] for r in records} == {job_hash(client, doc_id)}
    assert all(r.payload["live"] for r in records)
    assert any("Atlantis" in r.payload["text"] for r in records)
    listed = client.get(f"/v1/collections/docs/documents/{doc_id}").json()
    assert listed["chunks"] == len(records)

    restored = upload(client, "docs", [(name, corpus[name])])  # and back, for the other tests
    assert restored["files"][0]["state"] == "done"


def job_hash(client: TestClient, doc_id: str) -> str:
    return client.get(f"/v1/collections/docs/documents/{doc_id}").json()["content_hash"]


def test_bad_files_fail_alone_with_typed_errors(client: TestClient, corpus: dict[str, bytes]) -> None:
    before = collection(client, "docs")
    job = upload(
        client,
        "docs",
        [
            ("program.exe", b"MZ\x90\x00" + bytes(range(256)) * 8),
            ("empty.txt", b""),
            ("broken.pdf", b"%PDF-1.7\n1 0 obj <<>> garbage"),
            ("notes.md", b"# Notes\n\nA short, valid note about parsing."),
        ],
    )
    states = {f["filename"]: f for f in job["files"]}
    assert job["state"] == "done" and job["files_done"] == 4
    assert states["program.exe"]["error"]["code"] == "unsupported_document_type"
    assert states["empty.txt"]["error"]["code"] == "empty_document"
    assert states["broken.pdf"]["error"]["code"] == "corrupt_document"
    assert states["notes.md"]["state"] == "done"
    assert {e["filename"] for e in job["errors"]} == {"program.exe", "empty.txt", "broken.pdf"}
    after = collection(client, "docs")
    assert after["documents"] == before["documents"] + 1


def test_archives_are_expanded_and_traversal_is_refused(client: TestClient) -> None:
    client.post("/v1/collections", json={"name": "zipped"})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("manual/intro.md", "# Intro\n\nPress the power button for three seconds.")
        archive.writestr("manual/faq.txt", "Q: How do I reset? A: Hold volume down and power.")
    job = upload(client, "zipped", [("manual.zip", buffer.getvalue())])
    assert sorted(f["filename"] for f in job["files"]) == ["manual/faq.txt", "manual/intro.md"]
    assert job["state"] == "done" and not job["errors"]

    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../../etc/cron.d/evil", "* * * * * root rm -rf /")
    response = client.post("/v1/collections/zipped/documents", files=[("files", ("evil.zip", evil.getvalue()))])
    assert response.status_code == 400 and response.json()["error"]["code"] == "archive_path_traversal"
    assert collection(client, "zipped")["documents"] == 2


def test_oversize_uploads_are_refused(client: TestClient) -> None:
    response = client.post(
        "/v1/collections/zipped/documents", files=[("files", ("big.txt", b"word " * 7_000_000))]
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] in ("upload_too_large", "file_too_large")


def test_deleting_a_document_removes_every_chunk(client: TestClient, corpus: dict[str, bytes]) -> None:
    docs = {d["filename"]: d for d in client.get("/v1/collections/docs/documents").json()}
    target = docs[CONTRACTS[1]]
    before = collection(client, "docs")
    assert client.delete(f"/v1/collections/docs/documents/{target['doc_id']}").status_code == 204
    after = collection(client, "docs")
    assert after["documents"] == before["documents"] - 1
    assert after["chunks"] == before["chunks"] - target["chunks"]
    store = client.app.state.services.resources.store
    assert store.count("sieve__default__docs", Filter(must=[Match(key="doc_id", value=target["doc_id"])])) == 0
    missing = client.delete(f"/v1/collections/docs/documents/{target['doc_id']}")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "document_not_found"
    # Uploading it again ingests it again (its hash was forgotten with it).
    job = upload(client, "docs", [(CONTRACTS[1], corpus[CONTRACTS[1]])])
    assert job["files"][0]["state"] == "done"


def test_unknown_job_is_a_typed_404(client: TestClient) -> None:
    response = client.get("/v1/jobs/job_doesnotexist")
    assert response.status_code == 404 and response.json()["error"]["code"] == "job_not_found"
