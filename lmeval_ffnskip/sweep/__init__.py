"""``ffnskip sweep CONFIG``, an orchestrator on the floor above the lm-eval face and the
instruments: lm-eval tasks x methods x skip ratios into one results directory.

Layout: ``OUT/<model>/<cell>/results.json`` (lm-eval's results format, ``config["ffnskip"]``
holding the policy and stats, plus ``agreement`` with the model's dense cell) and
``samples_<task>_sweep.jsonl`` beside it; ``OUT/<model>/flops.json`` / ``bench.json`` /
``calibrate.json`` / ``fidelity.json`` when asked.
A cell is written to a ``.partial`` folder and renamed when complete, so an interrupted sweep
loses nothing finished and a rerun computes only the missing cells.

Resuming: a cell records everything that determines it (``sweep_cell.settings``: the model, the
tasks, limit, batch size, device, gen_kwargs, every model_arg, the include_path folders, and the
package versions and source commit of ``provenance.versions()``), and so does each per-model JSON
(``sweep``: the model, the device, the instrument's options, the versions). A rerun into the same
folder reuses one only when all of it matches; otherwise it runs it again (the old one stays until
the new one is complete) and logs one line naming the keys that differ. The commit is compared as
recorded, so results of another commit are made again. A checkout with uncommitted edits records
``<commit>+modified`` whatever the edits, so such results are reused after further edits; the
sweep says so in one line when it reuses any (a fresh ``--out`` after changing the code avoids it).
A skip cell's agreement is measured against one run of the dense cell (``sweep_cell.run``), and
measured again when the dense cell has run again since.
"""
