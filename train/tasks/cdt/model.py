"""The Central Dogma Transformer (CDT, Ota; exact sizes in docs/papers.md#cdt-architecture), batched and fast.

Owns the model: per-modality projections, DNA/RNA/protein self-attention, DNA->RNA and RNA->protein
cross-attention, the Virtual Cell Embedder (VCE) and the task head. Shapes (letters from `cdt_config`):

    dna        (B, L, D_dna)   one enhancer window per sample
    rna        (G, D_rna)      gene table, the same for every sample
    protein    (G, D_prot)     protein table aligned to the genes, the same for every sample
    gene_index (B,)            target gene of each sample, in [0, G)
    output     (B,)            head output at the target gene (`predict_all_genes` gives (B, G))

Same function as the per-sample `cdt_reference.CDTReference` (same parameter names, so the state dicts load
into each other), computed faster:
- the RNA and protein branches up to their self-attention do not depend on the sample: they run once per
  batch as (1, G, D) and broadcast into the cross-attention (training: one dropout mask per batch for them);
- attention runs through `scaled_dot_product_attention`, or, when training on CPU with dropout, through
  `kernels.attention` (blocked, no (B, H, Nq, Nk) maps kept, blocks side by side on single-threaded workers);
  dropout masks on CPU come from `kernels.dropout` (same distribution, ~4x faster); per-head maps only via
  `forward_with_attention`;
- the VCE pools with a single query, so its key and value projections are folded into that query instead
  of projecting every position (exact algebra, see `QueryPool`).

To change a size, edit `CDTConfig` or a preset; to add a modality, add a projection, its blocks and a
`QueryPool`, and widen `VirtualCellEmbedder.expand`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from dogmacache.errors import InputError
from dogmacache.train.kernels import Dropout
from dogmacache.train.layers import AttentionBlock, MultiHeadAttention, Projection, QueryPool
from dogmacache.train.tasks.cdt.sizes import CDTConfig
from torch import Tensor, nn

__all__ = [
    "AttentionBlock",
    "CDTConfig",
    "CentralDogmaTransformer",
    "MultiHeadAttention",
    "QueryPool",
    "check_cdt_inputs",
]


def check_cdt_inputs(
    config: CDTConfig, dna: Tensor, rna: Tensor, protein: Tensor, gene_index: Tensor | None = None
) -> None:
    """Raise InputError naming the bad input, the size the model was built for and the fix."""
    rebuild = "build the model from the manifests of the caches you are feeding it, or feed the caches it was built for"
    if dna.ndim != 3:
        raise InputError(
            f"dna has shape {tuple(dna.shape)} but the model takes (B, L, D_dna) = "
            f"(batch, {config.dna_positions}, {config.dna_width}); pass one DNA window per sample"
        )
    if not dna.is_floating_point():
        raise InputError(f"dna has dtype {dna.dtype} but the model takes floating-point embeddings; cast with .float()")
    sizes = (
        ("dna", "width", dna.shape[2], config.dna_width),
        ("dna", "positions", dna.shape[1], config.dna_positions),
    )
    for name, table, width in (("rna", rna, config.rna_width), ("protein", protein, config.protein_width)):
        if table.ndim != 2:
            raise InputError(
                f"{name} has shape {tuple(table.shape)} but the model takes one (G, D) = "
                f"({config.n_genes}, {width}) table shared by every sample; pass it without a batch axis"
            )
        if not table.is_floating_point():
            raise InputError(f"{name} has dtype {table.dtype} but the model takes floating-point embeddings")
        sizes += ((name, "genes", table.shape[0], config.n_genes), (name, "width", table.shape[1], width))
    for name, what, got, built in sizes:
        if got != built:
            raise InputError(
                f"{name} has {what} {got} but the model was built for {built} (from the cache manifest); {rebuild}"
            )
    if gene_index is None:
        return
    if gene_index.ndim != 1 or gene_index.shape[0] != dna.shape[0]:
        raise InputError(
            f"gene_index has shape {tuple(gene_index.shape)} but dna holds {dna.shape[0]} samples; "
            "pass one target gene index per sample, shape (B,)"
        )
    if gene_index.dtype not in (torch.int64, torch.int32):
        raise InputError(f"gene_index has dtype {gene_index.dtype} but indexes must be integers; cast with .long()")
    if gene_index.numel() and not (0 <= int(gene_index.min()) and int(gene_index.max()) < config.n_genes):
        raise InputError(
            f"gene_index holds values in [{int(gene_index.min())}, {int(gene_index.max())}] but the model "
            f"has {config.n_genes} genes (0..{config.n_genes - 1}); map targets to the aligned gene order"
        )


class VirtualCellEmbedder(nn.Module):
    """Pool DNA (B, L, D), RNA (B, G, D) and protein (B, G, D) with one learned query each, then
    concat 3D -> Linear(3D -> mD) -> GELU -> Dropout -> Linear(mD -> D) -> LayerNorm: the cell state (B, D)."""

    def __init__(self, config: CDTConfig):
        super().__init__()
        d, hidden = config.d_model, config.vce_hidden_multiplier * config.d_model
        self.dna = QueryPool(d, config.vce_heads, config.dropout)
        self.rna = QueryPool(d, config.vce_heads, config.dropout)
        self.protein = QueryPool(d, config.vce_heads, config.dropout)
        self.expand = nn.Linear(3 * d, hidden)
        self.contract = nn.Linear(hidden, d)
        self.norm = nn.LayerNorm(d)
        self.dropout = Dropout(config.dropout)

    def _fuse(self, pooled: list[Tensor]) -> Tensor:
        return self.norm(self.contract(self.dropout(F.gelu(self.expand(torch.cat(pooled, dim=-1))))))

    def forward(self, dna: Tensor, rna: Tensor, protein: Tensor) -> Tensor:
        return self._fuse([self.dna(dna), self.rna(rna), self.protein(protein)])

    def forward_with_attention(self, dna: Tensor, rna: Tensor, protein: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """As `forward`, plus {"vce_dna": (B, Hv, L), "vce_rna": (B, Hv, G), "vce_protein": (B, Hv, G)}."""
        pooled, maps = [], {}
        for name, pool, x in (
            ("dna", self.dna, dna),
            ("rna", self.rna, rna),
            ("protein", self.protein, protein),
        ):
            z, maps[f"vce_{name}"] = pool.forward_with_weights(x)
            pooled.append(z)
        return self._fuse(pooled), maps


class TaskHead(nn.Module):
    """Linear(D -> D) -> GELU -> Dropout -> Linear(D -> G): the cell state (B, D) to one output per gene (B, G)."""

    def __init__(self, config: CDTConfig):
        super().__init__()
        self.hidden = nn.Linear(config.d_model, config.d_model)
        self.output = nn.Linear(config.d_model, config.n_genes)
        self.dropout = Dropout(config.dropout)

    def forward(self, cell: Tensor) -> Tensor:
        return self.output(self.dropout(F.gelu(self.hidden(cell))))


def _blocks(config: CDTConfig, n: int) -> nn.ModuleList:
    hidden = config.ffn_multiplier * config.d_model
    return nn.ModuleList(AttentionBlock(config.d_model, config.n_heads, hidden, config.dropout) for _ in range(n))


class CentralDogmaTransformer(nn.Module):
    """CDT: DNA (B, L, D_dna), RNA (G, D_rna), protein (G, D_prot), gene_index (B,) -> prediction (B,).

    `forward` and `predict_all_genes` never build attention maps; `forward_with_attention` (eval mode) does.
    """

    def __init__(self, config: CDTConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.dna_projection = Projection(config.dna_width, d, config.dropout)
        self.rna_projection = Projection(config.rna_width, d, config.dropout)
        self.protein_projection = Projection(config.protein_width, d, config.dropout)
        self.dna_self_attention = _blocks(config, config.dna_self_layers)
        self.rna_self_attention = _blocks(config, config.rna_self_layers)
        self.protein_self_attention = _blocks(config, config.protein_self_layers)
        block = _blocks(config, 2)
        self.dna_to_rna = block[0]  # queries: genes (RNA); keys/values: DNA positions
        self.rna_to_protein = block[1]  # queries: proteins; keys/values: the DNA-fused RNA
        self.vce = VirtualCellEmbedder(config)
        self.head = TaskHead(config)

    @staticmethod
    def _attend(block: AttentionBlock, x: Tensor, context: Tensor, maps: dict[str, Tensor] | None, key: str) -> Tensor:
        """block(x, context); with `maps`, its per-head attention probabilities are stored under `key`."""
        if maps is None:
            return block(x, context)
        x, maps[key] = block.forward_with_attention(x, context)
        return x

    def _cell_state(self, dna: Tensor, rna: Tensor, protein: Tensor, maps: dict[str, Tensor] | None = None) -> Tensor:
        """The cell state (B, D). The RNA and protein branches do not depend on the sample: they run once per
        batch as (1, G, D) and broadcast into the cross-attention."""
        tables = []
        for name, table, projection, blocks in (
            ("rna", rna, self.rna_projection, self.rna_self_attention),
            ("protein", protein, self.protein_projection, self.protein_self_attention),
        ):
            h = projection(table).unsqueeze(0)  # (1, G, D)
            for k, block in enumerate(blocks):
                h = self._attend(block, h, h, maps, f"{name}_self.{k}")
            tables.append(h)
        rna_h, protein_h = tables
        dna_h = self.dna_projection(dna)  # (B, L, D)
        for k, block in enumerate(self.dna_self_attention):
            dna_h = self._attend(block, dna_h, dna_h, maps, f"dna_self.{k}")
        rna_fused = self._attend(self.dna_to_rna, rna_h, dna_h, maps, "dna_to_rna")  # (B, G, D)
        protein_fused = self._attend(self.rna_to_protein, protein_h, rna_fused, maps, "rna_to_protein")  # (B, G, D)
        if maps is None:
            return self.vce(dna_h, rna_fused, protein_fused)  # (B, D)
        cell, vce_maps = self.vce.forward_with_attention(dna_h, rna_fused, protein_fused)
        maps.update(vce_maps)
        return cell

    def predict_all_genes(self, dna: Tensor, rna: Tensor, protein: Tensor) -> Tensor:
        """Head output for every gene, (B, G)."""
        check_cdt_inputs(self.config, dna, rna, protein)
        return self.head(self._cell_state(dna, rna, protein))

    def forward(self, dna: Tensor, rna: Tensor, protein: Tensor, gene_index: Tensor) -> Tensor:
        """Head output at each sample's target gene, (B,)."""
        check_cdt_inputs(self.config, dna, rna, protein, gene_index)
        outputs = self.head(self._cell_state(dna, rna, protein))  # (B, G)
        return outputs.gather(1, gene_index.long()[:, None]).squeeze(1)

    def forward_with_attention(
        self, dna: Tensor, rna: Tensor, protein: Tensor, gene_index: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Predictions (B,) and per-head attention probabilities, for analysis in eval mode:

        dna_self.{k} (B, H, L, L); rna_self.{k}, protein_self.{k} (B, H, G, G) (sample-invariant, expanded views);
        dna_to_rna (B, H, G, L) (gene queries over DNA positions); rna_to_protein (B, H, G, G) (protein queries
        over genes); vce_dna (B, Hv, L), vce_rna (B, Hv, G), vce_protein (B, Hv, G).
        """
        if self.training:
            raise InputError(
                "forward_with_attention is for analysis and runs in eval mode only; call model.eval() "
                "first (training uses forward, which builds no attention maps)"
            )
        check_cdt_inputs(self.config, dna, rna, protein, gene_index)
        maps: dict[str, Tensor] = {}
        outputs = self.head(self._cell_state(dna, rna, protein, maps))
        batch = dna.shape[0]
        for key in [k for k in maps if k.startswith(("rna_self.", "protein_self."))]:
            maps[key] = maps[key].expand(batch, -1, -1, -1)  # sample-invariant: one map, viewed per sample
        return outputs.gather(1, gene_index.long()[:, None]).squeeze(1), maps
