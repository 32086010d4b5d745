"""The lm-eval face: ``--model ffnskip`` (``lm.py``) and where each row of a batched generation
ends for its own request (``stops.py``)."""
