"""Regenerate this folder's YAMLs from the installed lm-eval's ``mmlu/default`` configs.

Same task, group and tag names, descriptions and prompts as lm-eval's ``mmlu``, so they replace
the built-ins (in offline data mode, ``FFNSKIP_DATA_DIR`` set); only the data source differs
(``utils.load`` reads the CSVs via the data directory instead of downloading ``cais/mmlu``).
Run: ``python tasks/mmlu/_generate.py``.
"""

from __future__ import annotations

from pathlib import Path

import lm_eval.tasks
import yaml

SOURCE = Path(lm_eval.tasks.__file__).parent / "mmlu" / "default"
HERE = Path(__file__).parent


def main() -> None:
    template = (SOURCE / "_default_template_yaml").read_text()
    template = template.replace("dataset_path: cais/mmlu\n", "custom_dataset: !function utils.load\n")
    (HERE / "_default_template_yaml").write_text(template)
    for path in sorted(SOURCE.glob("*.yaml")):
        text = path.read_text()
        if not path.name.startswith("_"):
            subject = yaml.safe_load(text)["dataset_name"]
            text += f"dataset_kwargs:\n  subject: {subject}\n"
        (HERE / path.name).write_text(text)


if __name__ == "__main__":
    main()
