"""What the GTEx recipe keeps and how it shapes it (`GtexConfig`), with the choices its fields take."""

from __future__ import annotations

from dataclasses import dataclass

from dogmacache.contracts.windows import ORIENTATIONS
from dogmacache.data_recipes.gtex_sizes import CacheSizeConfig
from dogmacache.errors import InputError

# GTEx SMTS values minus "Bone Marrow" (IsoFormer's 30 tissues, in its order).
ISOFORMER_TISSUES = (
    "Adipose Tissue",
    "Adrenal Gland",
    "Bladder",
    "Blood",
    "Blood Vessel",
    "Brain",
    "Breast",
    "Cervix Uteri",
    "Colon",
    "Esophagus",
    "Fallopian Tube",
    "Heart",
    "Kidney",
    "Liver",
    "Lung",
    "Muscle",
    "Nerve",
    "Ovary",
    "Pancreas",
    "Pituitary",
    "Prostate",
    "Salivary Gland",
    "Skin",
    "Small Intestine",
    "Spleen",
    "Stomach",
    "Testis",
    "Thyroid",
    "Uterus",
    "Vagina",
)
TISSUE_COLUMNS = ("SMTS", "SMTSD")
CHROM_STYLES = ("ucsc", "ensembl")
TRANSCRIPT_SETS = ("protein_coding", "all")


@dataclass(frozen=True)
class GtexConfig:
    """What the GTEx recipe keeps and how it shapes it."""

    # Tissue names as written in `tissue_column`; () = every tissue with samples in the GCT.
    tissues: tuple[str, ...] = ISOFORMER_TISSUES
    # "SMTS" (31 coarse tissues) or "SMTSD" (detailed, e.g. "Brain - Cortex").
    tissue_column: str = "SMTS"
    # train / validation / test fractions, drawn by gene group: a gene's isoforms share most of their sequence, so
    # isoforms of one gene in two splits would leak test labels into training; genes that share a TSS window or a
    # peptide are one group for the same reason.
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    # chromosomes (as the windows name them) whose genes form the test split, the rest drawn into train and
    # validation by the first two fractions: no test window shares sequence with a training one; () = by gene
    test_chroms: tuple[str, ...] = ()
    # Seeds the shuffle of gene groups into splits: the same inputs, filters and seed give the same test genes.
    # The shuffle is over the groups the filters keep, so another --max-gene-length, --transcripts, --chrom-style
    # or --test-chroms draws every gene's split anew: compare models trained from one recipe folder.
    seed: int = 0
    # bp; genes whose GTF gene line spans more (end - start + 1) are excluded, as CDBridge's GTEx-Benchmark does
    # (docs/papers.md#cdbridge-gtex-benchmark); IsoFormer's data has no such filter.
    max_gene_length: int = 200_000
    # Enformer's output: 896 bins x 128 bp = 114,688 bp centred on the TSS.
    window_bins: int = 896
    bin_bp: int = 128
    # "reference": mask bin 0 = lowest coordinate; "transcript": minus-strand masks reversed, bin 0 = 5'-most.
    mask_orientation: str = "reference"
    # Tissues whose labels stay but are flagged held out (zero-shot evaluation); each must be in `tissues`.
    holdout_tissues: tuple[str, ...] = ()
    # "ucsc" (chr1 ... chrM, as in UCSC hg38.fa, the default genome) or "ensembl" (the GTF's 1 ... MT).
    chrom_style: str = "ucsc"
    # "protein_coding" (GTF transcript_biotype, IsoFormer's ~90k) or "all" (non-coding ones kept without protein).
    transcripts: str = "protein_coding"
    # Encoders, caps and the K whose cache sizes recipe.json states.
    cache_sizes: CacheSizeConfig = CacheSizeConfig()

    def __post_init__(self):
        object.__setattr__(self, "tissues", tuple(self.tissues))
        object.__setattr__(self, "holdout_tissues", tuple(self.holdout_tissues))
        object.__setattr__(self, "fractions", tuple(self.fractions))
        object.__setattr__(self, "test_chroms", tuple(self.test_chroms))
        for name, value, allowed in (
            ("tissue_column", self.tissue_column, TISSUE_COLUMNS),
            ("mask_orientation", self.mask_orientation, ORIENTATIONS),
            ("chrom_style", self.chrom_style, CHROM_STYLES),
            ("transcripts", self.transcripts, TRANSCRIPT_SETS),
        ):
            if value not in allowed:
                raise InputError(f"GTEx {name} {value!r} is not one of {allowed}; pick one of them")
        for name in ("max_gene_length", "window_bins", "bin_bp"):
            if getattr(self, name) <= 0:
                raise InputError(f"GTEx {name} is {getattr(self, name)}; expected a positive number of bp/bins")
        outside = [t for t in self.holdout_tissues if self.tissues and t not in self.tissues]
        if outside:
            raise InputError(
                f"held-out tissue {outside[0]!r} is not among the tissues {list(self.tissues)}; "
                "hold out only tissues you also select (names are case-sensitive)"
            )
