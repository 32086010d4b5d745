"""`--model ffnskip`: lm-eval's HFLM with FFN skipping attached; only what differs from HFLM."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import os
import sys
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import torch
from lm_eval.models.huggingface import HFLM

from ..inputs.checkpoints import DEFAULT_MODEL, preflight
from ..skip.adapters import ffn_sites
from ..skip.decode import CompiledDecoder, check_config, generation_refusal, refusal
from ..skip.engine import checked_generate, make_engine
from ..skip.hooks import installed, rows_counted
from ..skip.layout import LayerLayout
from ..skip.rules import traits
from ..skip.settings import SkipPolicy, setting_names, to_bool
from ..skip.stats import COUNTERS, SkipStats
from ..taskdata.conversation import converse, is_conversation
from .stops import kept_lengths

log = logging.getLogger(__name__)

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


# lm-eval's request cache (``--use_cache``) keys a request by its text alone, not by the model
CACHE_REFUSED = (
    "--use_cache cannot be used with --model ffnskip: lm-eval's cache keys each request by its "
    "text alone, not by model_args, so a run would be handed answers another configuration "
    "computed. Drop --use_cache (an `ffnskip sweep` resumes finished cells, keyed by every setting)"
)


# lm-eval's default devices (CLI, HFLM): where CUDA is absent HFLM falls back to the CPU for
# ``cuda:0``; the device that ran is recorded in ``config["ffnskip"]["device"]``
LM_EVAL_DEFAULT_DEVICES = (None, "cuda:0")


def hf_args() -> set[str]:
    """The model_args ``--model ffnskip`` hands to HFLM (and through it to ``from_pretrained``)."""
    params = inspect.signature(HFLM.__init__).parameters.values()
    named = {p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD or p.kind is p.KEYWORD_ONLY}
    return (named - {"self"}) | set(HF_LOAD_ARGS)


def valid_args(method: str = "ffnskip") -> set[str]:
    """Every model_arg ``--model ffnskip`` accepts with ``method`` (its rule may add settings)."""
    return hf_args() | set(setting_names(method)) | {"profile", "compile"}


def policy_of(model_args: Mapping[str, Any]) -> SkipPolicy:
    """The skip settings among ``--model ffnskip``'s model_args; ValueError naming any model_arg
    that neither they, ``profile``, ``compile`` nor HFLM take."""
    method = str(model_args.get("method", "ffnskip"))
    settings = setting_names(method)
    if unknown := sorted(set(model_args) - valid_args(method)):
        raise ValueError(
            f"unknown model_args for --model ffnskip: {', '.join(unknown)}. Valid: "
            f"{', '.join(settings)}, profile, compile, and HFLM's: {', '.join(sorted(hf_args()))}"
        )
    return SkipPolicy.from_args({k: v for k, v in model_args.items() if k in settings})


class FFNSkipLM(HFLM):
    """HFLM whose decoder skips FFN blocks per token (the rules: ``skip/rule.py``, ``skip/rules/``).

    model_args: every ``HFLM`` argument, plus the ``SkipPolicy`` fields (method, threshold,
    warmup, cold_start, cold_end, target_skip, refresh_every, skip_prompt, seed, horizon) and the
    method's own settings (its rule's ``Options``), and ``profile``
    (a file from ``ffnskip calibrate``, or ``auto``: calibrate once, cached). ``method=spread``
    takes its per-layer levels from the profile, or from a cached calibration when none is given;
    ``method=shortgpt`` its Block Influence from a cached measurement.
    ``pretrained`` defaults to the embedded ``smollm2-135m``; ``gemma3-270m`` is the other alias.
    """

    def __init__(self, pretrained: Any = DEFAULT_MODEL, **kwargs: Any) -> None:
        try:
            self.policy = policy_of(kwargs)
            if _cli_uses_cache():
                raise ValueError(CACHE_REFUSED)
            given = {k: kwargs.pop(k) for k in setting_names(self.policy.method) if k in kwargs}
            profile = kwargs.pop("profile", None)
            compiled = _flag("compile", kwargs.pop("compile", False))
            if compiled and (reason := refusal(self.policy)):
                raise ValueError(reason)
            device = kwargs.get("device")
            if isinstance(pretrained, str):  # before any weights load
                pretrained = preflight(
                    pretrained,
                    None if device in LM_EVAL_DEFAULT_DEVICES else device,
                    partial(_fits, self.policy, compiled, profile),
                )
        except ValueError as err:
            _refuse(err)
        _cpu_ranks(device)
        super().__init__(pretrained=pretrained, **kwargs)
        self._split_over_processes()
        self.profile: str | None = None
        if profile is not None and str(profile).lower() != "none":
            self._apply_profile(str(profile), given)
        else:
            from ..instruments.calibrate import with_calibration

            self.policy = with_calibration(self.policy, self.model, self.tokenizer)
        # attached only inside lm-eval's model calls (``_model_call``, ``_model_generate``)
        self.engine = make_engine(self.model, self.policy)
        # compile=true: generate_until decodes on the compiled path (skip/decode.py)
        self.decoder = CompiledDecoder(self.model, self.engine) if compiled else None
        self.skip_stats = SkipStats(len(self.engine.sites))  # merged over processes
        self.requests = [0] * self.world_size  # requests each process's model computed
        self.notes: list[str] = []  # what the results JSON must say about these stats

    def _split_over_processes(self) -> None:
        """Under a launcher of several CPU processes (``torchrun``), serve a share of the requests
        per process: HFLM splits work only where it sees several GPUs, so on CPUs every rank would
        otherwise evaluate every document."""
        accelerator = getattr(self, "accelerator", None)
        if accelerator is not None and accelerator.num_processes > 1 and self.world_size == 1:
            self._rank, self._world_size = accelerator.process_index, accelerator.num_processes

    def set_cache_hook(self, cache_hook: Any) -> None:
        """Refuse lm-eval's request cache (``CACHE_REFUSED``), whichever way it was switched on."""
        if getattr(cache_hook, "dbdict", None) is not None:
            raise ValueError(CACHE_REFUSED)
        super().set_cache_hook(cache_hook)

    def _apply_profile(self, profile: str, given: dict[str, Any]) -> None:
        """ffnskip: take threshold, cold layers and k from a calibration profile (``auto``:
        calibrate once for ``target_skip``, cached per model). spread: its per-layer levels."""
        from ..instruments.calibrate import PROFILE_KEYS, cached_profile, layer_calibration, read_profile

        method, needs = self.policy.method, self.policy.rule.needs
        if not needs & {"profile", "levels"}:
            raise ValueError(
                f"profile= sets the threshold, cold layers and k (ffnskip) or per-layer levels "
                f"(spread); method={method} uses none"
            )
        fixed = {"target_skip"} if profile == "auto" else set()
        if "levels" not in needs and (clash := sorted(set(given) & set(PROFILE_KEYS) - fixed)):
            raise ValueError(f"profile={profile} sets {', '.join(PROFILE_KEYS)}; drop {', '.join(clash)}")
        n_layers = len(ffn_sites(self.model)[1])
        path = (
            cached_profile(self.model, self.tokenizer, self.policy.target_skip)
            if profile == "auto"
            else profile
        )
        doc = read_profile(path, n_layers)
        if "levels" in needs:
            self.policy = dataclasses.replace(self.policy, calibration=layer_calibration(doc))
        else:
            self.policy = dataclasses.replace(self.policy, **{k: doc["policy"][k] for k in PROFILE_KEYS})
        self.profile = str(path)

    def _gather_stats(self, kind: str, n_requests: int) -> None:
        """Fold this process's counters into ``skip_stats``, summed over all processes, and
        count the requests each process computed."""
        local = self.engine.stats.drain()
        counts = torch.tensor([[n_requests, *_counts(local)]], device=self.device)
        if self.world_size > 1:
            counts = self.all_gather(counts)
        self.requests = [a + int(b) for a, b in zip(self.requests, counts[:, 0].tolist(), strict=True)]
        local = _from_counts(counts[:, 1:].sum(0).tolist(), local.n_layers)
        self.skip_stats.merge(local)
        if not self.policy.rule.reference and local.tokens and not local.eligible:
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
        """HFLM's ``generate`` call with the engine attached (on the compiled path: the compiled
        decoder, with patches of its own), checked against what the engine saw (``checked_generate``)."""
        mask = kwargs.get("attention_mask")
        prompt_mask = torch.ones_like(context) if mask is None else mask
        engine = self.engine
        if self.decoder is None:
            run = partial(super()._model_generate, context, max_length, stop, **kwargs)
            attached = installed(engine)
        else:
            run = partial(self._compiled_generate, context, mask, max_length, stop, kwargs)
            attached = contextlib.nullcontext()
        with attached:
            if context.shape[0] == 1:  # generation ends where the row's request does
                return checked_generate(engine, prompt_mask, run)
            with rows_counted(engine) as ledger:
                out = checked_generate(engine, prompt_mask, run)
                eos = self.model.generation_config.eos_token_id
                kept = kept_lengths(out[:, context.shape[1] :], stop, self.tokenizer, eos)
                engine.stats.take_back(ledger.discarded(kept))
        return out

    def _model_call(
        self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """HFLM's forward call (loglikelihood requests) with the engine attached."""
        with installed(self.engine):
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)

    def _compiled_generate(
        self, context: torch.Tensor, mask: torch.Tensor | None, max_length: int, stop: list[str], kwargs: dict
    ) -> torch.Tensor:
        """``generate_until``'s greedy call on the compiled path, with lm-eval's stopping criteria."""
        from lm_eval.models.utils_hf import stop_sequences_criteria

        if kwargs.get("do_sample"):
            raise ValueError("compile=true decodes greedily; drop do_sample from gen_kwargs")
        if reason := generation_refusal(kwargs):
            raise ValueError(reason)
        return self.decoder.generate(
            context,
            mask,
            max_new_tokens=max_length - context.shape[1],
            eos_token_id=self.model.generation_config.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            stopping_criteria=stop_sequences_criteria(
                self.tokenizer, stop, context.shape[1], context.shape[0]
            ),
        )

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
            "ffn_share": self.engine.plan.ffn_share if self.policy.rule.skips_layers else None,
            "rule": traits(self.policy.method),  # what reports read without importing the rule
            "stats": stats,
            "skipped_anything": bool(stats["skipped"]),
            "notes": self.notes,
            # how the run was split: the requests each process's model computed
            "processes": {"world_size": self.world_size, "requests": self.requests},
            "device": str(self.device),  # where it ran (lm-eval's default cuda:0 may mean the CPU)
            # generate_until on the compiled path: the seconds its compiling calls took
            "compile_s": None if self.decoder is None else self.decoder.compile_s,
            # and how its steps ran: steps decoded, batch shapes compiled, CUDA graphs on or why not
            "compiled_steps": None if self.decoder is None else self.decoder.summary(),
        }
        return info


def _fits(policy: SkipPolicy, compiled: bool, profile: object, config: Any) -> None:
    """ValueError where ``policy`` (on the compiled path where ``compiled``, with the calibration
    profile file ``profile``) cannot run a model of ``config``: its cold layers against the depth,
    what the compiled path refuses, a profile that is not one or was made for another depth."""
    LayerLayout.of(policy, config.num_hidden_layers)
    if compiled:
        check_config(config)
    if profile is not None and str(profile).lower() not in ("auto", "none"):
        from ..instruments.calibrate import read_profile

        read_profile(Path(str(profile)), config.num_hidden_layers)


def _flag(name: str, raw: object) -> bool:
    try:
        return to_bool(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a valid bool; use true or false") from None


def _cpu_ranks(device: object) -> None:
    """Under ``torchrun`` with CPU ranks, let accelerate form its process group (over gloo): it
    does only when told the ranks are CPUs, and otherwise gives each rank a world of one."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and (
        str(device).startswith("cpu") or not torch.cuda.is_available()
    ):
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")


def _from_lm_eval_cli() -> bool:
    """Whether this process is lm-eval's command line (``lm_eval``, ``python -m lm_eval``,
    ``python -m lmeval_ffnskip``, which hands over as ``lm_eval``)."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    return script.name in ("lm_eval", "lm-eval") or (
        script.name == "__main__.py" and script.parent.name == "lm_eval"
    )


def _cli_uses_cache() -> bool:
    return _from_lm_eval_cli() and any(a == "--use_cache" or a.startswith("--use_cache=") for a in sys.argv)


def _refuse(err: ValueError) -> NoReturn:
    """Bad model_args: on lm-eval's command line one line and exit 2, else the ValueError."""
    if _from_lm_eval_cli():
        print(f"lm_eval --model ffnskip: {err}", file=sys.stderr)
        raise SystemExit(2)
    raise err


def _counts(stats: SkipStats) -> list[int]:
    return [*(getattr(stats, name) for name in COUNTERS), *stats.layer_skipped]


def _from_counts(values: list[float], n_layers: int) -> SkipStats:
    v = [int(x) for x in values]
    n = len(COUNTERS)
    return SkipStats(n_layers, **dict(zip(COUNTERS, v[:n], strict=True)), layer_skipped=v[n:])
