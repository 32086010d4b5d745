"""`--model ffnskip`: lm-eval's HFLM with FFN skipping attached; only what differs from HFLM."""

from __future__ import annotations

import dataclasses
import inspect
import logging
from functools import partial
from typing import Any

import torch
from lm_eval.models.huggingface import HFLM

from ..skip import LAYER_METHODS
from ..skip.adapters import ffn_sites
from ..skip.engine import checked_generate, make_engine
from ..skip.policy import SkipPolicy
from ..skip.stats import COUNTERS, SkipStats
from ..taskdata.conversation import converse, is_conversation
from .checkpoints import DEFAULT_MODEL, resolve

log = logging.getLogger(__name__)

# model_args of the policy (what calibration measures is not set from the command line)
POLICY_ARGS = tuple(
    f.name for f in dataclasses.fields(SkipPolicy) if f.name not in ("calibration", "influence")
)
# from_pretrained keywords that HFLM forwards through **kwargs
HF_LOAD_ARGS = (
    "attn_implementation",
    "low_cpu_mem_usage",
    "cache_dir",
    "local_files_only",
    "use_safetensors",
    "variant",
    "token",
    "device_map",
    "quantization_config",
)


def valid_args() -> set[str]:
    """Every model_arg ``--model ffnskip`` accepts."""
    params = inspect.signature(HFLM.__init__).parameters.values()
    named = {p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD or p.kind is p.KEYWORD_ONLY}
    return (named - {"self"}) | set(POLICY_ARGS) | set(HF_LOAD_ARGS) | {"profile"}


class FFNSkipLM(HFLM):
    """HFLM whose decoder skips FFN blocks per token (see ``policy.py``).

    model_args: every ``HFLM`` argument, plus the ``SkipPolicy`` fields (method, threshold,
    warmup, cold_start, cold_end, target_skip, refresh_every, skip_prompt, seed, horizon), and ``profile``
    (a file from ``ffnskip calibrate``, or ``auto``: calibrate once, cached). ``method=spread``
    takes its per-layer levels from the profile, or from a cached calibration when none is given;
    ``method=shortgpt`` its Block Influence from a cached measurement.
    ``pretrained`` defaults to the embedded ``smollm2-135m``; ``gemma3-270m`` is the other alias.
    """

    def __init__(self, pretrained: Any = DEFAULT_MODEL, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - valid_args())
        if unknown:
            raise ValueError(
                f"unknown model_args for --model ffnskip: {', '.join(unknown)}. Valid: "
                f"{', '.join(POLICY_ARGS)}, and HFLM's: {', '.join(sorted(valid_args() - set(POLICY_ARGS)))}"
            )
        given = {k: kwargs.pop(k) for k in POLICY_ARGS if k in kwargs}
        profile = kwargs.pop("profile", None)
        self.policy = SkipPolicy.from_args(given)
        if isinstance(pretrained, str):
            pretrained = resolve(pretrained)
        super().__init__(pretrained=pretrained, **kwargs)
        self.profile: str | None = None
        if profile is not None and str(profile).lower() != "none":
            self._apply_profile(str(profile), given)
        else:
            from .calibrate import with_calibration

            self.policy = with_calibration(self.policy, self.model, self.tokenizer)
        self.engine = make_engine(self.model, self.policy)
        self.engine.install()
        self.skip_stats = SkipStats(len(self.engine.sites))  # merged over processes
        self.notes: list[str] = []  # what the results JSON must say about these stats

    def _apply_profile(self, profile: str, given: dict[str, Any]) -> None:
        """ffnskip: take threshold, cold layers and k from a calibration profile (``auto``:
        calibrate once for ``target_skip``, cached per model). spread: its per-layer levels."""
        from .calibrate import PROFILE_KEYS, cached_profile, layer_calibration, read_profile

        method = self.policy.method
        if method not in ("ffnskip", "spread"):
            raise ValueError(f"profile= calibrates ffnskip and spread; method={method} uses none")
        fixed = {"target_skip"} if profile == "auto" else set()
        if method == "ffnskip" and (clash := sorted(set(given) & set(PROFILE_KEYS) - fixed)):
            raise ValueError(f"profile={profile} sets {', '.join(PROFILE_KEYS)}; drop {', '.join(clash)}")
        n_layers = len(ffn_sites(self.model)[1])
        path = (
            cached_profile(self.model, self.tokenizer, self.policy.target_skip)
            if profile == "auto"
            else profile
        )
        doc = read_profile(path, n_layers)
        if method == "spread":
            self.policy = dataclasses.replace(self.policy, calibration=layer_calibration(doc))
        else:
            self.policy = dataclasses.replace(self.policy, **{k: doc["policy"][k] for k in PROFILE_KEYS})
        self.profile = str(path)

    def _gather_stats(self, kind: str, n_requests: int) -> None:
        """Fold this process's counters into ``skip_stats``, summed over all processes."""
        local, self.engine.stats = self.engine.stats, SkipStats(self.skip_stats.n_layers)
        if self.world_size > 1:
            counts = torch.tensor(_counts(local), device=self.device)
            local = _from_counts(self.all_gather(counts.unsqueeze(0)).sum(0).tolist(), local.n_layers)
        self.skip_stats.merge(local)
        if self.policy.method != "dense" and local.tokens and not local.eligible:
            if kind == "generate_until":
                # a generation's passes were checked against the engine (checked_generate)
                hint = f"every generation ended within warmup={self.policy.warmup} tokens"
            elif not self.policy.skip_prompt:
                hint = f"{kind} scores prompt positions, which run the full model unless skip_prompt=true"
            else:
                hint = f"warmup={self.policy.warmup} covers every scored position"
            note = f"no token was eligible for skipping in {n_requests} {kind} requests: {hint}"
            self.notes.append(note)
            log.warning("ffnskip: %s. These are dense results, not skip results.", note)

    def _model_generate(
        self, context: torch.Tensor, max_length: int, stop: list[str], **kwargs: Any
    ) -> torch.Tensor:
        """HFLM's ``generate`` call, checked against what the engine saw (``checked_generate``)."""
        mask = kwargs.get("attention_mask")
        run = partial(super()._model_generate, context, max_length, stop, **kwargs)
        return checked_generate(self.model, torch.ones_like(context) if mask is None else mask, run)

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list:
        out = super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        self._gather_stats("loglikelihood", len(requests))
        return out

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list:
        out = super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
        self._gather_stats("loglikelihood_rolling", len(requests))
        return out

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list:
        """HFLM's generation; requests of conversation tasks play their turns in order."""
        chats = [i for i, r in enumerate(requests) if is_conversation(r)]
        plain = [i for i, r in enumerate(requests) if not is_conversation(r)]
        out: list[str] = [""] * len(requests)
        if plain:
            texts = super().generate_until([requests[i] for i in plain], disable_tqdm)
            for i, text in zip(plain, texts, strict=True):
                out[i] = text
        if chats:
            if not self.tokenizer.chat_template:
                raise ValueError(
                    f"{self.model.name_or_path}: conversation tasks (mt_bench, vicuna80) need a "
                    "tokenizer with a chat template; this one has none"
                )
            answers = converse(
                [requests[i] for i in chats],
                self.apply_chat_template,
                lambda batch: super(FFNSkipLM, self).generate_until(batch, disable_tqdm),
            )
            for i, text in zip(chats, answers, strict=True):
                out[i] = text
        self._gather_stats("generate_until", len(requests))
        return out

    def get_model_info(self) -> dict:
        """HFLM's info plus ``ffnskip``: the policy, the resolved layer layout and the stats."""
        info = super().get_model_info()
        stats = self.skip_stats.summary()
        info["ffnskip"] = {
            "policy": dataclasses.asdict(self.policy),
            "profile": self.profile,
            "layout": dataclasses.asdict(self.engine.layout),
            # layer methods: the FFN's share of a layer's weights (a skipped layer = 1/share FFNs)
            "ffn_share": self.engine.plan.ffn_share if self.policy.method in LAYER_METHODS else None,
            "stats": stats,
            "skipped_anything": bool(stats["skipped"]),
            "notes": self.notes,
        }
        return info


def _counts(stats: SkipStats) -> list[int]:
    return [*(getattr(stats, name) for name in COUNTERS), *stats.layer_skipped]


def _from_counts(values: list[float], n_layers: int) -> SkipStats:
    v = [int(x) for x in values]
    n = len(COUNTERS)
    return SkipStats(n_layers, **dict(zip(COUNTERS, v[:n], strict=True)), layer_skipped=v[n:])
