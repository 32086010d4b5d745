"""Instruments, each one measurement of a model: calibration (the similarity curve and a profile
for a target ratio; also what ``profile=`` and ``spread``'s levels read), teacher-forced fidelity,
FLOPs per token, and decode speed (also at shipped model shapes with random weights)."""
