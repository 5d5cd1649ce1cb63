"""Input workers and torch threads from the cores a process may use: the core count from CPU affinity and fake
cgroup quota files, the defaults for CPU and GPU runs, user settings and OMP_NUM_THREADS winning, and the embed
manifest and the train config recording the counts used."""

import dataclasses
import os

import pandas as pd
import pytest
import torch
from dogmacache.cache import open_cache
from dogmacache.cli import main
from dogmacache.devices import cgroup_cpu_limit, cpu_plan, torch_threads, usable_cores
from dogmacache.embed.runner import NUMBER_SETTINGS, EmbedConfig, run_embed
from dogmacache.embed.tiny import write_tiny_esm2
from dogmacache.errors import InputError
from dogmacache.train.config import RESUME_FREE, TrainConfig, build_section
from dogmacache.train.registry import default_config
from dogmacache.train.run import with_cpu_plan


@pytest.fixture(autouse=True)
def no_omp(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def v2(tmp_path, text):
    (tmp_path / "cpu.max").write_text(text)
    return tmp_path


def v1(tmp_path, quota, period=100000, folder="cpu"):
    (tmp_path / folder).mkdir()
    (tmp_path / folder / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (tmp_path / folder / "cpu.cfs_period_us").write_text(f"{period}\n")
    return tmp_path


def test_cgroup_v2_quota_caps_the_affinity(tmp_path):
    root = v2(tmp_path, "200000 100000\n")
    assert cgroup_cpu_limit(root) == 2.0
    assert usable_cores(set(range(8)), root) == 2
    assert usable_cores({0}, root) == 1  # the affinity is the smaller


@pytest.mark.parametrize(
    "text, cores", [("max 100000\n", 8), ("150000 100000\n", 1), ("50000 100000\n", 1), ("garbage\n", 8)]
)
def test_cgroup_v2_no_limit_fractions_and_bad_files(tmp_path, text, cores):
    # "max": no quota; 1.5 cores round down to 1; half a core is still 1; an unreadable file is no limit
    assert usable_cores(set(range(8)), v2(tmp_path, text)) == cores


@pytest.mark.parametrize("folder", ["cpu", "cpu,cpuacct"])
def test_cgroup_v1_quota(tmp_path, folder):
    assert usable_cores(set(range(16)), v1(tmp_path, 300000, folder=folder)) == 3


def test_cgroup_v1_without_quota_and_no_cgroup_at_all(tmp_path):
    assert cgroup_cpu_limit(v1(tmp_path, -1)) is None
    assert usable_cores(set(range(4)), tmp_path) == 4
    assert cgroup_cpu_limit(tmp_path / "missing") is None
    assert usable_cores(set(range(6)), tmp_path / "missing") == 6


def test_usable_cores_reads_this_process_affinity():
    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("cores", [1, 2, 4, 16])
def test_defaults_never_exceed_the_cores(device, cores):
    plan = cpu_plan(device, cores=cores)
    assert plan.cores == cores and plan.threads >= 1 and plan.workers >= 0
    assert plan.workers + plan.threads <= cores
    for workers in range(cores + 1):  # one of the two given, the other fills what is left (threads at least 1)
        assert cpu_plan(device, workers=workers, cores=cores).threads == max(1, min(cores - workers, plan.threads))
    for threads in range(1, cores + 1):
        assert cpu_plan(device, threads=threads, cores=cores).workers + threads <= cores


def test_default_choices_on_small_and_large_machines():
    assert [(p.workers, p.threads) for p in (cpu_plan("cpu", cores=c) for c in (1, 2, 4, 16))] == [
        (0, 1),
        (1, 1),
        (1, 3),
        (2, 14),
    ]
    assert [(p.workers, p.threads) for p in (cpu_plan("cuda", cores=c) for c in (1, 2, 4, 16))] == [
        (0, 1),
        (1, 1),
        (3, 1),
        (4, 2),
    ]
    assert cpu_plan("cpu", cores=16, ceiling=4).threads == 4  # never more than torch's own count


def test_user_settings_and_omp_num_threads_win(monkeypatch):
    plan = cpu_plan("cpu", workers=3, threads=5, cores=2)
    assert (plan.workers, plan.threads) == (3, 5)  # oversubscribing on purpose is allowed
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert cpu_plan("cpu", cores=16, ceiling=2).threads == 6  # the environment is a user's setting, no ceiling
    assert cpu_plan("cpu", cores=16).workers == 2 and cpu_plan("cpu", cores=4).workers == 0
    assert cpu_plan("cpu", threads=3, cores=16).threads == 3  # a flag beats the environment
    monkeypatch.setenv("OMP_NUM_THREADS", "0")
    assert cpu_plan("cpu", cores=2).threads == 1  # not a positive count: ignored
    with pytest.raises(InputError, match="--num-workers"):
        cpu_plan("cpu", workers=-1, cores=2)
    with pytest.raises(InputError, match="--threads"):
        cpu_plan("cpu", threads=0, cores=2)


def test_torch_threads_are_restored():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@pytest.fixture(scope="module")
def proteins(tmp_path_factory):
    root = tmp_path_factory.mktemp("cpu")
    pd.DataFrame({"id": ["p1", "p2", "p3"], "sequence": ["MKV", "MKVLA", "ACDEFGHIK"]}).to_parquet(
        root / "protein.parquet"
    )
    return root, write_tiny_esm2(root / "esm2")


def _config(proteins, out, **kwargs):
    root, model = proteins
    return EmbedConfig(
        input=str(root / "protein.parquet"),
        modality="protein",
        model="esm2",
        out=str(out),
        model_path=str(model),
        device="cpu",
        progress=False,
        fidelity_items=0,
        **kwargs,
    )


def _recorded(out):
    return open_cache(out).manifest.config


def test_manifest_records_the_threads_and_workers_used(proteins, tmp_path):
    before = torch.get_num_threads()
    run_embed(_config(proteins, tmp_path / "one.zarr", torch_threads=1, num_workers=0))
    assert torch.get_num_threads() == before
    recorded = _recorded(tmp_path / "one.zarr")
    assert (recorded["torch_threads"], recorded["num_workers"]) == (1, 0)
    run_embed(_config(proteins, tmp_path / "default.zarr"))
    plan = cpu_plan("cpu", ceiling=before)
    recorded = _recorded(tmp_path / "default.zarr")
    # the plan's threads; no worker: ESM-2's inputs cost less to prepare than to pass between processes
    assert (recorded["torch_threads"], recorded["num_workers"]) == (plan.threads, 0)
    run_embed(_config(proteins, tmp_path / "worker.zarr", num_workers=1))  # an explicit count is honoured
    assert _recorded(tmp_path / "worker.zarr")["num_workers"] == 1
    # recorded, not a number setting: the cache embedded at 1 thread is complete for a run at 2 threads
    assert "torch_threads" not in NUMBER_SETTINGS
    assert run_embed(_config(proteins, tmp_path / "one.zarr", torch_threads=2))["complete"]


def test_cli_threads_flag(proteins, tmp_path, capsys):
    root, model = proteins
    out = tmp_path / "cli.zarr"
    args = ["embed", "--input", str(root / "protein.parquet"), "--modality", "protein", "--model", "esm2"]
    args += ["--model-path", str(model), "--device", "cpu", "--out", str(out), "--no-progress"]
    assert main([*args, "--threads", "1", "--num-workers", "0", "--fidelity-items", "0"]) == 0
    assert (_recorded(out)["torch_threads"], _recorded(out)["num_workers"]) == (1, 0)
    with pytest.raises(SystemExit):
        main(["embed", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--threads" in text and "OMP_NUM_THREADS" in text and "cgroup quota" in text


def test_train_decides_unset_counts_and_keeps_given_ones(monkeypatch):
    config = dataclasses.replace(default_config("cdt"), train=TrainConfig(device="cpu"))
    assert (config.train.num_workers, config.train.threads) == (None, None)
    decided = with_cpu_plan(config).train
    plan = cpu_plan("cpu", ceiling=torch.get_num_threads())
    assert (decided.num_workers, decided.threads) == (plan.workers, plan.threads)
    given = dataclasses.replace(config, train=TrainConfig(device="cpu", num_workers=0, threads=1))
    assert (with_cpu_plan(given).train.num_workers, with_cpu_plan(given).train.threads) == (0, 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")  # torchrun processes share the machine's cores
    assert with_cpu_plan(config).train.threads == 1
    assert "train.threads" in RESUME_FREE and "train.num_workers" in RESUME_FREE
    with pytest.raises(InputError, match="threads"):
        build_section(TrainConfig, {"threads": 0}, "train")


def test_bench_threads_section_times_the_default_beside_fixed_settings(tmp_path, monkeypatch):
    from dogmacache.bench import render_text
    from dogmacache.bench.threads import bench_threads, settings_to_try, threads_tables
    from dogmacache.data_recipes import demo as demo_recipe

    build_demo = demo_recipe.build_demo

    def first_windows(out, *args, **kwargs):  # the demo's first 24 DNA windows: each setting embeds them once
        built = build_demo(out, *args, **kwargs)
        table = out / "cdt" / "dna_windows.parquet"
        pd.read_parquet(table).iloc[:24].to_parquet(table)
        return built

    monkeypatch.setattr(demo_recipe, "build_demo", first_windows)
    assert settings_to_try(2)[0] == (1, 1) and len(set(settings_to_try(2))) == len(settings_to_try(2))
    result = bench_threads(repeats=1, busy=False, workdir=str(tmp_path))
    rows = result["conditions"]["as is"]["rows"]
    assert result["items"] == 24 and [(r["workers"], r["threads"]) for r in rows] == settings_to_try(result["cores"])
    assert all(r["median_s"] > 0 for r in rows) and result["conditions"]["as is"]["default_over_best"] >= 1.0
    text = render_text(threads_tables(result)[0])
    assert "(the default)" in text and "default within 1.2x of the best" in text
