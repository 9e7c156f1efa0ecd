"""The manuals module: the shared contract, plus enrichment of real e-manual sections,
product resolution, the product filter and the section-title search, and normalization."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.vectorstore import MatchAny
from modules.base import Candidate
from modules.manuals import ManualsConfig, ManualsModule, match_titles, product_key, rejoin_lines, resolve_products
from tests.modules.contract import ModuleContract, RecordingSearch, make_candidate

pytestmark = pytest.mark.unit

S10 = "samsung_galaxy_s10_att"
TV = "samsung_smart_tv_samsung_smart_remote"
PRODUCTS = {S10: 600, TV: 400}
# Section texts of the E-Manual corpus (s10_section_150, tv_section_10, tv_section_21).
S10_CLOCK = (
    "Time zone converter Set a time in a city on your World clock list to see what the local times would be in the "
    "other listed cities. From Clock, tap World clock. Tap More options > Time zone converter."
)
TV_UPDATE = "View your TV's software version and update it if necessary.\n\nSettings\n\nSupport\n\nSoftware Update\n\nTry Now"
TV_WIRELESS = (
    "Establishing a wireless Internet connection\n\nSettings\n\nGeneral\n\nNetwork\n\nOpen Network Settings\n\nWireless\n\n"
    "If no wireless router is found, select\n\nAdd Network\n\nat the bottom of the list and enter the network name "
    "(SSID).\n\n- 22 -"
)
S10_META = {"product": S10, "section_path": "Apps > Samsung apps > Clock > Time zone converter",
            "section_titles": ["Apps", "Samsung apps", "Clock", "Time zone converter"]}
TV_UPDATE_META = {"product": TV, "section_path": "Updating the TV's Software", "section_titles": ["Updating the TV's Software"]}
TV_NET_META = {"product": TV, "section_path": "Connecting to your Internet network",
               "section_titles": ["Connecting to your Internet network"]}


class TestManualsModule(ModuleContract):
    module_key = "manuals"
    sample_questions = [
        "How do I update the TV's software?",
        "How can I use time zone converter?",
        "How do I establish a wireless Internet connection?",
    ]
    sample_document = (
        "Samsung Galaxy S10 (AT&T) User Manual > Apps > Samsung apps > Clock > Time zone converter\n\n" + S10_CLOCK,
        "s10_section_150.txt",
        {},
    )

    def candidates(self) -> list[Candidate]:
        chunks = [
            (TV_UPDATE, TV_UPDATE_META),
            (TV_UPDATE, TV_UPDATE_META),  # an exact duplicate
            (TV_WIRELESS, TV_NET_META),
            (S10_CLOCK, S10_META),
            ("Tap Settings > Software update > Download and install.", {"product": S10, "section_path": "Settings > Software update"}),
        ]
        return [make_candidate(i, t, similarity=0.7 - 0.05 * i, page=None, meta=m) for i, (t, m) in enumerate(chunks)]


@pytest.mark.parametrize(
    ("doc", "product", "section_path"),
    [
        ("s10_section_150", S10, "Apps > Samsung apps > Clock > Time zone converter"),
        ("s10_section_0", S10, "Features"),
        ("tv_section_10", TV, "Updating the TV's Software"),
        ("tv_section_21", TV, "Connecting to your Internet network"),
    ],
)
def test_enrich_reads_real_manual_sections(eval_dir: Path, doc: str, product: str, section_path: str) -> None:
    text = (eval_dir / "emanual" / "corpus" / f"{doc}.txt").read_text()
    meta = ManualsModule().enrich(text, f"{doc}.txt", {})
    assert meta["product"] == product and meta["section_path"] == section_path
    assert meta["section_titles"] == section_path.split(" > ") and meta["section"] == section_path.split(" > ")[-1]
    assert "Manual" not in meta["product_name"]


@pytest.mark.parametrize(
    ("text", "filename", "metadata", "product"),
    [
        ("Galaxy Watch Active User Guide\n\nGetting started", "guide.pdf", {}, "galaxy_watch_active"),
        ("Getting started", "guide.pdf", {"title": "ThinkPad X1 Carbon User Guide"}, "thinkpad_x1_carbon"),
        ("Getting started", "Pixel-7_section_3.txt", {}, "pixel_7"),
    ],
)
def test_enrich_without_a_breadcrumb_uses_the_title_line_metadata_or_filename(text, filename, metadata, product) -> None:
    meta = ManualsModule().enrich(text, filename, metadata)
    assert meta["product"] == product and "section_path" not in meta


def test_product_keys() -> None:
    assert product_key("Samsung Galaxy S10 (AT&T)") == S10
    assert product_key("Samsung Smart TV / Samsung Smart Remote") == TV


@pytest.mark.parametrize(
    ("question", "products"),
    [
        ("How do I update the TV's software?", [TV]),
        ("Why does my television smell of plastic?", [TV]),
        ("How to pair the remote?", [TV]),
        ("Does the Galaxy S10 support Wireless PowerShare?", [S10]),
        ("How do I use Smart View?", []),  # 'smart' alone names no product
        ("How do I mirror my Galaxy S10 to the TV?", []),  # both: no restriction
        ("How do I add a city to the world clock?", []),
    ],
)
def test_resolve_products(question: str, products: list[str]) -> None:
    assert resolve_products(question, list(PRODUCTS)) == products


def test_one_known_product_is_never_a_restriction() -> None:
    assert resolve_products("How do I update the TV's software?", [TV]) == []


def test_fetch_restricts_to_the_named_product_and_fuses_a_title_search() -> None:
    module = ManualsModule(ManualsConfig(title_weight=0.5))
    titles = {"Updating the TV's Software": 3, "Connecting to your Internet network": 9, "Clock": 4, "Apps": 80}
    search = RecordingSearch(TestManualsModule().candidates(), {"meta.product": PRODUCTS, "meta.section_titles": titles})
    query = module.analyze("How do I update the TV's software?")
    fused = module.fetch(query, search)
    assert len(search.calls) == 2
    product_condition = MatchAny(key="meta.product", any=[TV])
    assert search.calls[0]["filter"].must == [product_condition]
    assert search.calls[1]["filter"].must == [product_condition, MatchAny(key="meta.section_titles", any=["Updating the TV's Software"])]
    assert query.notes["products"] == [TV] and query.notes["section_titles"] == ["Updating the TV's Software"]
    assert [c.rank for c in fused] == list(range(len(fused)))
    assert len({c.id for c in fused}) == len(fused), "fusion lists each chunk once"
    assert all(a.score >= b.score for a, b in zip(fused, fused[1:]))


def test_fetch_without_a_product_or_title_match_is_one_unrestricted_search() -> None:
    module = ManualsModule(ManualsConfig(title_weight=0.5))
    search = RecordingSearch(TestManualsModule().candidates(), {"meta.product": PRODUCTS, "meta.section_titles": {"Clock": 4}})
    module.fetch(module.analyze("Why is the picture distorted?"), search)
    assert len(search.calls) == 1 and search.calls[0]["filter"] is None


def test_fetch_by_default_is_one_search_restricted_to_the_product() -> None:
    search = RecordingSearch([], {"meta.product": PRODUCTS, "meta.section_titles": {"Updating the TV's Software": 3}})
    ManualsModule().fetch(ManualsModule().analyze("How do I update the TV's software?"), search)
    assert len(search.calls) == 1
    assert search.calls[0]["filter"].must == [MatchAny(key="meta.product", any=[TV])]


def test_fetch_settings_turn_the_signals_off() -> None:
    module = ManualsModule(ManualsConfig(product_filter=False))
    search = RecordingSearch([], {"meta.product": PRODUCTS, "meta.section_titles": {"Updating the TV's Software": 3}})
    module.fetch(module.analyze("How do I update the TV's software?"), search)
    assert len(search.calls) == 1 and search.calls[0]["filter"] is None


def test_match_titles_weighs_rare_words() -> None:
    titles = {"Time zone converter": 1, "Clock": 3, "Settings": 50, "Display settings": 4, "Sound settings": 4}
    assert match_titles("How can I use time zone converter?", titles, limit=5, min_overlap=0.5) == ["Time zone converter"]
    assert match_titles("Where are the display settings?", titles, limit=5, min_overlap=0.5)[0] == "Display settings"
    assert match_titles("Why is there no sound?", titles, limit=5, min_overlap=0.9) == []


def test_filter_drops_another_products_chunks_with_a_reason() -> None:
    module = ManualsModule()
    query = module.analyze("How do I update the TV's software?")
    filtered = module.filter(query, module.normalize(query, TestManualsModule().candidates()))
    s10 = [c for c in filtered if c.payload["meta"]["product"] == S10]
    assert s10 and all(not c.kept and c.reason == f"about {S10}, the question is about {TV}" for c in s10)
    assert any(c.kept for c in filtered if c.payload["meta"]["product"] == TV)


def test_filter_keeps_every_product_when_the_question_names_none() -> None:
    module = ManualsModule()
    query = module.analyze("How can I use time zone converter?")
    filtered = module.filter(query, module.normalize(query, TestManualsModule().candidates()))
    assert not [c for c in filtered if c.reason and "question is about" in c.reason]


def test_normalize_writes_menu_paths_and_keeps_the_stored_text() -> None:
    module = ManualsModule()
    [update, wireless] = module.normalize(
        module.analyze("q"), [make_candidate(0, TV_UPDATE, meta=TV_UPDATE_META), make_candidate(1, TV_WIRELESS, meta=TV_NET_META)]
    )
    assert update.text == TV_UPDATE, "citations need the stored text"
    assert update.model_text == (
        "[Updating the TV's Software]\nView your TV's software version and update it if necessary.\n"
        "Settings > Support > Software Update"
    )
    assert "removed 1 link label(s) 'Try Now'" in update.notes
    assert "Settings > General > Network > Open Network Settings > Wireless" in wireless.model_text
    assert "select Add Network at the bottom of the list" in wireless.model_text
    assert "- 22 -" not in wireless.model_text
    assert any("menu path" in n for n in wireless.notes) and any("page number" in n for n in wireless.notes)


def test_rejoin_lines_leaves_sentences_alone() -> None:
    text = "From Clock, tap World clock.\nTap Menu to choose a different city."
    assert rejoin_lines(text) == (text, [])


def test_normalize_writes_other_menu_arrows_as_the_separator() -> None:
    module = ManualsModule()
    [c] = module.normalize(module.analyze("q"), [make_candidate(0, "Open Settings → Display » Font size.")])
    assert c.model_text == "Open Settings > Display > Font size." and c.notes == ["2 menu path separator(s) written as ' > '"]


def test_analyze_finds_device_words_model_numbers_and_ui_terms() -> None:
    query = ManualsModule().analyze("On my Galaxy S10, how do I tap 'Wireless PowerShare' or select Quick Settings?")
    assert query.entities == ["s10"]
    assert {"Wireless PowerShare", "Quick Settings"} <= set(query.notes["ui_terms"])
