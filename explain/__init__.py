"""The analysis stage: what a trained model looks at (attention) and what drives its predictions (gradients),
compared, mapped to the genome and drawn. It may import embed and train; nothing imports it."""

from dogmacache.lazy import lazy_names

__all__, __getattr__ = lazy_names(
    globals(),
    {
        "cdt": ("CdtExplainer", "ExplainSources"),
        "run": ("EXPLAINERS", "ExplainConfig", "run_explain"),
    },
)
