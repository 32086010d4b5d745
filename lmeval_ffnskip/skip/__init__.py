"""The skip mechanism: which token skips which FFN block (``policy.py``, ``spread.py``,
``layerskip.py``), the engine that makes a stock HF decoder skip them (``engine.py``, ``adapters.py``,
``hooks.py``), what it counted (``stats.py``), and the one place that reads transformers' calling
conventions (``hf_compat.py``). Imports nothing from the rest of the package, nor lm-eval."""

METHODS: tuple[str, ...] = ("ffnskip", "spread", "dense", "random", "static", "shortgpt", "skipdecode")
LAYER_METHODS: tuple[str, ...] = ("shortgpt", "skipdecode")  # whole layers skipped (layerskip.py)
