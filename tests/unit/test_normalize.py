"""The shared normalization helpers: numbers, scales, dates, fiscal periods, names."""

from __future__ import annotations

import random
import re
from datetime import date

import pytest

from modules.normalize import (
    _AMOUNT,
    _AMOUNT_BODY,
    _PERIOD_PATTERNS,
    _SCALE_HEADER,
    _SCALE_WORDS,
    annotate_amounts,
    annotate_dates,
    annotate_periods,
    apply_table_scale,
    expand_abbreviations,
    find_amounts,
    find_dates,
    find_periods,
    find_table_scale,
    format_scaled,
    name_key,
    parse_number,
    squash,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "value", "currency", "percent"),
    [
        ("$1.2bn", 1.2e9, "USD", False),
        ("1.2 billion", 1.2e9, None, False),
        ("$1,577 million", 1.577e9, "USD", False),
        ("(1,234)", -1234.0, None, False),
        ("12.5%", 12.5, None, True),
        ("€3B", 3e9, "EUR", False),
        ("$(1,234) million", -1.234e9, "USD", False),
    ],
)
def test_amounts_carry_scale_sign_currency_and_percent(text, value, currency, percent) -> None:
    [amount] = find_amounts(text)
    assert amount.value == pytest.approx(value)
    assert (amount.currency, amount.percent) == (currency, percent)


def test_a_scale_letter_needs_to_end_the_word() -> None:
    assert [a.value for a in find_amounts("3 months")] == [3.0]


def test_parse_number_reads_accounting_negatives() -> None:
    assert parse_number("(1,234.5)") == -1234.5
    assert parse_number("n/a") is None


def test_annotation_keeps_the_wording_and_adds_the_full_value() -> None:
    text, notes = annotate_amounts("Capex was $1,577 million and FX cost (12).")
    assert text == "Capex was $1,577 million [= USD 1.577 billion] and FX cost (12) [= -12]."
    assert notes
    assert annotate_amounts("sales of 1.2 billion") == ("sales of 1.2 billion", []), "already canonical"
    assert format_scaled(-2.5e6, "USD") == "USD -2.5 million"


def test_table_scale_header_applies_to_bare_cells() -> None:
    chunk = "Consolidated Balance Sheets\n(in millions, except per share amounts)\nCash $\n1,671 $\n2,148\n2022\n"
    scale = find_table_scale(chunk)
    assert scale and scale.factor == 1e6 and scale.currency == "USD"
    noted, notes = apply_table_scale(chunk, scale)
    assert noted.startswith("[Amounts in USD millions") and noted.endswith(chunk)
    cells, _ = apply_table_scale(chunk, scale, cells=True)
    assert "1,671 [= USD 1.671 billion]" in cells and "2022 [=" not in cells
    assert find_table_scale("Revenue grew in 2022.") is None


@pytest.mark.parametrize(
    ("text", "labels"),
    [
        ("fiscal 2018", ["FY2018"]),
        ("FY18", ["FY2018"]),
        ("FY2018", ["FY2018"]),
        ("Q2 2023", ["FY2023 Q2"]),
        ("Q2 of FY2023", ["FY2023 Q2"]),
        ("Q2'2023", ["FY2023 Q2"]),
        ("FY2023Q1", ["FY2023 Q1"]),
        ("in 2021 Q1", ["FY2021 Q1"]),
        ("second quarter of 2023", ["FY2023 Q2"]),
        ("2022 Fourth-Quarter", ["FY2022 Q4"]),
        ("H1 FY2023", ["FY2023 H1"]),
        ("year ended December 31, 2018", ["FY2018"]),
        ("as of 2022", ["FY2022"]),
        ("from FY2015 to FY2016", ["FY2015", "FY2016"]),
    ],
)
def test_fiscal_periods(text, labels) -> None:
    assert [p.label for p in find_periods(text)] == labels


def test_bare_years_are_weaker_and_amounts_are_not_years() -> None:
    [p] = find_periods("sales in 2022 were $2,021 million")
    assert (p.year, p.explicit) == (2022, False)
    assert find_periods("sales in 2022", bare_years=False) == []


def test_period_annotation_leaves_canonical_forms() -> None:
    text, notes = annotate_periods("In fiscal 2018 and FY2019, the second quarter of 2023 ...")
    assert text == "In fiscal 2018 [= FY2018] and FY2019, the second quarter of 2023 [= FY2023 Q2] ..."
    assert notes == ["annotated 2 fiscal period(s)"]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("June 21, 1999", date(1999, 6, 21)),
        ("the 23rd day of  September, 2016", date(2016, 9, 23)),
        ("6/21/1999", date(1999, 6, 21)),
        ("Sept. 5, 2020", date(2020, 9, 5)),
        ("made effective the 10 day of January 2019", date(2019, 1, 10)),
    ],
)
def test_dates(text, value) -> None:
    assert [d.value for d in find_dates(text)] == [value]


def test_date_annotation_and_impossible_dates() -> None:
    assert annotate_dates("signed June 21, 1999.")[0] == "signed June 21, 1999 [= 1999-06-21]."
    assert find_dates("February 30, 2020") == []


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("3M COMPANY", "3m"),
        ("The Coca-Cola Company", "coca cola"),
        ("JOHNSON & JOHNSON", "johnson johnson"),
        ("American Express Company", "american express"),
        ("AMCOR PLC", "amcor"),
        ("I-ESCROW, INC.", "i escrow"),
        ("2THEMART.COM, INC.", "2themartcom"),
    ],
)
def test_name_keys(name, key) -> None:
    assert name_key(name) == key


def test_squashed_keys_compare_names_written_differently() -> None:
    assert squash(name_key("JOHNSON_JOHNSON".replace("_", " "))) == squash(name_key("Johnson & Johnson"))
    assert squash(name_key("COCACOLA")) == squash(name_key("The Coca-Cola Company"))


def test_abbreviations_are_expanded_once() -> None:
    text, notes = expand_abbreviations("EPS rose and SG&A fell; EPS again.")
    assert text == "EPS (earnings per share) rose and SG&A (selling, general and administrative expenses) fell; EPS again."
    assert notes == ["expanded EPS, SG&A"]


def test_the_amount_pattern_s_lookahead_only_skips_positions_where_no_amount_starts() -> None:
    """`_AMOUNT_START` is a speed-up: with and without it, the pattern finds the same spans."""
    plain = re.compile(_AMOUNT_BODY, re.IGNORECASE)
    rng = random.Random(0)
    pieces = list("0123456789 ,.$()-−–€£¥%\n\t") + "USD EUR GBP JPY usd eur k m b million billion percent dollars US$ uq".split()
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 20)))
        assert [m.span() for m in _AMOUNT.finditer(text)] == [m.span() for m in plain.finditer(text)], text


def test_every_period_pattern_s_needle_is_in_whatever_it_matches() -> None:
    """`find_periods` skips a pattern whose needle the text lacks: that must never skip a match."""
    rng = random.Random(1)
    pieces = (
        "Q 1 2 3 4 H q h FY fy Fy ' - of OF fiscal FISCAL Fiscal year years ended ENDED as AS As first second third "
        "fourth 1st 4th quarter Quarter half HALF December 31, 2018 2023 23 '18 Sept."
    ).split() + [" ", " ", "\n", "\t", "-"]
    for _ in range(20000):
        text = "".join(rng.choice(pieces) + rng.choice(["", " "]) for _ in range(rng.randint(1, 10)))
        for kind, needle, pattern in _PERIOD_PATTERNS:
            if pattern.search(text):
                assert needle(text.lower()), (kind, pattern.pattern, text)
        if _SCALE_HEADER.search(text):
            assert _SCALE_WORDS.search(text), text


def test_the_needles_change_nothing_on_a_real_filing(eval_dir) -> None:
    text = (eval_dir / "financebench" / "corpus" / "3M_2018_10K.txt").read_text()[:300_000]
    for start in range(0, len(text), 1500):
        chunk = text[start : start + 1500]
        expected = sorted(
            (m.start(), m.end()) for _kind, _needle, pattern in _PERIOD_PATTERNS for m in pattern.finditer(chunk)
        )
        found = sorted(
            (m.start(), m.end()) for _kind, needle, pattern in _PERIOD_PATTERNS
            if needle(chunk.lower()) for m in pattern.finditer(chunk)
        )
        assert found == expected
