"""What a user names, resolved and checked before any weights load: checkpoints by alias, HF id
or folder (``checkpoints.py``: the embedded models, loading, the config checks of ``preflight``)
and option values (``options.py``: the types and ranges every instrument option and sweep value
is checked against)."""
