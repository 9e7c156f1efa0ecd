"""The generic module: hybrid retrieval and the shared filters, no domain knowledge."""

from __future__ import annotations

from modules.base import DomainModule, ModuleConfig
from modules.registry import register


@register
class GenericModule(DomainModule[ModuleConfig]):
    key = "generic"
    description = "Any kind of document: hybrid retrieval, score floor, near-duplicate and token-budget filters."
    config_model = ModuleConfig
