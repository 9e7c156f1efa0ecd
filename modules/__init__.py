"""Domain modules: fetch, normalize and filter the context a model answers from.

Importing this package registers the built-in modules."""

from modules import biomedical, finance, generic, legal, manuals  # noqa: F401  (registers)
from modules.registry import module_class, module_keys, register

__all__ = ["module_class", "module_keys", "register"]
