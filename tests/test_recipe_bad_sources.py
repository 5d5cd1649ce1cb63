"""Source files that are the wrong build, naming or shape, and recipe options out of range: refused in one line
naming the file or option, or read as the same annotation where only the naming differs."""

import gzip
import json

import pandas as pd
import pytest
from dogmacache.data_recipes import formats, gtex
from dogmacache.data_recipes.gasperini import GasperiniConfig, build_gasperini, read_vocab
from dogmacache.data_recipes.gene_tss import build_gene_tss
from dogmacache.errors import InputError
from gtex_miniature import CONFIG, read_outputs, write_sources
from test_recipe_gasperini import _rows, _sources, _write_chain


def _rewrite_gz(path, edit):
    with gzip.open(path, "rt") as fh:
        text = fh.read()
    with gzip.open(path, "wt") as fh:
        fh.write(edit(text))


def test_a_gtf_on_another_build_is_refused_by_gtex_and_recorded_by_gene_tss(tmp_path):
    names = write_sources(tmp_path / "src")
    _rewrite_gz(names["gtf"], lambda t: t.replace("#!genome-build GRCh38.p7", "#!genome-build GRCh37.p13"))
    with pytest.raises(InputError, match=r"annotated on GRCh37 .* GTEx v8's transcript annotation is on GRCh38"):
        gtex.build_gtex(names, tmp_path / "out", CONFIG)
    genes = tmp_path / "genes.txt"
    gtf = pd.DataFrame(formats.read_gtf(names["gtf"], ["gene"], ["gene_name"]))
    genes.write_text("\n".join(gtf["gene_name"].dropna().unique()[:4]) + "\n")
    manifest = build_gene_tss(names["gtf"], genes, tmp_path / "tss")
    assert manifest["genome_build"] == "GRCh37"


def test_gencode_description_line_names_the_build():
    assert formats.gtf_build(["##description: evidence-based annotation of the human genome (GRCh38), version 44"]) == (
        "GRCh38"
    )
    assert formats.gtf_build(["##provider: GENCODE", "##format: gtf"]) is None


def test_a_chr_prefixed_gtf_gives_the_same_recipe_as_the_ensembl_one(tmp_path):
    names = write_sources(tmp_path / "ens")
    gtex.build_gtex(names, tmp_path / "out_ens", CONFIG)
    prefixed = write_sources(tmp_path / "gencode")
    _rewrite_gz(
        prefixed["gtf"],
        lambda t: "\n".join(line if line.startswith("#") or not line else "chr" + line for line in t.split("\n")),
    )
    gtex.build_gtex(prefixed, tmp_path / "out_gencode", CONFIG)
    a, _ = read_outputs(tmp_path / "out_ens")
    b, _ = read_outputs(tmp_path / "out_gencode")
    assert a.keys() == b.keys()
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert set(a["dna_windows"]["chrom"]) <= {f"chr{c}" for c in [*map(str, range(1, 23)), "X", "Y", "M"]}


def test_gtf_lines_blank_reversed_or_gff3(tmp_path):
    names = write_sources(tmp_path / "src")
    _rewrite_gz(names["gtf"], lambda t: t + "\n\n")  # blank lines at the end are skipped
    assert len(formats.read_gtf(names["gtf"], ["gene"], ["gene_name"]))
    bad = tmp_path / "bad.gtf"
    bad.write_text('1\thavana\tgene\t500\t100\t.\t+\t.\tgene_id "G1"; gene_name "A";\n')
    with pytest.raises(InputError, match=r"bad.gtf line 1: start 500 lies after end 100"):
        formats.read_gtf(bad, ["gene"], ["gene_name"])
    bad.write_text("1\thavana\tgene\t100\t500\t.\t+\t.\tID=gene:G1;Name=A\n")
    with pytest.raises(InputError, match=r"is GFF3 \(key=value\), not GTF"):
        formats.read_gtf(bad, ["gene"], ["gene_name"])


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    path = tmp_path / "SampleAttributesDS.txt"
    path.write_bytes(b"\xef\xbb\xbfSAMPID\tSMTS\nS1\tHeart\n")
    table = formats.read_table(path, ["SAMPID", "SMTS"])
    assert table["SAMPID"].tolist() == ["S1"] and formats.header_of(path) == ["SAMPID", "SMTS"]


def test_a_chain_that_maps_nothing_or_is_no_chain_is_refused(tmp_path):
    paths = _sources(tmp_path, _rows())
    _write_chain(paths["chain"], "chain 1000 chr9 200000 + 0 200000 chr9 201000 + 1000 201000 1\n200000\n\n")
    with pytest.raises(InputError, match=r"no enhancer site lifted from hg19 to hg38 .* lie on chr1, chr7"):
        build_gasperini(paths, tmp_path / "out", GasperiniConfig())
    _write_chain(paths["chain"], "200000\nchain 1000 chr1\n")
    with pytest.raises(InputError, match=r"could not be read as a UCSC chain file"):
        build_gasperini(paths, tmp_path / "out", GasperiniConfig())
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"significance": 5.0}, r"--significance 5.0: expected an adjusted p-value cut in \(0, 1\]"),
        ({"significance": float("nan")}, r"--significance nan"),
        ({"max_distance_kb": -5.0}, r"--max-distance-kb -5.0: expected a distance in kb >= 0"),
        ({"max_distance_kb": float("inf")}, r"--max-distance-kb inf"),
    ],
)
def test_gasperini_options_out_of_range_are_refused(options, message):
    with pytest.raises(InputError, match=message):
        GasperiniConfig(**options)


@pytest.mark.parametrize("content", ["3", '["A", "B"]', '{"A": {"id": 1}}', "{not json"])
def test_a_vocab_json_that_is_not_a_symbol_map_is_refused(tmp_path, content):
    path = tmp_path / "vocab.json"
    path.write_text(content)
    with pytest.raises(InputError, match=r"--rna-vocab .*vocab.json"):
        read_vocab(path)
    path.write_text(json.dumps({"A": 0, "<pad>": 1, "B": 2}))
    assert read_vocab(path) == {"A", "B"}


def test_a_distance_that_keeps_no_pair_is_named_and_ucsc_build_names_are_the_same_assembly(tmp_path):
    with pytest.raises(InputError, match=r"--max-distance-kb 0 drops all .* pairs"):
        build_gasperini(_sources(tmp_path, _rows()), tmp_path / "out", GasperiniConfig(max_distance_kb=0.0))
    names = write_sources(tmp_path / "src")
    _rewrite_gz(names["gtf"], lambda t: t.replace("#!genome-build GRCh38.p7", "#!genome-build hg38"))
    manifest = gtex.build_gtex(names, tmp_path / "gtex", CONFIG)
    assert manifest["genome_build"] == "hg38"  # recorded as the header names it
    assert formats.same_build("hg19") == formats.same_build("GRCh37") != formats.same_build("GRCh38")


def test_gasperini_options_are_checked_before_any_download(tmp_path, capsys, monkeypatch):
    from dogmacache.cli import main
    from dogmacache.data_recipes import sources

    monkeypatch.setattr(sources, "download", lambda *a, **k: pytest.fail("downloaded before checking the options"))
    args = ["recipe", "gasperini", "--cache-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]
    assert main([*args, "--significance", "5"]) == 2
    assert "--significance 5.0: expected an adjusted p-value cut" in capsys.readouterr().err
    (tmp_path / "vocab.json").write_text("[1, 2]")
    assert main([*args, "--rna-vocab", str(tmp_path / "vocab.json")]) == 2
    assert "expected scGPT's vocab.json" in capsys.readouterr().err
