"""Structure-aware chunking of parsed documents (token counts are whitespace words here)."""

from __future__ import annotations

import pytest
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.ingestion.pipeline import get_transformation_hash
from llama_index.core.schema import MetadataMode, TextNode

from core.schemas import point_id, sha256_hex
from ingest.chunk import StructuredNodeParser, read_blocks, to_llama_document
from ingest.parse import Block, BlockType, DocumentKind, ParsedDocument

pytestmark = pytest.mark.unit

DOC_ID = "doc_0123456789abcdef01234567"
CONTENT_HASH = sha256_hex(b"version 1")


def words(count: int, word: str = "word") -> str:
    return " ".join(f"{word}{index}" for index in range(count))


def make_parser(**settings: int) -> StructuredNodeParser:
    return StructuredNodeParser(token_counter=str.split, tokenizer="whitespace", **{"chunk_overlap": 8, **settings})


def chunk(blocks: list[Block], kind: DocumentKind = DocumentKind.PDF, **settings: int) -> list[TextNode]:
    parsed = ParsedDocument(kind, 9 if kind is DocumentKind.PDF else None, blocks)
    document = to_llama_document(parsed, DOC_ID, "report.pdf", CONTENT_HASH)
    return make_parser(**settings).get_nodes_from_documents([document])


def title(text: str, depth: int, page: int | None = 1) -> Block:
    return Block(BlockType.TITLE, text, page, depth)


def text(body: str, page: int | None = 1) -> Block:
    return Block(BlockType.TEXT, body, page)


def test_markup_round_trips_blocks() -> None:
    blocks = [title("Item 7. MD&A", 1, 3), text("Sales rose.\nAgain.", 3), Block(BlockType.TABLE, "a | b\n1 | 2", 4)]
    document = to_llama_document(ParsedDocument(DocumentKind.PDF, 4, blocks), DOC_ID, "r.pdf", CONTENT_HASH)

    assert [(block.type, block.text, block.page, block.depth) for block in read_blocks(document.text)] == [
        (BlockType.TITLE, "Item 7. MD&A", 3, 1),
        (BlockType.TEXT, "Sales rose.\nAgain.", 3, None),
        (BlockType.TABLE, "a | b\n1 | 2", 4, None),
    ]
    assert document.id_ == DOC_ID
    assert document.metadata["page_count"] == 4


def test_small_blocks_of_a_section_are_packed_and_sections_never_mixed() -> None:
    nodes = chunk(
        [
            title("PART II", 0),
            title("Item 7. MD&A", 1),
            text("Revenue grew.", 1),
            Block(BlockType.LIST, "Lyon plant opened", 1),
            text("Margins held.", 2),
            title("Liquidity", 6, 2),
            text("Cash was ample.", 2),
            title("Item 8. Financial Statements", 1, 3),
            text("See below.", 3),
        ]
    )

    assert [node.text for node in nodes] == [
        "Revenue grew.\n\nLyon plant opened\n\nMargins held.",
        "Cash was ample.",
        "See below.",
    ]
    assert [node.metadata["section_path"] for node in nodes] == [
        ["PART II", "Item 7. MD&A"],
        ["PART II", "Item 7. MD&A", "Liquidity"],
        ["PART II", "Item 8. Financial Statements"],
    ]
    assert [(node.metadata["page"], node.metadata["page_end"]) for node in nodes] == [(1, 2), (2, 2), (3, 3)]
    assert nodes[0].metadata["element_type"] == "text"


def test_sibling_leaf_heading_replaces_the_previous_one() -> None:
    nodes = chunk(
        [title("NOTE 3", 2), title("2018 acquisitions:", 6), text("One."), title("2017 acquisitions:", 6), text("Two.")]
    )

    assert [node.metadata["section_path"] for node in nodes] == [
        ["NOTE 3", "2018 acquisitions:"],
        ["NOTE 3", "2017 acquisitions:"],
    ]


def test_table_larger_than_chunk_size_stays_whole_up_to_the_cap() -> None:
    table = "\n".join(["Region | Sales"] + [f"Region{index} | {index}" for index in range(30)])  # 122 words
    blocks = [title("Sales", 0), text("Intro."), Block(BlockType.TABLE, table, 2), text("After.", 2)]

    nodes = chunk(blocks, chunk_size=64)

    assert [node.metadata["element_type"] for node in nodes] == ["text", "table", "text"]
    assert nodes[1].text == table
    assert nodes[1].metadata["page"] == 2


def test_table_over_the_cap_is_split_by_rows_repeating_the_header() -> None:
    rows = [f"Branch{index:03d} | {index} | {index * 2}" for index in range(200)]
    table = "\n".join(["Branch | Sales | Units", *rows])
    nodes = chunk([title("Branches", 0), Block(BlockType.TABLE, table, 5)], chunk_size=64, table_max_tokens=100)

    assert len(nodes) > 1
    for node in nodes:
        assert node.metadata["element_type"] == "table"
        assert node.text.split("\n")[0] == "Branch | Sales | Units"
        assert len(node.get_content(MetadataMode.EMBED).split()) <= 64 + 2
    assert [row for node in nodes for row in node.text.split("\n")[1:]] == rows


def test_long_text_is_split_into_overlapping_pieces_within_budget() -> None:
    sentences = " ".join(f"Sentence number {index} talks about filters." for index in range(80))  # 480 words
    nodes = chunk([title("Overview", 0), text(sentences, 4)], chunk_size=100, chunk_overlap=20)

    assert len(nodes) >= 5
    for node in nodes:
        assert len(node.get_content(MetadataMode.EMBED).split()) <= 100
        assert node.metadata["page"] == node.metadata["page_end"] == 4
    first_words, second_words = nodes[0].text.split(), nodes[1].text.split()
    assert second_words[0] in first_words[-25:]  # the second piece starts inside the first one's tail
    assert "Sentence number 79 talks about filters." in nodes[-1].text


def test_section_without_content_keeps_its_title_as_a_chunk() -> None:
    nodes = chunk([title("Contacts:", 6, 7), title("Media Contact:", 6, 8), text("Eileen, press office", 8)])

    assert [(node.text, node.metadata["element_type"], node.metadata["page"]) for node in nodes] == [
        ("Contacts:", "title", 7),
        ("Eileen, press office", "text", 8),
    ]


def test_ids_hashes_and_views() -> None:
    nodes = chunk([title("Revenue", 0, 2), text("Revenue grew 4%.", 2), text(words(200), 3)], chunk_size=100)

    assert [node.node_id for node in nodes] == [point_id(DOC_ID, CONTENT_HASH, index) for index in range(len(nodes))]
    assert [node.metadata["chunk_index"] for node in nodes] == list(range(len(nodes)))
    for node in nodes:
        assert node.ref_doc_id == DOC_ID
        assert node.metadata["chunk_hash"] == sha256_hex(node.text)
        assert node.metadata["doc_id"] == DOC_ID and node.metadata["content_hash"] == CONTENT_HASH
    first = nodes[0]
    assert first.text.startswith("Revenue grew 4%.")  # the title is not repeated in the stored text
    embed_view = first.get_content(MetadataMode.EMBED)
    assert "section: Revenue" in embed_view and "filename: report.pdf" in embed_view
    assert "page" not in embed_view and "chunk_hash" not in embed_view and DOC_ID not in embed_view
    llm_view = first.get_content(MetadataMode.LLM)
    assert "page: 2" in llm_view and "section: Revenue" in llm_view and CONTENT_HASH not in llm_view


def test_email_chunks_are_typed_email_under_their_subject() -> None:
    parsed = ParsedDocument(
        DocumentKind.EML,
        None,
        [text("Hello team,", None), text("The shipment left.", None)],
        {"subject": "Shipment", "to": ["a@x.example", "b@x.example"]},
    )
    document = to_llama_document(parsed, DOC_ID, "mail.eml", CONTENT_HASH)
    nodes = make_parser().get_nodes_from_documents([document])

    assert len(nodes) == 1
    assert nodes[0].text == "Hello team,\n\nThe shipment left."
    assert nodes[0].metadata["element_type"] == "email"
    assert nodes[0].metadata["section_path"] == ["Shipment"]
    assert nodes[0].metadata["email_to"] == "a@x.example; b@x.example"
    assert nodes[0].metadata["page"] is None


def test_parser_is_a_pure_function_of_the_hashed_document() -> None:
    blocks = [title("A", 0), text(words(150)), title("B", 0), text("tail")]
    parsed = ParsedDocument(DocumentKind.TEXT, None, blocks)
    first = to_llama_document(parsed, DOC_ID, "a.txt", CONTENT_HASH)
    again = to_llama_document(parsed, DOC_ID, "a.txt", CONTENT_HASH)
    edited_blocks = [*blocks[:3], text("changed")]
    edited = to_llama_document(ParsedDocument(DocumentKind.TEXT, None, edited_blocks), DOC_ID, "a.txt", CONTENT_HASH)
    parser = make_parser(chunk_size=64)

    assert first.hash == again.hash != edited.hash
    nodes = parser.get_nodes_from_documents([first])
    assert [(n.node_id, n.text, n.metadata) for n in nodes] == [
        (n.node_id, n.text, n.metadata) for n in parser.get_nodes_from_documents([again])
    ]
    assert get_transformation_hash([first], parser) != get_transformation_hash([first], make_parser(chunk_size=65))
    assert get_transformation_hash([first], parser) != get_transformation_hash([edited], parser)


def test_works_as_an_ingestion_pipeline_transformation() -> None:
    parsed = ParsedDocument(DocumentKind.TEXT, None, [title("A", 0), text("alpha beta"), title("B", 0), text("gamma")])
    document = to_llama_document(parsed, DOC_ID, "a.txt", CONTENT_HASH)
    pipeline = IngestionPipeline(transformations=[make_parser()])

    nodes = pipeline.run(documents=[document])
    cached = pipeline.run(documents=[document])

    assert [node.text for node in nodes] == ["alpha beta", "gamma"]
    assert [node.node_id for node in cached] == [node.node_id for node in nodes]


def test_document_id_must_match_its_metadata() -> None:
    document = to_llama_document(ParsedDocument(DocumentKind.TEXT, None, [text("x")]), DOC_ID, "a.txt", CONTENT_HASH)
    document.id_ = "someone-else"

    with pytest.raises(ValueError, match="differs from its metadata"):
        make_parser().get_nodes_from_documents([document])
