"""Multi-turn generation for chat benchmarks (MT-Bench, Vicuna-80) through lm-eval.

lm-eval answers each request on its own, but MT-Bench's second question must be answered in
the context of the model's own first answer. A conversation task marks its requests with
``generation_kwargs: {conversation: true}`` and makes the request context the JSON list of user
turns (``encode_turns``); ``FFNSkipLM`` then plays the turns in order, batched across documents,
applying the model's chat template, and returns the JSON list of answers (``decode_answers``).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from lm_eval.api.instance import Instance

FLAG = "conversation"


def encode_turns(turns: list[str]) -> str:
    """The request context of a conversation: its user turns as a JSON list."""
    return json.dumps(list(turns))


def decode_answers(response: str) -> list[str]:
    """The model's answers, one per turn, from a conversation request's response."""
    answers = json.loads(response)
    if not isinstance(answers, list):
        raise ValueError(f"not a conversation response (a JSON list of answers): {response[:80]!r}")
    return [str(a) for a in answers]


def is_conversation(request: Instance) -> bool:
    return bool(request.args[1].get(FLAG))


def _turns(context: str) -> list[str]:
    try:
        turns = json.loads(context)
    except json.JSONDecodeError:
        turns = None
    if not isinstance(turns, list) or not turns:
        raise ValueError(
            "a conversation task's context must be the JSON list of its user turns; it was "
            f"{context[:80]!r}. Conversation tasks (mt_bench, vicuna80) apply the chat template "
            "themselves: run them without --apply_chat_template and without few-shot examples."
        )
    return [str(t) for t in turns]


def converse(
    requests: list[Instance],
    chat_template: Callable[[list[dict[str, str]]], str],
    generate: Callable[[list[Instance]], list[str]],
) -> list[str]:
    """Answer every conversation's turns in order: turn t of all conversations is one
    ``generate`` call, each prompt the chat-templated history including the model's own
    earlier answers. Returns, per request, the JSON list of its answers."""
    turns = [_turns(r.args[0]) for r in requests]
    kwargs = [{k: v for k, v in r.args[1].items() if k != FLAG} for r in requests]
    histories: list[list[dict[str, str]]] = [[] for _ in requests]
    for t in range(max(len(x) for x in turns)):
        live = [i for i, x in enumerate(turns) if t < len(x)]
        batch = []
        for i in live:
            histories[i].append({"role": "user", "content": turns[i][t]})
            context = chat_template(histories[i])
            batch.append(Instance("generate_until", requests[i].doc, (context, kwargs[i]), requests[i].idx))
        for i, answer in zip(live, generate(batch), strict=True):
            histories[i].append({"role": "assistant", "content": answer.strip()})
    return [encode_turns([m["content"] for m in h if m["role"] == "assistant"]) for h in histories]
