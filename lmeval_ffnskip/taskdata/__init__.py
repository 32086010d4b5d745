"""Task support: benchmark data (local copy or verified download, and where things are cached),
metrics (ROUGE, repeated n-grams), conversation requests and the MT-Bench / Vicuna-80 judge."""
