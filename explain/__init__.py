"""The analysis stage: what a trained model looks at (attention) and what drives its predictions (gradients),
compared, mapped to the genome and drawn. It may import embed and train; nothing imports it."""

from dogmacache.explain.cdt import CdtExplainer, ExplainSources
from dogmacache.explain.run import EXPLAINERS, ExplainConfig, run_explain

__all__ = ["EXPLAINERS", "CdtExplainer", "ExplainConfig", "ExplainSources", "run_explain"]
