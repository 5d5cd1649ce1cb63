"""The Central Dogma Transformer's home: `model.py` (the model), `sizes.py` (its sizes and presets, declared once),
`task.py` (the cdt task), `pairs.py` (enhancer-gene pairs, shared with the DNA-only MLP baseline in
`dna_mlp.py`), `reference.py` (the per-sample reference implementation), `authors.py` (importing the authors'
weights) and `summary.py` (`dogmacache model-summary`)."""
