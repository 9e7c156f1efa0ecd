"""Parsing real and generated files, offline, and chunking them with the real tokenizer."""

from __future__ import annotations

import json
import random
import re
import zipfile
from pathlib import Path

import pytest
from llama_index.core.schema import MetadataMode, TextNode

from core.errors import (
    CorruptDocumentError,
    DocumentError,
    DocumentTooLargeError,
    EmptyDocumentError,
    NoTextLayerError,
    UndecodableTextError,
    UnsupportedDocumentError,
)
from core.schemas import sha256_hex
from ingest.chunk import StructuredNodeParser, to_llama_document
from ingest.parse import BlockType, DocumentKind, ParsedDocument, configure_offline, parse_file
from tests.fixtures import make_docs

pytestmark = pytest.mark.integration

EVAL = Path("/work/shared/eval")
ULTA_PDF = EVAL / "financebench/pdfs/ULTABEAUTY_2023Q4_EARNINGS.pdf"
FINANCEBENCH_DEV = EVAL / "financebench/dev.jsonl"
# Valid UTF-8 with a non-ASCII "À" that cp1252 can also encode.
CUAD_CONTRACT = EVAL / "cuad/corpus/cuad_ATENTOSA_07_06_2020-EX-99.1-JOINT_FILING_AGREEMENT.txt"
EMANUAL_SECTION = EVAL / "emanual/corpus/s10_section_0.txt"

REVENUE_TABLE = "\n".join(" | ".join(row) for row in [make_docs.REVENUE_HEADER, *make_docs.REVENUE_ROWS])


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"evaluation data not present: {path}")
    return path


@pytest.fixture(scope="module")
def node_parser() -> StructuredNodeParser:
    return StructuredNodeParser()  # all-MiniLM-L6-v2's word-piece tokenizer, from its package


def chunk(parsed: ParsedDocument, filename: str, node_parser: StructuredNodeParser) -> list[TextNode]:
    document = to_llama_document(parsed, "doc_test", filename, sha256_hex(filename))
    return node_parser.get_nodes_from_documents([document])


def normalized(text: str) -> str:
    return " ".join(text.replace("’", "'").replace("\u2011", "-").split())


# -- offline spaCy ---------------------------------------------------------------------------


def test_spacy_model_loads_from_the_pypi_package_without_download(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    configure_offline()
    configure_offline()  # idempotent
    import spacy
    import unstructured.nlp.tokenize as tokenize

    nlp = spacy.load("en_core_web_sm", exclude=["ner", "lemmatizer", "attribute_ruler"])
    assert "parser" in nlp.pipe_names

    def no_download() -> None:
        raise AssertionError("unstructured tried to download the spaCy model")

    monkeypatch.setattr(tokenize, "_install_spacy_model", no_download)
    tokenize._get_nlp.cache_clear()
    memo = "QUARTERLY UPDATE\n\nThe plant shipped 120 filters this quarter."
    path = make_docs.write_text(tmp_path, "memo.txt", memo, "utf-8")

    parsed = parse_file(path, "memo.txt")

    assert [(block.type, block.text) for block in parsed.blocks] == [
        (BlockType.TITLE, "QUARTERLY UPDATE"),
        (BlockType.TEXT, "The plant shipped 120 filters this quarter."),
    ]
    assert "senter" in tokenize._get_nlp().pipe_names and "parser" not in tokenize._get_nlp().pipe_names


# -- PDF -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ulta() -> ParsedDocument:
    return parse_file(require(ULTA_PDF), ULTA_PDF.name)


def test_pdf_pdfium_blocks_are_typed_with_pages(ulta: ParsedDocument) -> None:
    assert ulta.kind is DocumentKind.PDF
    assert ulta.page_count == 9
    assert ulta.metadata["title"] == "Ulta Beauty Announces Fourth Quarter Fiscal 2022 Results"
    assert {block.page for block in ulta.blocks} == set(range(1, 10))
    titles = [block.text for block in ulta.blocks if block.type is BlockType.TITLE]
    assert "Balance Sheet" in titles and "Share Repurchase Program" in titles
    tables = [block for block in ulta.blocks if block.type is BlockType.TABLE]
    balance_sheet = next(block for block in tables if block.text.startswith("Cash and cash equivalents $ 737,877"))
    assert balance_sheet.page == 7
    repurchase = next(block for block in ulta.blocks if "722,457 shares" in block.text)
    assert repurchase.page == 3 and repurchase.type is BlockType.TEXT


def test_pdf_chunk_pages_match_financebench_evidence_pages(
    ulta: ParsedDocument, node_parser: StructuredNodeParser
) -> None:
    """Each evidence passage annotated in FinanceBench (with its page) is found in a chunk
    whose page range holds that page."""
    nodes = chunk(ulta, ULTA_PDF.name, node_parser)
    evidence = [
        item
        for line in require(FINANCEBENCH_DEV).read_text().splitlines()
        for item in json.loads(line)["evidence"]
        if item["doc_id"] == "ULTABEAUTY_2023Q4_EARNINGS"
    ]
    assert len(evidence) >= 2
    chunk_texts = [normalized(node.text) for node in nodes]
    for item in evidence:
        words = normalized(item["text"]).split()
        windows = [" ".join(words[start : start + 10]) for start in range(0, max(len(words) - 10, 1), 5)]
        matches = [(index, window) for window in windows for index, text in enumerate(chunk_texts) if window in text]
        assert matches, f"no chunk holds evidence from page {item['page']}"
        for index, window in matches:
            node = nodes[index]
            assert node.metadata["page"] <= item["page"] <= node.metadata["page_end"], window


def test_pdf_chunks_fit_the_embedding_window(ulta: ParsedDocument, node_parser: StructuredNodeParser) -> None:
    nodes = chunk(ulta, ULTA_PDF.name, node_parser)

    for node in nodes:
        tokens = node_parser.count_tokens(node.get_content(MetadataMode.EMBED))
        is_table = node.metadata["element_type"] == "table"
        limit = node_parser.table_max_tokens + 64 if is_table else node_parser.chunk_size
        assert tokens <= limit, node.text[:80]
    balance = next(node for node in nodes if "Cash and cash equivalents $ 737,877" in node.text)
    assert balance.metadata["element_type"] == "table"
    assert balance.metadata["page"] == 7
    assert "Merchandise inventories, net" in balance.text  # the table's rows stay together


def test_pdf_fast_strategy_gives_typed_blocks_with_pages() -> None:
    parsed = parse_file(require(ULTA_PDF), ULTA_PDF.name, pdf_strategy="fast")

    assert parsed.page_count == 9
    assert len(parsed.blocks) > 50
    assert {block.page for block in parsed.blocks} <= set(range(1, 10))
    assert any(block.type is BlockType.TITLE for block in parsed.blocks)
    assert next(block for block in parsed.blocks if "722,457 shares" in block.text).page == 3


# -- office, web, email ----------------------------------------------------------------------


@pytest.mark.parametrize("writer", [make_docs.write_docx, make_docs.write_html, make_docs.write_markdown])
def test_headings_lists_and_tables(writer, tmp_path: Path, node_parser: StructuredNodeParser) -> None:
    path = writer(tmp_path)

    parsed = parse_file(path, path.name)

    assert [(block.text, block.depth) for block in parsed.blocks if block.type is BlockType.TITLE] == [
        ("Annual Report", 0),
        ("Revenue", 1),
        ("Outlook", 1),
    ]
    assert [block.text for block in parsed.blocks if block.type is BlockType.TABLE] == [REVENUE_TABLE]
    assert [block.text for block in parsed.blocks if block.type is BlockType.LIST] == make_docs.LIST_ITEMS
    nodes = chunk(parsed, path.name, node_parser)
    table_node = next(node for node in nodes if node.metadata["element_type"] == "table")
    assert REVENUE_TABLE in table_node.text
    assert table_node.metadata["section_path"] == ["Annual Report", "Revenue"]
    assert "section: Annual Report > Revenue" in table_node.get_content(MetadataMode.EMBED)


def test_xlsx_sheets_become_sections_and_big_sheets_split_by_rows(
    tmp_path: Path, node_parser: StructuredNodeParser
) -> None:
    small = parse_file(make_docs.write_xlsx(tmp_path), "sales.xlsx")
    assert [(block.type, block.text) for block in small.blocks] == [
        (BlockType.TITLE, "Revenue"),
        (BlockType.TABLE, REVENUE_TABLE),
        (BlockType.TITLE, "Notes"),
        (BlockType.TABLE, "Topic | Note\nCurrency | All figures in thousands of euros"),
    ]

    big = parse_file(make_docs.write_xlsx(tmp_path, "big.xlsx", extra_rows=600), "big.xlsx")
    nodes = [node for node in chunk(big, "big.xlsx", node_parser) if node.metadata["section_path"] == ["Revenue"]]
    assert len(nodes) > 3
    assert all(node.text.startswith("Region | Revenue 2023 | Revenue 2022\n") for node in nodes)
    assert all(node.metadata["element_type"] == "table" for node in nodes)
    rows = [row for node in nodes for row in node.text.split("\n")[1:]]
    assert rows[:3] == [" | ".join(row) for row in make_docs.REVENUE_ROWS]
    assert rows[-1] == "Branch 0599 | 699 | 689"
    assert len(rows) == 603


def test_csv_is_one_table(tmp_path: Path) -> None:
    parsed = parse_file(make_docs.write_csv(tmp_path), "revenue.csv")

    assert parsed.kind is DocumentKind.CSV
    assert [(block.type, block.text) for block in parsed.blocks] == [(BlockType.TABLE, REVENUE_TABLE)]


def test_email_headers_become_metadata(tmp_path: Path, node_parser: StructuredNodeParser) -> None:
    parsed = parse_file(make_docs.write_eml(tmp_path), "shipment.eml")

    assert parsed.kind is DocumentKind.EML
    assert parsed.metadata["subject"] == make_docs.EMAIL_SUBJECT
    assert parsed.metadata["from"] == make_docs.EMAIL_FROM
    assert parsed.metadata["to"] == [make_docs.EMAIL_TO]
    assert parsed.metadata["date"] == "Tue, 05 Mar 2024 09:30:00 +0000"
    body = [block.text for block in parsed.blocks]
    assert "The March shipment of 120 membrane filters left Rotterdam on Monday." in body
    nodes = chunk(parsed, "shipment.eml", node_parser)
    assert [node.metadata["element_type"] for node in nodes] == ["email"]
    assert nodes[0].metadata["section_path"] == [make_docs.EMAIL_SUBJECT]
    assert nodes[0].metadata["email_from"] == make_docs.EMAIL_FROM


# -- text encodings --------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["cp1252", "utf-16", "utf-8-sig"])
def test_contract_parses_the_same_in_other_encodings(encoding: str, tmp_path: Path) -> None:
    original = require(CUAD_CONTRACT).read_text(encoding="utf-8")
    reference = parse_file(CUAD_CONTRACT, CUAD_CONTRACT.name)
    assert any("S.À R.L" in block.text for block in reference.blocks)

    path = make_docs.write_text(tmp_path, "contract.txt", original, encoding)
    parsed = parse_file(path, "contract.txt")

    assert [(block.type, block.text) for block in parsed.blocks] == [
        (block.type, block.text) for block in reference.blocks
    ]


def test_emanual_section_chunks(node_parser: StructuredNodeParser) -> None:
    parsed = parse_file(require(EMANUAL_SECTION), EMANUAL_SECTION.name)
    nodes = chunk(parsed, EMANUAL_SECTION.name, node_parser)

    assert parsed.kind is DocumentKind.TEXT and parsed.page_count is None
    joined = "\n".join(node.text for node in nodes)
    assert "Wirelessly charge your Galaxy Buds, Galaxy Watch or even a friends phone right from your device." in joined
    assert all(node.metadata["page"] is None for node in nodes)


# -- per-file errors -------------------------------------------------------------------------


def _png(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    return path


def _json(tmp_path: Path) -> Path:
    return make_docs.write_text(tmp_path, "data.json", '{"a": 1}', "utf-8")


def _nested_zip(tmp_path: Path) -> Path:
    return make_docs.write_zip(tmp_path, "inner.zip", {"a.txt": b"a"})


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    return path


def _blank_text(tmp_path: Path) -> Path:
    return make_docs.write_text(tmp_path, "blank.md", " \n\n \t\n", "utf-8")


def _truncated_pdf(tmp_path: Path) -> Path:
    path = tmp_path / "truncated.pdf"
    path.write_bytes(require(ULTA_PDF).read_bytes()[:40_000])
    return path


def _docx_not_a_zip(tmp_path: Path) -> Path:
    return make_docs.write_text(tmp_path, "report.docx", "this is not a word document", "utf-8")


def _docx_without_parts(tmp_path: Path) -> Path:
    return make_docs.write_zip(tmp_path, "report.docx", {"readme.txt": b"no word/document.xml here"})


def _docx_with_broken_xml(tmp_path: Path) -> Path:
    path = make_docs.write_docx(tmp_path, "source.docx")
    broken = tmp_path / "broken.docx"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(broken, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            target.writestr(item, data[: len(data) // 2] if item.filename == "word/document.xml" else data)
    return broken


def _scanned_pdf(tmp_path: Path) -> Path:
    return make_docs.write_blank_pdf(tmp_path)


def _binary_txt(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_bytes(random.Random(7).randbytes(4096))
    return path


@pytest.mark.parametrize(
    ("make_file", "error", "code", "message"),
    [
        (_png, UnsupportedDocumentError, "unsupported_document_type", "PNG image"),
        (_json, UnsupportedDocumentError, "unsupported_document_type", "'.json'"),
        (_nested_zip, UnsupportedDocumentError, "unsupported_document_type", "nested archives"),
        (_empty, EmptyDocumentError, "empty_document", "empty"),
        (_blank_text, EmptyDocumentError, "empty_document", "no text"),
        (_truncated_pdf, CorruptDocumentError, "corrupt_document", "not a readable PDF"),
        (_docx_not_a_zip, CorruptDocumentError, "corrupt_document", "not a valid DOCX"),
        (_docx_without_parts, CorruptDocumentError, "corrupt_document", "DOCX"),
        (_docx_with_broken_xml, CorruptDocumentError, "corrupt_document", "cannot parse as docx"),
        (_scanned_pdf, NoTextLayerError, "no_text_layer", "no text layer"),
        (_binary_txt, UndecodableTextError, "undecodable_text", "binary"),
    ],
)
def test_per_file_errors(make_file, error: type[DocumentError], code: str, message: str, tmp_path: Path) -> None:
    path = make_file(tmp_path)

    with pytest.raises(error) as caught:
        parse_file(path, path.name)

    assert caught.value.code == code
    assert caught.value.http_status == 422
    assert caught.value.message.startswith(f"{path.name}: ")
    assert message in caught.value.message


def test_scanned_pdf_is_refused_by_the_fast_strategy_too(tmp_path: Path) -> None:
    with pytest.raises(NoTextLayerError):
        parse_file(make_docs.write_blank_pdf(tmp_path), "scan.pdf", pdf_strategy="fast")


def test_file_over_the_size_limit(tmp_path: Path) -> None:
    path = make_docs.write_csv(tmp_path)

    with pytest.raises(DocumentTooLargeError) as caught:
        parse_file(path, "revenue.csv", max_bytes=10)

    assert caught.value.code == "document_too_large"
    assert re.search(r"\d+ bytes exceeds the 10-byte limit", caught.value.message)


def test_legacy_single_byte_text_decodes_as_cp1252(tmp_path: Path) -> None:
    path = make_docs.write_text(tmp_path, "memo.txt", "The supplier’s price is 12 € — final.", "cp1252")

    parsed = parse_file(path, "memo.txt")

    assert [block.text for block in parsed.blocks] == ["The supplier’s price is 12 € — final."]


def test_text_exports_keep_their_page_numbers(tmp_path: Path, eval_dir: Path) -> None:
    parsed = parse_file(eval_dir / "financebench" / "corpus" / "CORNING_2022_10K.txt", "CORNING_2022_10K.txt")
    assert parsed.page_count == 159
    balance_sheet = [b for b in parsed.blocks if "Total current assets" in b.text]
    assert balance_sheet and balance_sheet[0].page == 60  # the page FinanceBench's evidence cites

    feed = tmp_path / "export.txt"
    feed.write_text("Cover page of the report.\fThe second page talks about revenue growth.\fThird.")
    parsed = parse_file(feed, "export.txt")
    assert parsed.page_count == 3
    assert [b.page for b in parsed.blocks if "revenue growth" in b.text] == [2]
