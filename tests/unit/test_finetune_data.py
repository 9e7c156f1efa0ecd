"""Fine-tuning data: validation of pairs, what the model learns to say, the split, content
addresses, and the GGUF form of a trained adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import ValidationFailedError
from finetune.data import (
    Example,
    Pair,
    build_examples,
    examples_hash,
    holds_evidence,
    parse_pairs,
    read_examples,
    split_examples,
    target_answer,
    write_examples,
)
from finetune.registry import adapter_id
from modules.base import Candidate
from retrieval.prompting import NO_ANSWER, SYSTEM_PROMPT

pytestmark = pytest.mark.unit


def candidate(doc: str, text: str) -> Candidate:
    return Candidate(
        id=f"{doc}-{len(text)}", doc_id=f"doc_{doc}", filename=f"{doc}.txt", page=None, text=text, payload={},
        score=1.0, similarity=0.5, rank=0,
    )


def test_dev_files_parse(eval_dir: Path) -> None:
    pairs = parse_pairs((eval_dir / "pubmedqa" / "dev.jsonl").read_text())
    assert len(pairs) == 400 and pairs[0].label in ("yes", "no", "maybe")
    assert sum(not p.answerable for p in pairs) == 40


def test_bad_lines_are_all_reported_with_their_numbers() -> None:
    text = "\n".join([
        json.dumps({"question": "Is it?", "answers": ["yes"]}),
        "{not json",
        json.dumps({"question": "", "answers": ["x"]}),
        json.dumps({"question": "Q?", "answers": "yes"}),
        json.dumps({"question": "Q2?", "answers": [], "answerable": True}),
        json.dumps(["a list"]),
    ])
    with pytest.raises(ValidationFailedError) as err:
        parse_pairs(text)
    assert err.value.code == "finetune_bad_data"
    assert [d.split(":")[0] for d in err.value.details] == ["line 2", "line 3", "line 4", "line 5", "line 6"]


def test_empty_data_and_duplicate_ids_are_refused() -> None:
    with pytest.raises(ValidationFailedError) as err:
        parse_pairs("\n\n")
    assert err.value.code == "finetune_empty_data"
    row = json.dumps({"id": "a", "question": "Q?", "answers": ["x"]})
    with pytest.raises(ValidationFailedError) as err:
        parse_pairs(f"{row}\n{row}")
    assert "duplicate id 'a'" in err.value.details[0]


def test_unanswerable_pairs_need_no_answer_and_learn_to_abstain() -> None:
    (pair,) = parse_pairs(json.dumps({"question": "When does it expire?", "answers": [], "answerable": False}))
    assert target_answer(pair, [candidate("c", "Some clause.")]) == NO_ANSWER


def test_pubmedqa_target_states_the_label_cites_the_gold_abstract_and_adds_only_what_it_says() -> None:
    pair = Pair(
        id="p", question="Is X better?", answers=["yes"], doc_ids=["pmid_1"], label="yes",
        long_answer="X was better in all groups. Further trials are needed.",
    )
    context = [candidate("pmid_2", "Unrelated."), candidate("pmid_1", "Methods... X outperformed Y.")]
    # The conclusion is not in the cited abstract (PubMedQA withholds it): the label alone.
    assert target_answer(pair, context) == "Yes [2]."
    stating = [context[0], candidate("pmid_1", "Results... X was better in all groups. Further trials...")]
    assert target_answer(pair, stating) == "Yes. X was better in all groups [2]."
    # The gold abstract was not retrieved: the model must not learn to answer anyway.
    assert target_answer(pair, context[:1]) == NO_ANSWER


def test_cuad_targets_cite_the_clause_holding_the_evidence() -> None:
    clause = "Once every twelve (12) months, 2TheMart through a CPA may inspect and audit such records."
    yes = Pair(id="y", question="Audit rights?", answers=["Yes"], doc_ids=["cuad_a"], evidence=[clause])
    context = [candidate("cuad_a", "Definitions."), candidate("cuad_a", f"Section 7. {clause} Costs...")]
    assert target_answer(yes, context) == "Yes [2]."
    no = Pair(id="n", question="Non-compete?", answers=["No"], doc_ids=["cuad_a"])
    assert target_answer(no, context) == "No."
    # The clause split between two chunks, with other whitespace: cited where most of it is.
    split = [
        candidate("cuad_a", "2TheMart may inspect. Once every twelve"),
        candidate("cuad_a", "(12)\n months , 2TheMart through a CPA may  inspect and audit such records."),
    ]
    assert target_answer(yes, split) == "Yes [2]."
    # The contract reached the context but its clause did not: a "Yes" there would be a guess.
    assert target_answer(yes, context[:1]) == NO_ANSWER
    dotted = "cuad_Zounds_Hearing_Inc._-_MANUFACTURING_AGREEMENT_EX-10.10"
    absent = Pair(id="u", question="Non-compete?", answers=["No"], doc_ids=[dotted])
    assert target_answer(absent, [candidate("other", "x"), candidate(dotted, "Audit...")]) == "No."
    assert target_answer(absent, [candidate("other", "x")]) == NO_ANSWER
    span = Pair(id="d", question="Agreement date?", answers=["6/21/1999", "June 21, 1999"], doc_ids=["cuad_a"])
    dated = [candidate("cuad_a", "This Agreement is made on June 21, 1999 by and between ...")]
    assert target_answer(span, dated) == "June 21, 1999 [1]"


CLAUSE = "Licensee shall not assign this Agreement without the prior written consent of Licensor."


def test_evidence_is_held_across_a_chunk_edge_but_not_as_scattered_words() -> None:
    assert holds_evidence("7. Assignment. Licensee shall not assign this Agreement without the prior written", [CLAUSE])
    assert not holds_evidence("7. Assignment. Licensee shall not assign this Agreement", [CLAUSE])
    assert holds_evidence("Licensee shall not assign this Agreement\n\nwithout the prior written consent", [CLAUSE], 0.6)
    scattered = "Licensor may assign. The Agreement needs consent. Licensee shall pay; prior notice is written."
    assert not holds_evidence(scattered, [CLAUSE])
    # Any annotated span counts; one of fewer than four words is no evidence of anything.
    assert holds_evidence(f"Section 9. {CLAUSE}", ["No.", CLAUSE])
    assert not holds_evidence("No. 5 of the schedule", ["No."])


def test_examples_carry_the_served_messages_and_a_stable_content_address() -> None:
    pairs = [Pair(id=str(i), question=f"Question {i}?", answers=["forty-two"]) for i in range(6)]
    context = [candidate("a", "The answer is forty-two.")]
    examples = build_examples(pairs, lambda p: context)
    assert examples[0].messages[-1]["content"].endswith("Question: Question 0?")
    assert "[1] (a.txt)\nThe answer is forty-two." in examples[0].messages[-1]["content"]
    assert examples[0].completion == "forty-two [1]"
    assert examples[0].messages[0]["content"] == SYSTEM_PROMPT
    assert build_examples(pairs, lambda p: context, "Be brief.")[0].messages[0]["content"] == "Be brief."
    assert examples_hash(examples) == examples_hash(build_examples(pairs, lambda p: context))
    changed = build_examples(pairs, lambda p: [candidate("a", "The answer is forty-three.")])
    assert examples_hash(changed) != examples_hash(examples)


def test_examples_survive_a_round_trip_through_their_file(tmp_path: Path) -> None:
    pairs = [Pair(id="u", question="Line\u2028separated?", answers=["both\u2029ways"])]
    examples = build_examples(pairs, lambda p: [candidate("a", "Text with a \u2028 line separator.")])
    write_examples(examples, tmp_path / "examples.jsonl")
    assert read_examples(tmp_path / "examples.jsonl") == examples


def _examples(n_answerable: int, n_unanswerable: int) -> list[Example]:
    return [
        Example(id=f"e{i}", messages=[], completion="x", answerable=i < n_answerable, answers=["x"], domain=None,
                context_ids=[])
        for i in range(n_answerable + n_unanswerable)
    ]


def test_split_is_seeded_stratified_and_disjoint() -> None:
    examples = _examples(40, 10)
    train, held = split_examples(examples, eval_fraction=0.2, seed=3)
    assert len(held) == 10 and sum(not e.answerable for e in held) == 2
    assert not {e.id for e in train} & {e.id for e in held} and len(train) + len(held) == 50
    again, held_again = split_examples(list(reversed(examples)), eval_fraction=0.2, seed=3)
    assert [e.id for e in held_again] == [e.id for e in held]
    _, other = split_examples(examples, eval_fraction=0.2, seed=4)
    assert {e.id for e in other} != {e.id for e in held}


def test_adapter_ids_are_content_addressed() -> None:
    base = adapter_id("legal", "b" * 64, "d" * 64, {"rank": 16})
    assert base == adapter_id("legal", "b" * 64, "d" * 64, {"rank": 16})
    assert base.startswith("legal-") and ":" not in base and "," not in base
    assert base != adapter_id("legal", "b" * 64, "d" * 64, {"rank": 8})
    assert base != adapter_id("legal", "b" * 64, "e" * 64, {"rank": 16})


def test_a_peft_adapter_becomes_a_llama_cpp_lora_gguf(tmp_path: Path) -> None:
    """A tiny, randomly initialised Gemma 3 (the small model's architecture) with LoRA on the
    attention projections; its GGUF adapter names the base tensors llama.cpp uses."""
    import torch
    from gguf import GGUFReader
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from finetune.gguf_adapter import write_gguf_adapter
    from finetune.train import LoraSettings, add_lora

    config = Gemma3TextConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16,
    )
    torch.manual_seed(0)
    model = add_lora(Gemma3ForCausalLM(config), LoraSettings(rank=4, alpha=8))
    model.save_pretrained(tmp_path / "peft")
    out = write_gguf_adapter(tmp_path / "peft", tmp_path / "tiny.gguf", architecture="gemma3", n_layers=2)

    reader = GGUFReader(out)
    text = lambda key: bytes(reader.fields[key].parts[-1]).decode()  # noqa: E731
    assert text("general.type") == "adapter" and text("adapter.type") == "lora"
    assert text("general.architecture") == "gemma3"
    assert float(reader.fields["adapter.lora.alpha"].parts[-1][0]) == 8.0
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}
    assert len(shapes) == 2 * 2 * 4  # layers x (q, k, v, o) x (a, b)
    # GGUF lists dimensions innermost first: lora_a is [in, r], lora_b is [r, out].
    assert shapes["blk.0.attn_q.weight.lora_a"] == (32, 4)
    assert shapes["blk.0.attn_q.weight.lora_b"] == (4, 32)
    assert shapes["blk.1.attn_k.weight.lora_b"] == (4, 16)
    assert shapes["blk.1.attn_output.weight.lora_a"] == (32, 4)


def test_architectures_needing_a_permutation_are_refused(tmp_path: Path) -> None:
    from finetune.gguf_adapter import write_gguf_adapter

    with pytest.raises(ValidationFailedError) as err:
        write_gguf_adapter(tmp_path, tmp_path / "x.gguf", architecture="llama", n_layers=2)
    assert err.value.code == "finetune_unsupported_model"
