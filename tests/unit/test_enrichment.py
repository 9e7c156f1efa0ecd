"""Which enrichment ingestion applies for a collection's domain."""

from __future__ import annotations

from pathlib import Path

import pytest

from modules import module_class, module_keys
from modules.registry import AUTO_DOMAIN, enrichment_for

pytestmark = pytest.mark.unit

EVAL = Path(__file__).resolve().parents[2].parent / "shared" / "eval"


def test_a_named_domain_gets_its_module_enrichment() -> None:
    legal = enrichment_for("legal")
    cls = module_class("legal")
    assert (legal.module, legal.version, legal.indexes) == ("legal", cls.enrich_version, cls.payload_indexes)


def test_auto_collections_get_every_module_metadata_and_indexes() -> None:
    auto = enrichment_for(AUTO_DOMAIN)
    assert auto.module == AUTO_DOMAIN
    for key in module_keys():
        assert set(module_class(key).payload_indexes) <= set(auto.indexes)
        assert f"{key}:{module_class(key).enrich_version}" in auto.version
    filing = (EVAL / "financebench" / "corpus" / "3M_2018_10K.txt").read_text()[:20000]
    meta = auto.enrich(filing, "3M_2018_10K.txt", {})
    finance_meta = module_class("finance")().enrich(filing, "3M_2018_10K.txt", {})
    assert finance_meta and all(meta[k] == v for k, v in finance_meta.items())


def test_unknown_domain_is_a_typed_error() -> None:
    with pytest.raises(Exception) as raised:
        enrichment_for("astrology")
    assert getattr(raised.value, "code", None) == "module_not_found"
