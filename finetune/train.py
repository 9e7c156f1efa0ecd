"""LoRA fine-tuning of the small model with `peft`, and its evaluation by generation.

The loop is plain PyTorch, one example a forward pass with gradients accumulated over
`batch_size` examples: on a CPU batching saves nothing, and without padding every token
trained on is real. The loss covers the completion only, and logits are computed only
for those positions (`logits_to_keep`): the 270M Gemma's 262k-token vocabulary makes
full-sequence logits most of the cost and the memory of a step.

Evaluation (`finetune.run`) asks llama-server, the way answers are served; `summarize`
turns its scored answers into accuracy and abstention rates.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from core.errors import ValidationFailedError
from finetune.data import Example

# The served small model stops at a blank line (settings.small.stop).
STOP = "\n\n"


class LoraSettings(BaseModel):
    """Hyper-parameters of one fine-tune. The defaults finish a few hundred PubMedQA or CUAD
    examples within an hour on 2 CPU cores."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(16, ge=1, le=256, description="LoRA rank r.")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha; updates are scaled by alpha / rank.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        description="Linear layers that get adapters (attention projections by default).",
    )
    learning_rate: float = Field(2e-4, gt=0, le=1.0, description="Peak learning rate (linear warm-up, cosine decay).")
    epochs: float = Field(1.0, gt=0, le=20, description="Passes over the training examples.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(4, ge=1, le=64, description="Examples per optimizer step (gradient accumulation).")
    warmup_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of steps spent warming up.")
    max_tokens: int = Field(
        1536, ge=64, le=32768, description="Longest example (prompt and completion, in model tokens); longer ones are refused."
    )
    eval_fraction: float = Field(0.3, ge=0.0, lt=1.0, description="Share of the pairs held out for evaluation.")
    eval_max_new_tokens: int = Field(32, ge=1, le=512, description="Tokens generated per evaluation answer.")
    seed: int = Field(0, description="Seed for the split, the adapter's initialisation, dropout and order.")
    threads: int = Field(2, ge=1, le=256, description="CPU threads for torch.")


@dataclass
class Progress:
    """Reported after every optimizer step."""

    step: int
    total_steps: int
    loss: float
    examples_per_s: float
    eta_s: float
    learning_rate: float


@dataclass
class EvalResult:
    n: int
    accuracy: float
    abstention_recall: float | None
    false_abstention_rate: float | None
    answers: list[dict[str, Any]]

    def summary(self) -> dict[str, Any]:
        return {
            "n": self.n, "accuracy": self.accuracy, "abstention_recall": self.abstention_recall,
            "false_abstention_rate": self.false_abstention_rate,
        }


@dataclass
class Tokenized:
    example: Example
    prompt_ids: list[int]
    completion_ids: list[int]

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(checkpoint: Path, threads: int):
    """Tokenizer and float32 model from a base checkpoint folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32).to(device())
    return tokenizer, model


def render_prompt(tokenizer, messages: list[dict[str, str]], chat_template: str | None) -> str:
    """The prompt text as the serving tier renders it: its chat template file's text, or the
    model's own template (None)."""
    return tokenizer.apply_chat_template(
        messages, chat_template=chat_template, tokenize=False, add_generation_prompt=True
    )


def tokenize(tokenizer, examples: Sequence[Example], max_tokens: int, chat_template: str | None) -> list[Tokenized]:
    """Prompt (rendered by `chat_template`, with the BOS token the server adds) and
    completion (as the model continues the prompt: a space, the answer, the blank line it
    stops at). Raises `ValidationFailedError` listing the examples longer than `max_tokens`."""
    out = []
    too_long = []
    for example in examples:
        prompt = render_prompt(tokenizer, example.messages, chat_template)
        prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        completion_ids = tokenizer(" " + example.completion + STOP, add_special_tokens=False)["input_ids"]
        item = Tokenized(example, prompt_ids, completion_ids)
        if item.length > max_tokens:
            too_long.append(f"{example.id}: {item.length} tokens")
        out.append(item)
    if too_long:
        raise ValidationFailedError(
            f"{len(too_long)} example(s) are longer than max_tokens={max_tokens}: lower the module's "
            "context_tokens or raise max_tokens",
            code="finetune_example_too_long",
            details=too_long[:20],
        )
    return out


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def add_lora(model, settings: LoraSettings):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules), task_type="CAUSAL_LM", bias="none",
    )
    return get_peft_model(model, config)


def total_steps(n_examples: int, settings: LoraSettings) -> int:
    per_epoch = math.ceil(n_examples / settings.batch_size)
    return settings.max_steps or max(1, math.ceil(per_epoch * settings.epochs))


def train(
    model,
    items: Sequence[Tokenized],
    settings: LoraSettings,
    on_progress: Callable[[Progress], None] | None = None,
) -> list[float]:
    """Train the LoRA weights of a peft `model` in place; returns the loss of every step."""
    import torch

    if not items:
        raise ValidationFailedError("no training examples left after the evaluation split", code="finetune_empty_data")
    steps = total_steps(len(items), settings)
    warmup = int(steps * settings.warmup_fraction)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)

    def lr_at(step: int) -> float:  # step counts from 0
        if step < warmup:
            return settings.learning_rate * (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return settings.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))

    order = _example_order(len(items), steps * settings.batch_size, settings.seed)
    model.train()
    losses = []
    started = time.perf_counter()
    dev = device()
    for step in range(steps):
        lr = lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = [items[i] for i in order[step * settings.batch_size : (step + 1) * settings.batch_size]]
        completion_tokens = sum(len(item.completion_ids) for item in batch)
        step_loss = 0.0
        for item in batch:
            input_ids = torch.tensor([item.prompt_ids + item.completion_ids], device=dev)
            n = len(item.completion_ids)
            # Logits at positions -n-1 .. -2 predict the n completion tokens.
            logits = model(input_ids=input_ids, logits_to_keep=n + 1).logits[0, :-1]
            labels = input_ids[0, -n:]
            loss = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum") / completion_tokens
            loss.backward()
            step_loss += loss.item()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
        if on_progress:
            elapsed = time.perf_counter() - started
            done = (step + 1) * settings.batch_size
            on_progress(
                Progress(
                    step=step + 1, total_steps=steps, loss=round(step_loss, 4),
                    examples_per_s=round(done / elapsed, 3),
                    eta_s=round(elapsed / (step + 1) * (steps - step - 1), 1), learning_rate=lr,
                )
            )
    model.eval()
    return losses


def _example_order(n: int, count: int, seed: int) -> list[int]:
    """`count` example indexes: seeded shuffles of all `n`, one epoch after another."""
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < count:
        epoch = list(range(n))
        rng.shuffle(epoch)
        order += epoch
    return order[:count]


def summarize(answers: list[dict[str, Any]]) -> EvalResult:
    unanswerable = [a for a in answers if not a["answerable"]]
    answerable = [a for a in answers if a["answerable"]]
    return EvalResult(
        n=len(answers),
        accuracy=round(sum(a["correct"] for a in answers) / len(answers), 4) if answers else 0.0,
        abstention_recall=(
            round(sum(a["decision"] == "abstained" for a in unanswerable) / len(unanswerable), 4) if unanswerable else None
        ),
        false_abstention_rate=(
            round(sum(a["decision"] == "abstained" for a in answerable) / len(answerable), 4) if answerable else None
        ),
        answers=answers,
    )
