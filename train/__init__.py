"""The train stage: fit small bridges (CDT, IsoFormer, CDBridge, Bio-DTA) from caches alone, one task per
model (`tasks/`, registered in `registry.py`) on one shared loop (`loop.py`, `run.py`)."""


def load_model(path):
    """Rebuild a trained model from its checkpoint alone (any task); see `registry.load_model`."""
    from dogmacache.train.registry import load_model as _load

    return _load(path)


__all__ = ["load_model"]
