"""The module registry: built-in and third-party modules, by key.

Modules are named by key (never by import path), and `register` checks the contract when
a class is defined, so a broken module fails at import, not at the first question.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.errors import NotFoundError
from core.vectorstore import IndexType
from modules.base import DomainModule, ModuleConfig

_MODULES: dict[str, type[DomainModule]] = {}
# A collection domain that names no module: a router picks one per question, and
# ingestion applies every module's enrichment, so whichever module the router picks finds
# the metadata its filters need.
AUTO_DOMAIN = "auto"
_KEY = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_STAGES = {
    "analyze": ["question"],
    "fetch": ["query", "ctx"],
    "normalize": ["query", "candidates"],
    "filter": ["query", "candidates"],
    "enrich": ["text", "filename", "metadata"],
}


class ContractError(TypeError):
    """A module class does not satisfy the domain-module contract."""


def check_contract(cls: type[DomainModule]) -> None:
    problems: list[str] = []
    key = getattr(cls, "key", None)
    if not isinstance(key, str) or not _KEY.match(key):
        problems.append("key: a lowercase identifier of at most 32 characters")
    if not getattr(cls, "description", "").strip():
        problems.append("description: a non-empty sentence for analysts")
    config = getattr(cls, "config_model", None)
    if not (isinstance(config, type) and issubclass(config, ModuleConfig)):
        problems.append("config_model: a subclass of ModuleConfig")
    else:
        if config.model_config.get("extra") != "forbid":
            problems.append("config_model: must reject unknown keys (extra='forbid')")
        problems += [f"config_model.{name}: needs a description" for name, f in config.model_fields.items() if not f.description]
    for stage, params in _STAGES.items():
        signature = list(inspect.signature(getattr(cls, stage)).parameters)[1:]
        if signature[: len(params)] != params:
            problems.append(f"{stage}: parameters must start with {params}, not {signature}")
    problems += [f"payload_indexes: {k!r} must start with 'meta.'" for k in cls.payload_indexes if not k.startswith("meta.")]
    if problems:
        raise ContractError(f"{cls.__name__} breaks the module contract: " + "; ".join(problems))


def register(cls: type[DomainModule]) -> type[DomainModule]:
    """Class decorator: check the contract and make the module available under its key."""
    check_contract(cls)
    if cls.key in _MODULES and _MODULES[cls.key] is not cls:
        raise ContractError(f"module key {cls.key!r} is already registered by {_MODULES[cls.key].__name__}")
    _MODULES[cls.key] = cls
    return cls


def module_keys() -> list[str]:
    return sorted(_MODULES)


def module_class(key: str) -> type[DomainModule]:
    try:
        return _MODULES[key]
    except KeyError:
        raise NotFoundError(
            f"unknown module {key!r}; available: {', '.join(module_keys())}", code="module_not_found"
        ) from None


@dataclass(frozen=True)
class Enrichment:
    """What ingestion stores for a collection's domain: the module key and `enrich`
    version (part of every chunk's config hash), the enrich function, and the payload
    indexes its metadata needs."""

    module: str
    version: str
    enrich: Callable[[str, str, dict[str, Any]], dict[str, Any]]
    indexes: dict[str, IndexType]


def enrichment_for(domain: str) -> Enrichment:
    """The enrichment of a collection's domain: its module's, or for `auto` every module's
    (their metadata keys are distinct: the contract makes each module own its `meta.*` keys)."""
    if domain != AUTO_DOMAIN:
        cls = module_class(domain)
        return Enrichment(cls.key, cls.enrich_version, cls().enrich, dict(cls.payload_indexes))
    modules = [module_class(key)() for key in module_keys()]

    def enrich_all(text: str, filename: str, metadata: dict[str, Any]) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        for module in modules:
            meta.update(module.enrich(text, filename, metadata))
        return meta

    return Enrichment(
        AUTO_DOMAIN,
        ",".join(f"{m.key}:{m.enrich_version}" for m in modules),
        enrich_all,
        {key: kind for m in modules for key, kind in m.payload_indexes.items()},
    )
