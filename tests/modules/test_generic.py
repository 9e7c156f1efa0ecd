"""The generic module against the shared contract."""

from __future__ import annotations

import pytest

from tests.modules.contract import ModuleContract

pytestmark = pytest.mark.unit


class TestGenericModule(ModuleContract):
    module_key = "generic"
    sample_questions = ["What does the warranty cover?", "How do I reset the device?"]
    sample_document = ("A short document about warranties.", "warranty.txt", {})
