"""`--model ffnskip` through lm-eval: model_args, results, stats, CLI registration, processes."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import DATA_DIR

from lmeval_ffnskip.harness.lm import FFNSkipLM
from lmeval_ffnskip.inputs.checkpoints import resolve
from lmeval_ffnskip.taskdata.conversation import decode_answers

MC_DOCS = [
    {"question": "The capital of France is", "choices": [" Paris", " Berlin", " Rome"], "label": 0},
    {"question": "Two plus two equals", "choices": [" three", " four", " five"], "label": 1},
    {"question": "The opposite of hot is", "choices": [" cold", " warm", " loud"], "label": 0},
    {"question": "Water freezes at zero degrees", "choices": [" Celsius", " Kelvin", " Newton"], "label": 0},
]


@pytest.fixture(scope="module")
def task_manager(tmp_path_factory):
    """One (slow to build) task index: the built-ins, our tasks, and a tiny local MC task."""
    from lm_eval.tasks import TaskManager

    root = tmp_path_factory.mktemp("tasks")
    (root / "mc.jsonl").write_text("\n".join(json.dumps(d) for d in MC_DOCS))
    (root / "tiny_mc.yaml").write_text(
        "task: tiny_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {root / 'mc.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\nmetric_list:\n  - metric: acc\n"
    )
    os.environ["FFNSKIP_DATA_DIR"] = DATA_DIR
    return TaskManager(include_path=str(root))


def _evaluate(model: str, model_args: str, tasks: list[str], task_manager, limit: int = 4, **kw) -> dict:
    from lm_eval import simple_evaluate

    return simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=tasks,
        limit=limit,
        device="cpu",
        task_manager=task_manager,
        log_samples=True,
        **{"batch_size": 2, **kw},
    )


def test_unknown_model_arg_lists_the_valid_ones():
    with pytest.raises(
        ValueError, match=r"unknown model_args for --model ffnskip: thresold\. Valid: method, threshold"
    ):
        FFNSkipLM(thresold=0.9)


def test_bad_policy_value_fails_before_loading():
    with pytest.raises(ValueError, match=r"target_skip=2\.0 is out of range"):
        FFNSkipLM(target_skip=2.0)


def test_dense_matches_hf(task_manager):
    path = resolve("smollm2-135m")
    tasks = ["tiny_mc", "freebaseqa"]
    hf = _evaluate("hf", f"pretrained={path}", tasks, task_manager)
    ours = _evaluate("ffnskip", "method=dense", tasks, task_manager)
    for task in tasks:
        assert ours["results"][task] == hf["results"][task]
        assert [s["resps"] for s in ours["samples"][task]] == [s["resps"] for s in hf["samples"][task]]
    stats = ours["config"]["ffnskip"]["stats"]
    assert stats["skipped"] == 0 and stats["tokens"] > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pretrained": "/nonexistent/dir"}, "pretrained='/nonexistent/dir': no such directory"),
        ({"device": "cuda"}, "device='cuda' cannot be used here"),
        ({"pretrained": "CONFIG_ONLY"}, "gpt2"),
        # the depth and the attention layers are in config.json: refused before the weights load
        (
            {"pretrained": "CONFIG_ONLY", "cold_start": "20", "cold_end": "20"},
            "cold_start=20 + cold_end=20 exceeds the model's 30 layers",
        ),
        ({"pretrained": "CONFIG_ONLY", "compile": "true"}, "does not take sliding-window attention"),
        ({"pretrained": "CONFIG_ONLY", "profile": "BAD_JSON"}, "not valid JSON"),
        ({"method": "shortgpt", "compile": "true"}, "method=shortgpt has no device form"),
        ({"compile": "true", "skip_prompt": "true"}, "does not take skip_prompt=true"),
    ],
)
def test_bad_model_or_device_fails_before_loading(kwargs, message, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_weights)
    if kwargs.get("pretrained") == "CONFIG_ONLY":
        config = {"model_type": "gpt2"}
        if "cold_start" in kwargs:
            config = {"model_type": "llama", "num_hidden_layers": 30}
        if "compile" in kwargs:
            config = {"model_type": "gemma3_text", "num_hidden_layers": 6, "sliding_window": 16}
        if kwargs.get("profile") == "BAD_JSON":
            config = {"model_type": "llama", "num_hidden_layers": 30}
            (tmp_path / "profile.json").write_text("{not json")
            kwargs = {**kwargs, "profile": str(tmp_path / "profile.json")}
        (tmp_path / "config.json").write_text(json.dumps(config))
        kwargs = {**kwargs, "pretrained": str(tmp_path)}
    with pytest.raises(ValueError, match=re.escape(message)):
        FFNSkipLM(**kwargs)


def test_cli_refuses_bad_model_args_in_one_line(tmp_path):
    """On lm-eval's command line a refused model_arg is one line and exit 2, not a traceback."""
    cmd = ["lm_eval", "--model", "ffnskip", "--model_args", "pretrained=/nonexistent/dir", "--tasks",
           "freebaseqa", "--use_cache", str(tmp_path / "cache")]  # fmt: skip
    done = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "FFNSKIP_DATA_DIR": DATA_DIR}
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip().splitlines()[-1].startswith("lm_eval --model ffnskip: --use_cache cannot be used")
    )
    assert "Traceback" not in done.stderr


def test_request_cache_is_refused(task_manager, tmp_path):
    """lm-eval's cache keys requests, not model_args: a skip run would get a dense run's answers."""
    with pytest.raises(ValueError, match="--use_cache cannot be used with --model ffnskip"):
        _evaluate(
            "ffnskip", "method=dense", ["freebaseqa"], task_manager, limit=1, use_cache=str(tmp_path / "c")
        )


def test_batched_stats_count_the_tokens_each_request_keeps(task_manager):
    """Rows that met their stop sequence go on decoding until the longest row ends; the stats
    count only the tokens each request keeps, as generating it alone would."""
    args = "target_skip=0.25,warmup=2"
    alone = _evaluate("ffnskip", args, ["freebaseqa"], task_manager, batch_size=1)
    batched = _evaluate("ffnskip", args, ["freebaseqa"], task_manager, batch_size=4)
    answers = [[s["resps"] for s in out["samples"]["freebaseqa"]] for out in (alone, batched)]
    assert answers[0] == answers[1]
    one, four = (out["config"]["ffnskip"]["stats"] for out in (alone, batched))
    for key in ("tokens", "eligible", "skipped", "never_fired", "layer_skipped", "skip_ratio_eligible"):
        assert four[key] == one[key], key
    assert four["decoded_tokens"] > four["tokens"]  # the batch did decode past some rows' stops
    assert one["decoded_tokens"] == one["tokens"]


def test_compiled_path_gives_the_eager_answers_and_counts(task_manager):
    """compile=true: generate_until on the compiled decoding path, in a left-padded batch, with
    the eager path's answers and counters, and how its steps were decoded in the results."""
    args = "target_skip=0.25,warmup=2"
    eager = _evaluate("ffnskip", args, ["freebaseqa"], task_manager, limit=2)
    compiled = _evaluate("ffnskip", f"{args},compile=true", ["freebaseqa"], task_manager, limit=2)
    answers = [[s["resps"] for s in out["samples"]["freebaseqa"]] for out in (eager, compiled)]
    assert answers[0] == answers[1]
    one, other = (out["config"]["ffnskip"] for out in (eager, compiled))
    for key in ("tokens", "eligible", "skipped", "never_fired", "layer_skipped", "decoded_tokens"):
        assert one["stats"][key] == other["stats"][key], key
    assert other["stats"]["skipped"] > 0
    assert one["compile_s"] is None and other["compile_s"] > 0
    steps = other["compiled_steps"]
    assert one["compiled_steps"] is None and steps["steps"] > 0
    # the decisions are read once per generate call (here one batch), not per token
    assert other["stats"]["host_syncs"] == 1 < other["stats"]["passes"]


def test_loglikelihood_skips_only_with_skip_prompt(task_manager, caplog):
    with caplog.at_level(logging.WARNING):
        plain = _evaluate("ffnskip", "target_skip=0.25,threshold=0.9", ["tiny_mc"], task_manager)
    assert "no token was eligible for skipping in 12 loglikelihood requests" in caplog.text
    assert plain["config"]["ffnskip"]["skipped_anything"] is False
    skipped = _evaluate("ffnskip", "target_skip=0.25,skip_prompt=true,warmup=2", ["tiny_mc"], task_manager)
    stats = skipped["config"]["ffnskip"]["stats"]
    assert skipped["config"]["ffnskip"]["skipped_anything"] is True
    assert 0.2 < stats["skip_ratio_eligible"] <= 8 / 30
    assert stats["layer_skip_frequency"][:4] == [0.0] * 4  # cold layers always run


def test_the_engine_is_on_the_model_only_inside_lm_evals_model_calls(task_manager, monkeypatch):
    """As lm-eval's hf_steered: the skip hooks exist during ``_model_call`` / ``_model_generate``
    and are gone before and after them (the results still count what was skipped)."""
    from lm_eval.models.huggingface import HFLM

    from lmeval_ffnskip.skip.hooks import attached_engine

    seen: list[tuple[str, bool]] = []
    lms: list[FFNSkipLM] = []

    def spying(name: str):
        real = getattr(HFLM, name)

        def spy(self, *args, **kwargs):
            seen.append((name, attached_engine(self.model) is self.engine))
            lms.append(self)
            return real(self, *args, **kwargs)

        return spy

    for name in ("_model_call", "_model_generate"):
        monkeypatch.setattr(HFLM, name, spying(name))
    real_init = FFNSkipLM.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        seen.append(("constructed", attached_engine(self.model) is not None))

    monkeypatch.setattr(FFNSkipLM, "__init__", init)
    args = "target_skip=0.25,warmup=0,skip_prompt=true"
    out = _evaluate("ffnskip", args, ["tiny_mc", "freebaseqa"], task_manager, limit=1)
    assert ("constructed", False) in seen
    assert {name for name, _ in seen} == {"constructed", "_model_call", "_model_generate"}
    assert all(on for name, on in seen if name != "constructed")
    assert attached_engine(lms[-1].model) is None
    assert out["config"]["ffnskip"]["stats"]["skipped"] > 0


def test_generation_records_stats(task_manager):
    out = _evaluate("ffnskip", "target_skip=0.25,warmup=4", ["freebaseqa"], task_manager, limit=2)
    info = out["config"]["ffnskip"]
    assert info["policy"]["target_skip"] == 0.25 and info["layout"]["k"] == 8
    assert (
        info["stats"]["eligible"] > 0
        and 0 < info["stats"]["skip_ratio_all"] < info["stats"]["skip_ratio_eligible"]
    )
    assert set(out["results"]["freebaseqa"]) >= {"exact_match,none", "contains,none"}


def test_layer_skip_baselines_run_through_lm_eval(task_manager, caplog):
    """shortgpt prunes 6 of SmolLM2's 30 layers (FFN share of a layer 0.75: 0.25 * 30 * 0.75),
    prompts included; skipdecode skips by decoding step only."""
    pruned = _evaluate("ffnskip", "method=shortgpt,target_skip=0.25", ["tiny_mc"], task_manager)
    info = pruned["config"]["ffnskip"]
    assert info["layout"]["k"] == 6 and info["stats"]["skip_ratio_all"] == pytest.approx(0.2)
    assert info["ffn_share"] == pytest.approx(0.75, abs=0.01)  # the report plots 6 layers at 8 FFNs
    assert sorted(set(info["stats"]["layer_skip_frequency"])) == [0.0, 1.0]
    with caplog.at_level(logging.WARNING):
        scored = _evaluate("ffnskip", "method=skipdecode,target_skip=0.25", ["tiny_mc"], task_manager)
    hint = "loglikelihood scores prompt positions, which run the full model unless skip_prompt=true"
    assert hint in caplog.text and hint in scored["config"]["ffnskip"]["notes"][0]
    hf = _evaluate("hf", f"pretrained={resolve('smollm2-135m')}", ["tiny_mc"], task_manager)
    assert scored["results"]["tiny_mc"] == hf["results"]["tiny_mc"]  # no decoding step: dense
    args = "method=skipdecode,target_skip=0.25,warmup=0,horizon=4"
    stats = _evaluate("ffnskip", args, ["freebaseqa"], task_manager, limit=2)["config"]["ffnskip"]["stats"]
    assert stats["skipped"] > 0 and stats["layer_skip_frequency"][:4] == [0.0] * 4  # cold_start runs


def test_offline_tasks_replace_the_downloading_builtins(task_manager):
    """Our mmlu / wikitext carry the built-ins' names and prompts but read the data directory."""
    names = set(task_manager.all_tasks)
    assert {
        "mmlu",
        "mmlu_anatomy",
        "wikitext",
        "cnn_dailymail_ctx",
        "cnn_dailymail_paper",
        "mt_bench",
        "vicuna80",
    } <= names
    loaded = task_manager.load(["mmlu_anatomy", "wikitext"])["tasks"]
    anatomy = loaded["mmlu_anatomy"]
    assert callable(anatomy.config.custom_dataset) and len(anatomy.eval_docs) == 135
    doc = anatomy.eval_docs[0]
    assert anatomy.doc_to_text(doc).endswith("\nD. " + doc["choices"][3] + "\nAnswer:")
    assert len(loaded["wikitext"].eval_docs) == 62


def test_offline_tasks_run_with_skipping(task_manager):
    tasks = ["wikitext", "mmlu_anatomy", "cnn_dailymail_small"]
    out = _evaluate("ffnskip", "target_skip=0.25,skip_prompt=true,warmup=8", tasks, task_manager, limit=1)
    results = out["results"]
    assert 1 < results["wikitext"]["word_perplexity,none"] < 1e4
    assert results["mmlu_anatomy"]["acc,none"] in (0.0, 1.0)
    cnn = results["cnn_dailymail_small"]
    assert 0 <= cnn["rougeL,none"] <= 100 and 0 <= cnn["repeated_4gram_rate,none"] <= 1
    summary = out["samples"]["cnn_dailymail_small"][0]["resps"][0][0]
    assert summary.strip() and "Story:" not in summary
    stats = out["config"]["ffnskip"]["stats"]
    assert stats["skipped"] > 0 and 0.2 < stats["skip_ratio_eligible"] <= 8 / 30


def test_mt_bench_second_turn_is_answered_after_the_models_first(task_manager, smollm2):
    """The second answer equals HF greedy decoding of the chat holding the model's first answer."""
    out = _evaluate(
        "ffnskip", "method=dense", ["mt_bench"], task_manager, limit=2, gen_kwargs="max_gen_toks=12"
    )
    model, tok = smollm2
    for sample in out["samples"]["mt_bench"]:
        first, second = decode_answers(sample["resps"][0][0])
        turns = sample["doc"]["turns"]
        chat = [{"role": "user", "content": turns[0]}, {"role": "assistant", "content": first}]
        prompt = tok.apply_chat_template([*chat, {"role": "user", "content": turns[1]}], tokenize=False,
                                         add_generation_prompt=True)  # fmt: skip
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        greedy = model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1] :]
        assert second == tok.decode(greedy, skip_special_tokens=True).strip()
    assert 0 <= out["results"]["mt_bench"]["repeated_4gram_rate,none"] <= 1


def _results(out: Path) -> dict:
    files = list(out.rglob("results_*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


CLI_ARGS = [
    "--model",
    "ffnskip",
    "--model_args",
    "target_skip=0.25,warmup=2",
    "--tasks",
    "freebaseqa",
    "--device",
    "cpu",
    "--limit",
]


def _run(cmd: list[str], out: Path, limit: int, **env: str) -> dict:
    env = {**os.environ, "FFNSKIP_DATA_DIR": DATA_DIR, **env}
    subprocess.run([*cmd, *CLI_ARGS, str(limit), "--output_path", str(out)], check=True, env=env, cwd=out)
    return _results(out)


@pytest.fixture(scope="module")
def plain_cli_run(tmp_path_factory) -> dict:
    """`lm_eval --model ffnskip --tasks freebaseqa`: no --include_path, no wrapper."""
    return _run(["lm_eval"], tmp_path_factory.mktemp("cli"), 4)


def test_plain_cli_finds_model_and_task(plain_cli_run):
    assert plain_cli_run["config"]["ffnskip"]["stats"]["skipped"] > 0
    assert plain_cli_run["n-samples"]["freebaseqa"]["effective"] == 4


@pytest.mark.slow
def test_two_processes_split_the_requests_and_merge_results_and_stats(plain_cli_run, tmp_path):
    """`torchrun --nproc_per_node 2 -m lmeval_ffnskip` on CPUs: two ranks each compute half of the
    requests; the merged scores and counters equal one process's."""
    cmd = ["torchrun", "--nproc_per_node", "2", "-m", "lmeval_ffnskip"]
    results = _run(cmd, tmp_path, 4, OMP_NUM_THREADS="1")
    assert results["config"]["ffnskip"]["processes"] == {"world_size": 2, "requests": [2, 2]}
    assert plain_cli_run["config"]["ffnskip"]["processes"] == {"world_size": 1, "requests": [4]}
    assert results["n-samples"]["freebaseqa"]["effective"] == 4
    assert results["results"]["freebaseqa"] == plain_cli_run["results"]["freebaseqa"]
    merged, single = results["config"]["ffnskip"]["stats"], plain_cli_run["config"]["ffnskip"]["stats"]
    for key in ("tokens", "eligible", "skipped", "passes", "skipped_by_all", "layer_skipped"):
        assert merged[key] == single[key]  # both processes' counters, summed
