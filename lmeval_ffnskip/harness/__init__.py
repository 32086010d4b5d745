"""The lm-eval integration: ``--model ffnskip`` (``lm.py``), the embedded checkpoints, and the
calibration that gives a policy its per-model settings (``profile=``, ``spread``'s levels)."""
