"""How closely a skip cell's generated answers follow the dense cell's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..taskdata.jsonfiles import read_jsonl
from ..taskdata.metrics import rouge


def _answers(folder: Path, task: str) -> dict[int, str]:
    samples = read_jsonl(folder / f"samples_{task}_sweep.jsonl")
    return {s["doc_id"]: s["filtered_resps"][0] for s in samples}


def agreement(dense: Path, cell: Path, tokenizer: Any) -> dict[str, dict[str, Any]]:
    """Per generative task, how closely the cell's answers follow the dense cell's: exact match,
    ROUGE-L against the dense answer, and the first token where they diverge (None: identical)."""
    configs = json.loads((cell / "results.json").read_text())["configs"]
    out = {}
    for task, config in configs.items():
        if (
            config.get("output_type") != "generate_until"
            or not (cell / f"samples_{task}_sweep.jsonl").exists()
        ):
            continue
        ref, ours = _answers(dense, task), _answers(cell, task)
        rows = []
        for doc_id in sorted(set(ref) & set(ours)):
            a, b = tokenizer.encode(ref[doc_id]), tokenizer.encode(ours[doc_id])
            diverge = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
            if diverge is None and len(a) != len(b):
                diverge = min(len(a), len(b))
            same = ref[doc_id] == ours[doc_id]  # ROUGE of two empty answers is 0; they agree fully
            rows.append(
                {
                    "doc_id": doc_id,
                    "exact_match": same,
                    "rougeL": 100.0 if same else rouge(ours[doc_id], ref[doc_id])["rougeL"],
                    "first_divergence": diverge,
                }
            )
        n = len(rows) or 1
        diverged = [r["first_divergence"] for r in rows if r["first_divergence"] is not None]
        out[task] = {
            "exact_match": sum(r["exact_match"] for r in rows) / n,
            "rougeL": sum(r["rougeL"] for r in rows) / n,
            "mean_first_divergence": sum(diverged) / len(diverged) if diverged else None,
            "samples": rows,
        }
    return out
