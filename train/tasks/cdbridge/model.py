"""The CDBridge model on frozen caches: a protein-dictionary connector, one round of splicing-inspired token
merging (`train/merging.py`), a functional decoder (coding logits per DNA bin, stage 1) and a tissue-conditioned
decoder (expression and a protein-space vector per (transcript, tissue), stage 2).

Shapes: B DNA windows in a chunk, L bins, P examples, M dictionary tokens, Q output tokens, D model width.
"""

from __future__ import annotations

import numpy as np
import torch
from dogmacache.errors import InputError
from dogmacache.train import merging
from dogmacache.train.layers import AttentionBlock, Projection
from torch import Tensor, nn


class CdbridgeModel(nn.Module):
    """Frozen-cache CDBridge: DNA (B, L, D_dna) -> coding logits (B, L); with tissues, expression and a protein
    vector per example."""

    def __init__(
        self,
        dna_width: int,
        protein_width: int,
        tissue_width: int,
        n_bins: int,
        d_model: int,
        n_heads: int,
        ffn_hidden: int,
        dictionary_size: int,
        merge_rate_mean: float,
        merge_rate_std: float,
        functional_layers: int,
        tissue_layers: int,
        output_tokens: int,
        dropout: float,
        recovery: bool,
        tissue_input: str,
        filter_by_mask: bool = False,
    ):
        super().__init__()
        if d_model % n_heads:
            raise InputError(f"CDBridge d_model={d_model} is not divisible by n_heads={n_heads}; pick a multiple")
        self.rate_mean, self.rate_std = merge_rate_mean, merge_rate_std
        self.recovery, self.tissue_input, self.filter_by_mask = recovery, tissue_input, filter_by_mask
        self.stage1_frozen = False  # set by freeze_stage1: stage 2 keeps the stage-1 modules in eval mode
        self.dna = Projection(dna_width, d_model, dropout)
        self.position = nn.Parameter(torch.zeros(1, n_bins, d_model))
        self.dictionary = nn.Parameter(torch.randn(dictionary_size, protein_width) * 0.02)  # k-means in build_model
        self.protein = nn.Linear(protein_width, d_model)
        self.connector = AttentionBlock(d_model, n_heads, ffn_hidden, dropout)
        self.functional = nn.ModuleList(
            AttentionBlock(d_model, n_heads, ffn_hidden, dropout) for _ in range(functional_layers)
        )
        self.coding_head = nn.Linear(d_model, 1)
        self.tissue = nn.Linear(tissue_width, d_model)
        self.queries = nn.Parameter(torch.randn(output_tokens, d_model) * 0.02)
        self.conditioned = nn.ModuleList(
            AttentionBlock(d_model, n_heads, ffn_hidden, dropout) for _ in range(tissue_layers)
        )
        self.expression_head = nn.Linear(d_model, 1)
        self.protein_head = nn.Linear(d_model, protein_width)

    def stage1_modules(self) -> list[nn.Module]:
        return [self.dna, self.protein, self.connector, self.functional, self.coding_head]

    def stage1_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """The entries of a state dict that stage 1 trains: the DNA projection and position, the dictionary, the
        connector, the functional decoder and the coding head."""
        prefixes = ("dna.", "position", "dictionary", "protein.", "connector.", "functional.", "coding_head.")
        return {k: v for k, v in state.items() if k.startswith(prefixes)}

    def load_stage1(self, state: dict[str, Tensor]) -> None:
        """Take stage 1's weights from a stage-1 checkpoint's state dict (its tissue decoder, never trained there,
        is left as built)."""
        missing = set(self.stage1_state(self.state_dict())) - set(state)
        if missing:
            raise InputError(
                f"the stage-1 checkpoint lacks {sorted(missing)[:3]} ({len(missing)} missing); "
                "point [data] stage1_checkpoint at a cdbridge stage-1 <name>_best.pt"
            )
        self.load_state_dict({**self.state_dict(), **self.stage1_state(state)})

    def freeze_stage1(self) -> None:
        """Stage 2 on stage 1's fused features: no gradients, and no dropout in the frozen modules (they stay in
        eval mode when the loop calls `train()`), so a window's fused tokens are the same at every step."""
        for module in self.stage1_modules():
            module.requires_grad_(False)
        self.dictionary.requires_grad_(False)
        self.position.requires_grad_(False)
        self.stage1_frozen = True
        self.train(self.training)

    def train(self, mode: bool = True) -> CdbridgeModel:
        super().train(mode)
        if self.stage1_frozen:
            for module in self.stage1_modules():
                module.eval()
        return self

    def fuse(self, dna: Tensor) -> Tensor:
        """(B, L, D_dna) -> (B, L, D): DNA tokens after attending to the protein dictionary."""
        x = self.dna(dna) + self.position
        dictionary = self.protein(self.dictionary)[None].expand(x.shape[0], -1, -1)  # (B, M, D)
        return self.connector(x, dictionary)

    def plan(self, fused: Tensor, generator: torch.Generator | None) -> merging.MergePlan:
        """Training draws the rate and the A/B split from `generator`; evaluation (None) uses the fixed ones."""
        rate = merging.sample_rate(self.rate_mean, self.rate_std, fused.shape[0], generator)
        return merging.merge_plan(fused, rate.to(fused.device), generator=generator)

    def coding_logits(self, fused: Tensor, plan: merging.MergePlan) -> Tensor:
        """(B, L, D) -> (B, L) coding logits, after merge-and-recover (or on the merged tokens without recovery)."""
        merged = plan.merge(fused)
        x = plan.unmerge(merged) if self.recovery else merged
        for block in self.functional:
            # recovered tokens are all real: the unmasked path, whose CPU kernel never holds the (B, H, L, L)
            # probabilities (896 bins, batch 64: 1.6 GB per layer); merged tokens mask their padding slots
            x = block(x, x) if self.recovery else block.forward_masked(x, x, plan.valid)
        logits = self.coding_head(x)[..., 0]
        return logits if self.recovery else plan.unmerge(logits)

    def expression(self, merged: Tensor, valid: Tensor, tissue: Tensor) -> tuple[Tensor, Tensor]:
        """merged (P, N', D), valid (P, N'), tissue (P, D_tissue) -> expression (P,), protein vector (P, D_prot)."""
        conditioning = self.tissue(tissue) if self.tissue_input != "none" else torch.zeros_like(self.tissue(tissue))
        q = self.queries[None] + conditioning[:, None]  # (P, Q, D)
        for block in self.conditioned:
            # tissue embedding only (the paper's ablation; one prediction per tissue, so it cannot detect a leak:
            # the controls in train/controls.py can): no DNA token reaches the output
            q = (
                block.forward_without_attention(q)
                if self.tissue_input == "only"
                else block.forward_masked(q, merged, valid)
            )
        pooled = q.mean(dim=1)
        return self.expression_head(pooled)[:, 0], self.protein_head(pooled)

    def forward(
        self, dna: Tensor, dna_index: Tensor, tissue: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """dna (B, L, D_dna) windows, dna_index (P,) each example's window, tissue (P, D_tissue)."""
        fused = self.fuse(dna)
        plan = self.plan(fused, generator)
        merged = plan.merge(fused)
        keys = self.coding_slots(fused, plan) if self.filter_by_mask else plan.valid
        return self.expression(merged[dna_index], keys[dna_index], tissue)

    def coding_slots(self, fused: Tensor, plan: merging.MergePlan) -> Tensor:
        """(B, N') merged slots the functional decoder calls coding (mean probability >= 0.5 over the bins a slot
        holds); a window without one keeps every slot (no coding region in view: nothing to filter by)."""
        modules = [*self.functional, self.coding_head]
        training = [m.training for m in modules]
        with torch.no_grad():
            for m in modules:  # the filter as evaluation would draw it: no dropout deciding which slots count
                m.eval()
            try:
                probability = torch.sigmoid(self.coding_logits(fused, plan))
            finally:
                for m, mode in zip(modules, training, strict=True):
                    m.train(mode)
        coding = plan.valid & (plan.merge(probability[..., None])[..., 0] >= 0.5)
        return torch.where(coding.any(dim=1, keepdim=True), coding, plan.valid)


def step_generator(device: torch.device) -> torch.Generator:
    """A generator for one step's merge rate and A/B split, seeded from torch's RNG (seeded and resumed by the loop)."""
    return torch.Generator(device=device).manual_seed(int(torch.randint(2**62, ())))


def kmeans_dictionary(protein: np.ndarray, size: int, seed: int) -> np.ndarray:
    """(size, D_prot) k-means centroids of the training proteins' embeddings (scikit-learn, seeded)."""
    from sklearn.cluster import KMeans

    if size > len(protein):
        raise InputError(
            f"[model] dictionary_size = {size} exceeds the {len(protein)} distinct training proteins; "
            f"set it to at most {len(protein)}"
        )
    return KMeans(n_clusters=size, random_state=seed, n_init=4).fit(protein).cluster_centers_.astype(np.float32)
