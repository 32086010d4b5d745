"""``ffnskip calibrate``: the per-layer similarity curve of a model, and the ffnskip settings
that reach a target skip ratio on it.

1. Measure. Greedy-decode from WikiText-2 prompts with the full model and record, for every
   generated token and layer, cos(h, h + FFN block) (the paper's Figure 2).
2. Cold regions. The layers at either end whose mean similarity stays below the midpoint of
   the curve's range (min + max) / 2 always run: that is where FFNs change the residual most.
3. Threshold and k. With the dense similarities the rule's trigger layer is known per token
   (a token's FFNs before its trigger all run), so the achieved ratio of any (threshold, k) is
   predicted without decoding again. Of the pairs within ``tolerance`` of the target, the one
   with the highest threshold wins (the most selective trigger); k is then as small as reaches
   the target. The profile is checked by real ffnskip decoding on held-out prompts.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Callable
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..skip.adapters import ffn_sites, watch_stream
from ..skip.engine import generate_fixed, generation_stats
from ..skip.provenance import versions
from ..skip.settings import SkipPolicy
from ..taskdata.data import wikitext_articles
from ..taskdata.jsonfiles import write_json
from .options import CalibrateOptions, CalibrationText

PROFILE_FORMAT = "lmeval-ffnskip-profile/1"
THRESHOLDS = tuple(round(0.5 + 0.005 * i, 3) for i in range(100))  # 0.5 .. 0.995
MAX_TRIES = 10  # real decoding runs per calibration
TEXT = CalibrationText()  # what calibration measures on by default
INFLUENCE_TEXT = CalibrationText(prompt_tokens=128)  # what ShortGPT's Block Influence is measured on


def wikitext_prompts(tokenizer: Any, settings: CalibrationText) -> tuple[list[list[int]], list[list[int]]]:
    """Calibration and held-out prompts: the first ``prompt_tokens`` of alternate articles."""
    pages = wikitext_articles()[: 2 * settings.prompts]
    ids = [tokenizer.encode(page)[: settings.prompt_tokens] for page in pages]
    return ids[0::2], ids[1::2]


def _batch(tokenizer: Any, prompts: list[list[int]], device: torch.device) -> dict[str, torch.Tensor]:
    width = max(map(len, prompts))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def similarities(model: nn.Module, batch: dict[str, torch.Tensor], new_tokens: int) -> torch.Tensor:
    """cos(h, h + FFN block) at every layer for the tokens fed to decoding steps (each generated
    token but the last), dense: [tokens, layers] (h: the residual stream the block adds to, in a
    parallel layer with attention's output in it)."""
    _, sites = ffn_sites(model)
    steps: list[list[torch.Tensor]] = []
    kept: dict[int, torch.Tensor] = {}  # layer -> the residual stream its block adds to

    def measure(site: Any) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            h = kept[site.index]
            if h.shape[1] != 1:  # the prompt pass
                return
            block = (site.out_norm(out) if site.out_norm is not None else out) * site.scale
            if site.index == 0:
                steps.append([])
            steps[-1].append(torch.cosine_similarity(h.float(), (h + block).float(), dim=-1).flatten())

        return hook

    handles = [h for s in sites for h in watch_stream(s, partial(kept.__setitem__, s.index))]
    handles += [s.mlp.register_forward_hook(measure(s)) for s in sites]
    try:
        generate_fixed(model, batch, new_tokens)
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat([torch.stack(layers, dim=1) for layers in steps]).cpu()


def cold_regions(mean: list[float], spread: list[float]) -> tuple[int, int]:
    """Leading and trailing layers whose mean similarity lies more than two typical spreads below
    the typical layer's (medians over layers), at least one at each end."""
    level = statistics.median(mean) - 2 * statistics.median(spread)
    start = next((i for i, m in enumerate(mean) if m >= level), len(mean))
    end = next((i for i, m in enumerate(reversed(mean)) if m >= level), len(mean))
    return max(1, start), max(1, end)


def trigger_room(cos: torch.Tensor, cold: tuple[int, int], threshold: float) -> torch.Tensor:
    """Per token, how many FFNs the rule could skip after its trigger (0: it never fires).

    The trigger is the first checked layer whose dense similarity reaches ``threshold``: a
    token's FFNs before its trigger all run, so its similarities there are the dense ones.
    """
    stop = cos.shape[1] - cold[1]
    fired = cos[:, cold[0] : stop - 1] >= threshold
    first = fired.float().argmax(1) + cold[0]
    return torch.where(fired.any(1), stop - first - 1, 0)


def predicted_ratio(cos: torch.Tensor, cold: tuple[int, int], threshold: float, k: int) -> float:
    """The share of FFNs the ffnskip rule would skip on these tokens."""
    return float(trigger_room(cos, cold, threshold).clamp(max=k).float().mean()) / cos.shape[1]


def candidate_thresholds(cos: torch.Tensor, cold: tuple[int, int]) -> list[float]:
    """Thresholds to try, highest first: the fixed grid plus 200 quantiles of the similarities in
    the checked layers, so a model whose layers all sit above 0.99 still gets thresholds between
    its tokens."""
    checked = cos[:, cold[0] : cos.shape[1] - cold[1] - 1].flatten().float()
    quantiles = torch.quantile(checked, torch.linspace(0, 1, 201)).tolist() if checked.numel() else []
    return sorted(
        {round(q, 6) for q in quantiles if THRESHOLDS[0] <= q < 1.0} | set(THRESHOLDS), reverse=True
    )


def choose(
    cos: torch.Tensor,
    cold: tuple[int, int],
    target: float,
    tolerance: float,
    thresholds: tuple[float, ...] | list[float] = THRESHOLDS,
) -> tuple[float, int, float]:
    """(threshold, k, predicted ratio) for ``target``: the smallest k within tolerance (most
    tokens fire, so the ratio holds when decoding for real), then the closest prediction, then
    the highest threshold; if no pair is within tolerance, the closest one."""
    n_layers = cos.shape[1]
    ks = torch.arange(1, n_layers - sum(cold))
    # (error beyond tolerance, k, error, -threshold, ratio): the smallest wins
    best: tuple[float, int, float, float, float] | None = None
    for threshold in thresholds:
        room = trigger_room(cos, cold, threshold)
        ratios = torch.minimum(room[:, None], ks[None, :]).float().mean(0) / n_layers
        for k, ratio in zip(ks.tolist(), ratios.tolist(), strict=True):
            error = abs(ratio - target)
            key = (0.0 if error <= tolerance else error, k, error, -threshold, ratio)
            best = key if best is None or key < best else best
    _, k, _, neg_threshold, ratio = best
    return -neg_threshold, k, ratio


def run_ratio(model: nn.Module, batch: dict[str, torch.Tensor], policy: SkipPolicy, new_tokens: int) -> float:
    """The achieved ratio of real ffnskip decoding with ``policy`` on ``batch``."""
    return generation_stats(model, batch, policy, new_tokens)["skip_ratio_eligible"] or 0.0


def calibrate(
    model: nn.Module,
    tokenizer: Any,
    target: float,
    settings: CalibrationText = TEXT,
    progress: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """The profile: per-layer curve, cold regions, threshold and k for ``target``, held-out check.

    The pair predicted from dense similarities is then run for real on the calibration prompts.
    Skipping changes later similarities, so where the real ratio misses both the target and the
    prediction by more than ``tolerance``, the threshold for that k is bisected on real decoding
    (lower thresholds fire earlier and more often), at most ``MAX_TRIES`` runs in all. Where k's
    granularity (1 / layers) keeps every pair off the target, the prediction holds and the search
    stops. The pair whose real ratio came closest to the target is kept.
    """
    calib, held = wikitext_prompts(tokenizer, settings)
    calib_batch = _batch(tokenizer, calib, model.device)
    progress(
        f"decoding {len(calib)} WikiText-2 prompts x {settings.new_tokens} tokens, measuring every layer"
    )
    cos = similarities(model, calib_batch, settings.new_tokens)
    mean, spread = cos.mean(0).tolist(), cos.std(0).tolist()
    cold = cold_regions(mean, spread)
    n_layers = cos.shape[1]
    thresholds = candidate_thresholds(cos, cold)
    threshold, k, predicted = choose(cos, cold, target, settings.tolerance, thresholds)
    tried: list[dict[str, Any]] = []

    def policy_args(threshold: float) -> dict[str, Any]:
        return {
            "threshold": threshold,
            "cold_start": cold[0],
            "cold_end": cold[1],
            "target_skip": k / n_layers,
        }

    def attempt(threshold: float) -> float:
        policy = SkipPolicy(warmup=0, **policy_args(threshold))
        real = run_ratio(model, calib_batch, policy, settings.new_tokens)
        predicted = predicted_ratio(cos, cold, threshold, k)
        tried.append({"threshold": threshold, "k": k, "predicted": predicted, "real": real})
        progress(f"threshold {threshold:g}, k {k}: predicted {predicted:.1%}, decoded {real:.1%}")
        return real

    real = attempt(threshold)
    if min(abs(real - target), abs(real - predicted)) > settings.tolerance:
        # bisect on real decoding between the thresholds (highest first) that fire too little, at
        # index `few`, and too much, at index `many`
        at = thresholds.index(threshold)
        few, many = (at, len(thresholds) - 1) if real < target else (0, at)
        while many - few > 1 and len(tried) < MAX_TRIES:
            mid = (few + many) // 2
            real = attempt(thresholds[mid])
            if abs(real - target) <= settings.tolerance:
                break
            if real < target:
                few = mid
            else:
                many = mid
    best = min(tried, key=lambda t: abs(t["real"] - target))
    args = policy_args(best["threshold"])
    held_batch = _batch(tokenizer, held, model.device)
    held_ratio = run_ratio(model, held_batch, SkipPolicy(warmup=0, **args), settings.new_tokens)
    return {
        "format": PROFILE_FORMAT,
        "model": getattr(model.config, "_name_or_path", ""),
        "n_layers": n_layers,
        "target_skip": target,
        "settings": asdict(settings),
        "layers": [
            {"mean": m, "std": s, "min": float(lo)}
            for m, s, lo in zip(mean, spread, cos.min(0).values, strict=True)
        ],
        "cold": {"cold_start": cold[0], "cold_end": cold[1]},
        "k": k,
        "policy": args,
        "tried": tried,
        "calibration_ratio": best["real"],
        "heldout_ratio": held_ratio,
        "tokens": cos.shape[0],
        "versions": versions(),
    }


PROFILE_KEYS = ("threshold", "cold_start", "cold_end", "target_skip")


def read_profile(path: Path, n_layers: int) -> dict[str, Any]:
    """A profile written by ``ffnskip calibrate``, checked against the model's depth."""
    try:
        profile = json.loads(Path(path).read_text())
    except OSError as err:
        raise ValueError(f"profile={path}: cannot read it ({err.strerror or err})") from err
    except json.JSONDecodeError as err:
        raise ValueError(
            f"profile={path}: not valid JSON ({err}); rewrite it with ffnskip calibrate"
        ) from err
    if not isinstance(profile, dict) or profile.get("format") != PROFILE_FORMAT:
        raise ValueError(f"profile={path}: not an ffnskip profile; write one with `ffnskip calibrate`")
    if profile["n_layers"] != n_layers:
        raise ValueError(
            f"profile={path} was calibrated on a model with {profile['n_layers']} layers; this one "
            f"has {n_layers}: calibrate this model (ffnskip calibrate --pretrained ...)"
        )
    return profile


def _cache_path(model: nn.Module, kind: str, key: list[Any]) -> Path:
    """Where a per-model calibration result is cached (keyed by model name, kind and ``key``)."""
    from ..taskdata.data import cache_root

    name = str(getattr(model.config, "_name_or_path", "")) or type(model).__name__
    digest = hashlib.sha256(json.dumps([name, kind, *key]).encode()).hexdigest()[:16]
    return cache_root() / "profiles" / f"{Path(name).name}-{kind}-{digest}.json"


def _cached(path: Path, compute: Callable[[], Any]) -> Any:
    """``compute()``'s JSON, read from ``path`` or computed once and written whole."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, compute())
    return json.loads(path.read_text())


def cached_profile(model: nn.Module, tokenizer: Any, target: float, settings: CalibrationText = TEXT) -> Path:
    """The profile of ``model`` for ``target``, calibrated on first use and cached per model."""
    path = _cache_path(model, f"{target:g}", [target, asdict(settings)])
    _cached(path, lambda: calibrate(model, tokenizer, target, settings))
    return path


def layer_calibration(profile: dict[str, Any]) -> tuple[tuple[float, float], ...]:
    """Per-layer (mean, std) of the similarity in a profile (what ``method=spread`` needs)."""
    return tuple((layer["mean"], layer["std"]) for layer in profile["layers"])


def cached_layer_calibration(
    model: nn.Module, tokenizer: Any, settings: CalibrationText = TEXT
) -> tuple[tuple[float, float], ...]:
    """Per-layer (mean, std) of the dense similarity on the calibration prompts, cached per model
    (the curve alone: no threshold search)."""

    def measure() -> dict[str, Any]:
        batch = _batch(tokenizer, wikitext_prompts(tokenizer, settings)[0], model.device)
        cos = similarities(model, batch, settings.new_tokens)
        stats = zip(cos.mean(0).tolist(), cos.std(0).tolist(), strict=True)
        return {"layers": [{"mean": m, "std": s} for m, s in stats]}

    return layer_calibration(_cached(_cache_path(model, "layers", [asdict(settings)]), measure))


def cached_block_influence(
    model: nn.Module, tokenizer: Any, settings: CalibrationText = INFLUENCE_TEXT
) -> tuple[float, ...]:
    """ShortGPT's Block Influence of every layer on the calibration prompts, cached per model."""
    from ..skip.layerskip import block_influence

    def measure() -> dict[str, Any]:
        batch = _batch(tokenizer, wikitext_prompts(tokenizer, settings)[0], model.device)
        return {"block_influence": block_influence(model, batch)}

    return tuple(_cached(_cache_path(model, "influence", [asdict(settings)]), measure)["block_influence"])


def with_calibration(policy: SkipPolicy, model: nn.Module, tokenizer: Any) -> SkipPolicy:
    """``policy`` with what its method measures on calibration text filled in (cached per model):
    the per-layer similarity levels of ``spread``, the Block Influence of ``shortgpt``."""
    if "levels" in policy.rule.needs and policy.calibration is None:
        return replace(policy, calibration=cached_layer_calibration(model, tokenizer))
    if "influence" in policy.rule.needs and policy.influence is None:
        return replace(policy, influence=cached_block_influence(model, tokenizer))
    return policy


def run_calibrate(
    options: CalibrateOptions, log: Callable[[str], None] = lambda line: None
) -> dict[str, Any]:
    """``ffnskip calibrate``: load the model and ``calibrate`` it for the options' target (``log``
    gets a line per decoding run)."""
    options.check()  # before anything loads
    from ..inputs.checkpoints import load

    model, tokenizer = load(options.pretrained, options.device)
    return calibrate(model, tokenizer, options.target, options.text, log)
