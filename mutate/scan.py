"""Edited windows -> adapted tokens: the DNA model re-embeds only the windows that contain an edit; every reference
row comes from the DNA cache.

`open_scanner` rebuilds the embed stage's adapter with the DNA cache's own recorded settings (model, options,
precision, dtype, device; on the CPU its torch thread count too, where OMP_NUM_THREADS chooses none) and refuses
when the model files, the genome or a setting differ from the cache's manifest (`settings.py`), or when the
windows table is not the one the cache was embedded from; edited rows are cast and, for a `bitround` cache,
rounded as its rows were stored (`cache.layout.as_read`): the edited and the cached rows are then comparable
number for number. `Scanner.shifts` takes variants (each a list of edits applied together) and returns, per
variant and per window holding one of its edits, the adapted token of the reference row and of the edited
window.

Shapes: V variants, W affected windows, L positions, D_dna / D_tok widths.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from dogmacache.cache import EmbeddingCache
from dogmacache.cache.layout import as_read
from dogmacache.contracts.windows import window_holds, window_label, window_start0
from dogmacache.devices import CoreWatch, pick_device, torch_threads
from dogmacache.embed.adapters import EmbeddingAdapter, get_adapter
from dogmacache.embed.genome import Genome
from dogmacache.embed.inputs import check_embedded_from
from dogmacache.embed.reuse import digest_index
from dogmacache.embed.runner import EmbedConfig, EmbedSettings, embed_rows, load, resolve
from dogmacache.embed.settings import matching_threads
from dogmacache.errors import InputError, ModelError
from dogmacache.mutate.edits import Edit, WindowSource, edited_window, in_window
from dogmacache.mutate.settings import check_same_settings, model_load_error
from torch import nn


@dataclass
class Scanner:
    """The loaded pieces of a scan: the embed adapter and its settings, the windows, the cache, the token adapter."""

    adapter: EmbeddingAdapter
    settings: EmbedSettings
    table: pd.DataFrame  # the windows: id, chrom, center, strand ... in cache order
    rows: list[dict[str, Any]]  # the table's rows as the embed stage prepares them (with the genome)
    genome: Genome
    dna: EmbeddingCache
    token_model: nn.Module  # (B, L, D_dna) -> (B, D_tok), eval mode
    window_bp: int

    def window_start0(self, row: int) -> int:
        """0-based first base of the window of table row `row` (`contracts.windows`, as the embed stage cuts it)."""
        return window_start0(int(self.table["center"].iloc[row]), self.window_bp)

    def window_label(self, row: int) -> str:
        return window_label(str(self.table["chrom"].iloc[row]), int(self.table["center"].iloc[row]), self.window_bp)

    def affected(self, edits: Sequence[Edit]) -> list[int]:
        """Table rows whose window holds at least one of `edits` whole."""
        return np.flatnonzero(self._hits(edits)[0]).tolist()

    def crossing(self, edits: Sequence[Edit]) -> list[tuple[int, Edit]]:
        """(row, edit) for each window an edit crosses the edge of (a deletion or substitution partly inside):
        mutate applies whole edits only, so such a window keeps its reference row; `run_mutate` says which."""
        return self._hits(edits)[1]

    @functools.cached_property
    def _windows(self) -> tuple[np.ndarray, np.ndarray]:
        """Every window's chromosome as the genome names it and its 0-based start: resolved once per scan, not once
        per edit and variant."""
        chroms = self.table["chrom"].astype(str).map(self.genome.resolve).to_numpy()
        return chroms, window_start0(self.table["center"].to_numpy(np.int64), self.window_bp)

    def _hits(self, edits: Sequence[Edit]) -> tuple[np.ndarray, list[tuple[int, Edit]]]:
        chroms, starts = self._windows
        hit = np.zeros(len(self.table), dtype=bool)
        crossed = []
        for edit in edits:
            same = chroms == edit.chrom
            inside = same & window_holds(starts, self.window_bp, edit.start0, edit.end0)
            # crossing an edge; an insertion is inside or outside (`window_holds`), never across
            overlap = same & (starts < edit.end0) & (edit.start0 < starts + self.window_bp) if edit.ref else inside
            crossed += [(int(row), edit) for row in np.flatnonzero(overlap & ~inside)]
            hit |= inside
        return hit, crossed

    def shifts(
        self, variants: Sequence[Sequence[Edit]], only: int | None = None
    ) -> tuple[pd.DataFrame, dict[str, np.ndarray], dict[str, int]]:
        """Per (variant, affected window): the table of ids; {"reference", "edited"} adapted tokens (W, D_tok);
        counts of windows re-embedded (one forward each) and reference rows reused from the cache. `only`: that
        table row's window alone (the control's draws need the gene's)."""
        records, edited_rows = [], []
        for v, edits in enumerate(variants):
            for row in self.affected(edits):
                if only is not None and row != only:
                    continue
                start0 = self.window_start0(row)
                chrom = self.genome.resolve(str(self.table["chrom"].iloc[row]))
                inside = [e for e in edits if in_window(e, chrom, start0, self.window_bp)]
                seq, padded = edited_window(self.genome, chrom, start0, self.window_bp, inside)
                edited_rows.append({**self.rows[row], "_genome": WindowSource(seq, padded)})
                records.append(
                    {
                        "variant": v,
                        "id": str(self.table["id"].iloc[row]),
                        "row": row,
                        "edits": "; ".join(e.label for e in inside),
                    }
                )
        table = pd.DataFrame(records, columns=["variant", "id", "row", "edits"])
        if table.empty:
            return table, {}, {"windows_reembedded": 0, "rows_reused": 0}
        unique, inverse = np.unique(table["row"].to_numpy(), return_inverse=True)
        reference = self.dna.read_rows(self.cached_rows(unique), dtype=np.float32)[inverse]  # (W, L, D_dna)
        edited, n_embedded, n_found = self._edited(edited_rows)
        tokens = {name: self._adapt(x) for name, x in (("reference", reference), ("edited", edited))}
        return table, tokens, {"windows_reembedded": n_embedded, "rows_reused": len(unique) + n_found}

    def cached_rows(self, rows: np.ndarray) -> np.ndarray:
        """Cache rows of table `rows`' reference windows, found by item digest (`embed/reuse.py`) as `--reuse`
        finds them: a window whose bases the cache does not hold is an InputError, never a wrong row. A cache
        written before item digests is read by row (its table was checked by input digest)."""
        if not self._index:
            return np.asarray(rows)
        found = []
        digests = self.adapter.digests([self.rows[int(row)] for row in rows])
        for row, key in zip(rows, digests, strict=True):
            hit = self._index.get(key.tobytes())
            if hit is None:
                label = f"{self.table['id'].iloc[int(row)]!r} ({self.window_label(int(row))})"
                raise InputError(
                    f"window {label} is not in {self.dna.url} "
                    "as this genome and model prepare it; re-embed the windows with this genome"
                )
            found.append(hit)
        return np.asarray(found)

    def _edited(self, edited_rows: list[dict[str, Any]]) -> tuple[np.ndarray, int, int]:
        """Embeddings of the edited windows: a window the cache already holds (an edit that leaves the bases as
        they were) is read from it, one edited twice is embedded once. (embeddings, embedded, read)."""
        digests = [key.tobytes() for key in self.adapter.digests(edited_rows)]
        in_cache = {d: self._index[d] for d in digests if d in self._index}
        todo = list(dict.fromkeys(d for d in digests if d not in in_cache))
        out: dict[bytes, np.ndarray] = {}
        if in_cache:
            read = self.dna.read_rows(list(in_cache.values()), dtype=np.float32)
            out.update(zip(in_cache, read, strict=True))
        if todo:
            first = {d: r for d, r in zip(digests, edited_rows, strict=True) if d in todo}
            with torch_threads(self.settings.torch_threads):
                embedded, _ = embed_rows(
                    self.adapter, [first[d] for d in todo], **self.settings.stream_options(len(todo), num_workers=0)
                )
            stored = as_read(embedded, self.dna.manifest.compression)  # bitround: rounded as the cache's rows are
            out.update(zip(todo, stored.astype(np.float32), strict=True))
        return np.stack([out[d] for d in digests]), len(todo), sum(d in in_cache for d in digests)

    @functools.cached_property
    def _index(self) -> dict[bytes, int]:
        """item digest -> row of the DNA cache, read once per scanner."""
        return digest_index(self.dna)

    @torch.inference_mode()
    def _adapt(self, dna: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(dna, dtype=np.float32))
        return self.token_model(x).numpy()


def open_scanner(
    dna: EmbeddingCache,
    windows: str | Path,
    genome: str | Path,
    dna_model: str | Path | None,
    token_model: nn.Module,
    device: str | None = None,
) -> Scanner:
    """The DNA cache's adapter rebuilt with its recorded settings; InputError when anything that changes the numbers
    differs from the cache's manifest."""
    recorded = dna.manifest.config
    name = recorded.get("model")
    if dna.manifest.modality != "dna" or not name:
        raise InputError(
            f"{dna.url} is a {dna.manifest.modality} cache without an embed model record; mutate needs "
            "the DNA cache written by `dogmacache embed --modality dna`"
        )
    cls = get_adapter(name, "dna")
    if bool(dna_model) != cls.reads_weights:
        raise InputError(
            f"{dna.url} was embedded with {name}, which reads "
            + (
                "its weights: pass the model folder it was embedded with as --dna-model"
                if cls.reads_weights
                else f"no weights: drop --dna-model {dna_model}"
            )
        )
    config = EmbedConfig(
        input=str(windows),
        modality="dna",
        model=name,
        out=str(Path(tempfile.gettempdir()) / "mutate"),
        model_path=str(dna_model) if dna_model else None,
        genome=str(genome),
        device=device or recorded.get("device", "cpu"),
        precision=recorded.get("precision", "fp32"),
        dtype=dna.manifest.dtype,
        compression=dna.manifest.compression,
        max_tokens=int(recorded.get("max_tokens") or 0),
        max_batch=int(recorded.get("max_batch") or 64),
        num_workers=0,
        progress=False,
        options=cls.options_class.from_dict(recorded.get("options") or {}),
    )
    watch = CoreWatch()  # the cores, watched while the model loads
    torch_device = pick_device(config.device)
    try:
        table, rows, adapter = load(config, torch_device)
    except ModelError as err:
        raise model_load_error(err, str(dna_model), dna.url) from None
    threads, note = matching_threads(
        {dna.url: recorded.get("torch_threads")},
        config,
        torch_device,
        matched=f"as {dna.url} was begun with, so that edited windows are computed as its reference rows were",
        unmatched=(f"{dna.url} was begun with", "the edits' effects may hold float rounding between thread counts"),
    )
    config = dataclasses.replace(config, torch_threads=threads)  # None: the plan decides
    settings = resolve(config, adapter, torch_device, watch, resume=False)  # `out` is no cache of mutate's
    wanted = settings.manifest_config(adapter.info())
    check_same_settings(dna.url, recorded, wanted, cls.options_class.flags, str(genome), str(dna_model))
    check_embedded_from(
        table, "dna", dna.manifest, dna.url, windows, "pass the recipe's dna_windows / genes table with --windows"
    )
    # the bases each window is cut as: a model's input window, or the k-mer adapter's bins end to end
    window_bp = getattr(adapter.options, "window_bp", None) or getattr(getattr(adapter, "geometry", None), "span_bp", 0)
    if not window_bp:
        raise InputError(f"the {name} adapter records no window_bp; mutate needs a DNA model that cuts genome windows")
    if note:  # said once the run is accepted
        print(note)
    return Scanner(
        adapter=adapter,
        settings=settings,
        table=table.reset_index(drop=True),
        rows=rows,
        genome=rows[0]["_genome"],
        dna=dna,
        token_model=token_model.eval(),
        window_bp=int(window_bp),
    )
