"""The clause-presence test behind `bench.evidence_ceiling`'s perfect-reader accuracy."""

from bench.evidence_ceiling import clause_present

CLAUSE = "Licensee shall not assign this Agreement without the prior written consent of Licensor."


def test_a_clause_split_across_chunks_is_present():
    context = "7. Assignment. Licensee shall not assign this Agreement\n\nwithout the prior written consent of Licensor."
    assert clause_present([CLAUSE], context)


def test_a_clause_whose_words_are_scattered_is_absent():
    context = "Licensor may assign. The Agreement needs consent. Licensee shall pay; prior notice is written."
    assert not clause_present([CLAUSE], context)


def test_any_annotated_span_counts_and_short_spans_are_ignored():
    assert clause_present(["No.", CLAUSE], f"Section 9. {CLAUSE}")
    assert not clause_present(["No."], "No. 5 of the schedule")
