"""Each instrument option is defined once, in its options dataclass: the CLI's flags, help and
defaults come from there, and the skip settings' defaults from ``SkipPolicy`` alone."""

from __future__ import annotations

import argparse
import dataclasses
import re

import pytest

from lmeval_ffnskip.cli import main
from lmeval_ffnskip.cli.flags import add_options, options_from
from lmeval_ffnskip.inputs.checkpoints import DEFAULT_MODEL
from lmeval_ffnskip.instruments.options import BenchOptions, CalibrateOptions, FidelityOptions, FlopsOptions
from lmeval_ffnskip.skip.settings import SkipPolicy

COMMANDS = {
    "bench": BenchOptions,
    "flops": FlopsOptions,
    "fidelity": FidelityOptions,
    "calibrate": CalibrateOptions,
}


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_every_option_with_its_dataclass_default(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split("options:", 1)[1].split())  # the flags, not the usage
    for f in dataclasses.fields(COMMANDS[command]):
        name = f.name.replace("_", "-")
        entry = re.search(rf"--(?:no-)?{name}\b(.*?)(?= --[a-z]|$)", text)
        assert entry, f"--{name} missing from `ffnskip {command} --help`"
        if f.default not in (None, (), False, True):
            shown = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else str(f.default)
            assert f"(default {shown})" in entry.group(1), (command, f.name)


@pytest.mark.parametrize("kind", COMMANDS.values())
def test_no_flags_parse_to_the_dataclass_defaults(kind):
    parser = argparse.ArgumentParser()
    add_options(parser, kind)
    assert options_from(parser.parse_args([]), kind) == kind()


def test_flags_parse_to_the_options_they_name():
    parser = argparse.ArgumentParser()
    add_options(parser, BenchOptions)
    flags = [
        "--batch-sizes",
        "2,4",
        "--methods",
        "static,random",
        "--no-overheads",
        "--compile",
        "--reps",
        "5",
    ]
    options = options_from(parser.parse_args(flags), BenchOptions)
    assert (options.batch_sizes, options.methods, options.reps) == ((2, 4), ("static", "random"), 5)
    assert (options.overheads, options.compile) == (False, True)


def test_shared_defaults_are_the_policys_and_the_default_models():
    for kind in COMMANDS.values():
        assert kind().pretrained == DEFAULT_MODEL
    for kind in (BenchOptions, FlopsOptions, FidelityOptions):
        assert kind().threshold == SkipPolicy().threshold
