"""The train stage: fit small bridges (CDT, IsoFormer, CDBridge, Bio-DTA) from caches alone, one task per
model on one shared loop (`tasks/`, `loop.py`)."""


def load_model(path):
    """Rebuild a trained model from its checkpoint alone (any task); see `checkpoint.load_model`."""
    from dogmacache.train.checkpoint import load_model as _load

    return _load(path)


__all__ = ["load_model"]
