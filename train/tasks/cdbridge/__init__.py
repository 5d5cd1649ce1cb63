"""CDBridge's home (docs/papers.md#cdbridge): tissue-aware isoform expression from frozen DNA, protein
and tissue caches, through a protein-dictionary connector, splicing-inspired token merging (`train/merging.py`)
and two decoders, trained in two stages on the shared loop.

Data, from `dogmacache recipe gtex`: `labels.parquet` (id, split, dna_id, protein_id, one standardised column
per tissue), `coding_masks.parquet` (id, mask: one flag per DNA output bin), `tissues.parquet` (held_out) and
three caches: per-position DNA (N_dna, L, D_dna), pooled protein (N_prot, D_prot; ids = protein_id) and pooled
tissue context embeddings (N_tissue, D_tissue; ids = tissue names; scGPT `context` of the recipe's profiles).

Model (`CdbridgeModel`):
- connector: projected DNA tokens (queries) cross-attend to a learnable protein dictionary of M tokens (keys
  and values), initialised by k-means over the training transcripts' protein embeddings (scikit-learn, seeded);
- merging: one round of bipartite merging on the fused tokens; the merge rate is drawn from N(mean, std)
  during training with a random A/B split, fixed at `merge_rate_mean` and even/odd at evaluation;
- functional decoder (stage 1): self-attention blocks over the recovered tokens (`unmerge`, the paper's
  merge-and-recover) -> one coding logit per DNA bin, BCE against the recipe's masks. `recovery = false`
  runs the blocks on the merged tokens and copies their logits back instead;
- tissue-conditioned decoder (stage 2): `output_tokens` learned queries plus the projected tissue embedding
  cross-attend to the merged DNA tokens; their mean gives the expression (MSE on the standardised label) and a
  protein-space vector (InfoNCE against the batch's distinct proteins, `temperature`). With `filter_by_mask`
  (the paper's "filter fused features by mask") it attends only to the slots the functional decoder calls coding.

Inputs are z-scored (on by default): DNA features with the training windows, tissue embeddings over the seen
tissues. Ablations, each trained in the same run: no_tissue, tissue_only (the paper's ablation), no_merging,
no_recovery, no_mask_supervision (no stage 1: merging trained by stage 2's losses alone), mask_filter and
held_out_seen (trained on the held-out tissues too: their scores when seen, beside the zero-shot ones).

Two stages in one `train` call: stage 2 declares stage 1 as its prerequisite run, which the run trains through
the same loop first (`stage1/<name>_stage1_best.pt`; ablations whose stage 1 is the same share it), or only
evaluates when [data] stage1_checkpoint names a finished one; stage 2 starts from its weights and freezes the
connector and functional decoder (the paper's "fused features from stage 1"). Training examples are (transcript, seen
tissue) pairs; the evaluation splits hold every tissue, held-out ones included (leave-tissues-out zero-shot).

Modules: `config.py` ([data], [model], ablations), `model.py`, `data.py` (loading, chunks, the per-tissue mean),
`task.py` (the task: stages, losses, metrics, ablations), `report.py` (mask metrics, kept-token fractions, the
seen vs held-out table and figures).
"""
