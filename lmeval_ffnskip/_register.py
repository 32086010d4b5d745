"""Make ``--model ffnskip`` known to the plain lm-eval CLI (run from the installed .pth file).

lm-eval 0.4.13 reads no entry points for models, and ``get_model`` only imports its own
models while the registry is empty, so the built-ins are imported before our lazy name is
added. Import errors are swallowed: a broken lm-eval must not break every Python start.
"""

from __future__ import annotations

NAME, TARGET = "ffnskip", "lmeval_ffnskip.lm:FFNSkipLM"


def register() -> None:
    """Register the lazy ``ffnskip`` model name (idempotent)."""
    try:
        import lm_eval.models  # noqa: F401  (fills the registry with the built-ins first)
        from lm_eval.api.registry import model_registry
    except Exception:
        return
    if NAME not in model_registry:
        model_registry.register(NAME, target=TARGET)


register()
