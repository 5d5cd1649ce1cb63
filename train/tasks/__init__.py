"""One home per model: `cdt/` (the Central Dogma Transformer, its sizes and presets, the authors' importer, the
enhancer-gene pairs and the DNA-only MLP baseline), `cdbridge/`, `isoformer.py`, `biodta.py`. The registry that
names them is `train/registry.py`; the interface they implement is `train/task.py`."""
