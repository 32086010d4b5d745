"""Instruments: teacher-forced fidelity, FLOPs per token, decode speed (also at shipped model
shapes with random weights) and sweeps that run them all into one results directory."""
