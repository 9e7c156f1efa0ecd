"""Prompt-processing and generation speed of the embedded llama-server on a RAG prompt.

For each model and thread count: start llama-server, answer a short RAG question and
the long one (printed, to judge quality), then time `--runs` requests on a prompt of
about `--prompt-tokens` tokens with the prompt cache off (every run processes the
whole prompt) and EOS ignored (every run generates `--max-tokens`). Speeds are
llama-server's own timings; the table shows the median.

    python -m bench.llm_bench --model gemma3-270m --threads 1 --threads 2
    python -m bench.llm_bench --model qwen2.5-coder-1.5b-instruct --threads 1 --json bench/results/llm.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
from pathlib import Path
from typing import Any

import httpx

from core.llm import ChatClient
from core.models import resolve_gguf
from core.runtime import LlamaServer
from core.settings import ModelTier

SYSTEM = "You answer questions about company filings using only the numbered context passages. Cite passages like [3]."

PASSAGES = [
    "Northwind Logistics reported total revenue of $7.84 billion for fiscal 2023, compared with $7.12 billion in "
    "fiscal 2022, an increase of 10.1% driven by higher freight volumes in North America.",
    "Operating income was $912 million in fiscal 2023, or 11.6% of revenue, up from $801 million in fiscal 2022. "
    "Fuel costs declined 4% year over year while labor costs rose 6%.",
    "The company operates 214 distribution centers across 19 countries. Its largest facility, in Memphis, "
    "Tennessee, handles about 1.3 million parcels per day.",
    "Capital expenditures were $655 million in fiscal 2023, mainly for fleet electrification and warehouse "
    "automation. Management expects capital expenditures of $700 to $750 million in fiscal 2024.",
    "Northwind had 48,300 full-time employees at the end of fiscal 2023. Employee turnover fell from 21% to 17%.",
    "Long-term debt stood at $3.1 billion at fiscal year end, with a weighted average interest rate of 4.2%. "
    "The company repaid $400 million of senior notes due 2023.",
    "Net income attributable to shareholders was $598 million, or $4.71 per diluted share, compared with "
    "$533 million, or $4.18 per diluted share, in fiscal 2022.",
    "The board declared a quarterly dividend of $0.62 per share, a 9% increase, and authorized a new $1 billion "
    "share repurchase program.",
    "Risk factors include exposure to fuel price volatility, labor availability, cybersecurity incidents and "
    "changes in international trade policy affecting cross-border shipments.",
    "Segment results: Ground delivered revenue of $4.9 billion, Air $1.8 billion and Contract Logistics "
    "$1.14 billion. Contract Logistics grew fastest, at 17%.",
    "The company's customer concentration is low: no single customer accounted for more than 4% of revenue.",
    "Cash and cash equivalents were $1.26 billion at the end of fiscal 2023, and free cash flow was $884 million.",
]
QUESTION = "What was Northwind Logistics' operating income in fiscal 2023, and what share of revenue was it?"
SHORT_CONTEXT = PASSAGES[:2]


def rag_messages(passages: list[str], question: str) -> list[dict[str, str]]:
    context = "\n".join(f"[{i}] {p}" for i, p in enumerate(passages, 1))
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Context:\n{context}\n\nQuestion: {question}"},
    ]


async def long_rag_messages(client: ChatClient, target_tokens: int) -> tuple[list[dict[str, str]], int]:
    """Repeat the passages (as a retriever returning many chunks would) up to about `target_tokens`."""
    passages: list[str] = []
    while True:
        candidate = passages + [PASSAGES[len(passages) % len(PASSAGES)]]
        messages = rag_messages(candidate, QUESTION)
        tokens = await client.count_tokens("\n".join(m["content"] for m in messages))
        if tokens > target_tokens and passages:
            messages = rag_messages(passages, QUESTION)
            return messages, await client.count_tokens("\n".join(m["content"] for m in messages))
        passages = candidate


async def bench_one(model: str, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    gguf = await asyncio.to_thread(resolve_gguf, model, args.data_dir / "models")
    server = LlamaServer(
        gguf, data_dir=args.data_dir, alias=model, ctx_tokens=args.ctx, threads=threads, log_name=f"bench-{threads}t"
    )
    await server.start(timeout_s=300)
    try:
        async with httpx.AsyncClient() as http:
            props = (await http.get(f"http://{server.host}:{server.port}/props")).json()
        tier = ModelTier(model=model, gguf=model, timeout_s=600.0, retries=0)
        async with ChatClient(tier, url=server.url) as client:
            short = await client.chat(rag_messages(SHORT_CONTEXT, QUESTION), max_tokens=64)
            messages, content_tokens = await long_rag_messages(client, args.prompt_tokens)
            answer = await client.chat(messages, max_tokens=64)
            runs = []
            for _ in range(args.runs):
                result = await client.chat(
                    messages,
                    max_tokens=args.max_tokens,
                    logprobs=True,
                    extra_body={"cache_prompt": False, "ignore_eos": True},
                )
                runs.append(result)
        return {
            "model": model,
            "gguf": str(gguf),
            "threads": threads,
            "startup_s": round(server.startup_s or 0.0, 2),
            "chat_template": (props.get("chat_template") or "")[:120],
            "short_rag_answer": short.text,
            "long_rag_answer": answer.text,
            "prompt_tokens": runs[0].prompt_tokens,
            "content_tokens": content_tokens,
            "generated_tokens": runs[0].completion_tokens,
            "prompt_tok_s": [round(r.timings["prompt_per_second"], 1) for r in runs],
            "gen_tok_s": [round(r.timings["predicted_per_second"], 1) for r in runs],
            "latency_s": [round(r.latency_ms / 1000, 2) for r in runs],
        }
    finally:
        await server.stop()


async def main(args: argparse.Namespace) -> None:
    rows = []
    for model in args.model:
        for threads in args.threads:
            row = await bench_one(model, threads, args)
            rows.append(row)
            print(json.dumps(row, indent=1), flush=True)
    header = ("model", "thr", "start s", "prompt", "pp tok/s", "gen", "tg tok/s", "lat s")
    print("\n{:32} {:>3} {:>7} {:>6} {:>8} {:>4} {:>8} {:>6}".format(*header))
    for r in rows:
        print(
            f"{r['model']:32} {r['threads']:>3} {r['startup_s']:>7} {r['prompt_tokens']:>6} "
            f"{statistics.median(r['prompt_tok_s']):>8} {r['generated_tokens']:>4} "
            f"{statistics.median(r['gen_tok_s']):>8} {statistics.median(r['latency_s']):>6}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", help="model key or .gguf path (repeatable; default gemma3-270m)")
    p.add_argument("--threads", action="append", type=int, help="llama-server threads (repeatable; default 1)")
    p.add_argument("--prompt-tokens", type=int, default=800, help="approximate prompt length, tokens")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens generated per timed run")
    p.add_argument("--runs", type=int, default=3, help="timed runs per configuration")
    p.add_argument("--ctx", type=int, default=2048, help="context window, tokens")
    p.add_argument("--data-dir", type=Path, default=Path(".cache"), help="models/ and logs/ go here")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    args.model = args.model or ["gemma3-270m"]
    args.threads = args.threads or [1]
    return args


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the results
    asyncio.run(main(parse_args()))
