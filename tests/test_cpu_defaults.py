"""Input workers and torch threads from the cores a process may use: the core count from CPU affinity and fake
cgroup quota files, the defaults for CPU and GPU runs, user settings and OMP_NUM_THREADS winning, and the embed
manifest and the train config recording the counts used."""

import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from dogmacache.cache import open_cache
from dogmacache.cli import main
from dogmacache.devices import cgroup_cpu_limit, cpu_plan, free_cores, torch_threads, usable_cores
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
    plan = cpu_plan(device, cores=cores, busy=0.0)
    assert plan.cores == cores and plan.threads >= 1 and plan.workers >= 0
    assert plan.workers + plan.threads <= cores
    for workers in range(cores + 1):  # one of the two given, the other fills what is left (threads at least 1)
        threads = cpu_plan(device, workers=workers, cores=cores, busy=0.0).threads
        assert threads == max(1, min(cores - workers, plan.threads))
    for threads in range(1, cores + 1):
        assert cpu_plan(device, threads=threads, cores=cores).workers + threads <= cores


def _pairs(device, cores, **kwargs):
    return [(p.workers, p.threads) for p in (cpu_plan(device, cores=c, **kwargs) for c in cores)]


def test_default_choices_on_small_and_large_machines():
    # on the CPU the forward takes the cores; inputs are prepared in the process up to 2 cores
    assert _pairs("cpu", (1, 2, 4, 16), busy=0.0) == [(0, 1), (0, 2), (1, 3), (2, 14)]
    assert _pairs("cuda", (1, 2, 4, 16), busy=0.0) == [(0, 1), (1, 1), (3, 1), (4, 2)]
    # inputs cheaper to prepare than to pass between processes: no worker; on the CPU its core goes to the threads
    assert _pairs("cpu", (1, 2, 4, 16), busy=0.0, cheap_inputs=True) == [(0, 1), (0, 2), (0, 4), (0, 16)]
    assert _pairs("cuda", (1, 2, 4, 16), busy=0.0, cheap_inputs=True) == [(0, 1), (0, 1), (0, 1), (0, 2)]
    assert cpu_plan("cpu", cores=16, ceiling=4, busy=0.0).threads == 4  # never more than torch's own count


def test_cores_other_processes_keep_busy_are_given_up():
    # 2 cores: a quarter of a core busy elsewhere is tolerated, more gives that core up
    assert [cpu_plan("cpu", cores=2, busy=b).threads for b in (0.0, 0.25, 0.3, 1.0, 2.0)] == [2, 2, 1, 1, 1]
    assert _pairs("cpu", (16,), busy=4.5) == [(2, 9)]  # 11 cores free: two workers, nine threads
    assert _pairs("cpu", (4,), busy=2.0) == [(0, 2)]  # 2 free: no worker
    # processes of one run splitting the cores (torchrun's, dask's) take their share and watch nothing
    assert _pairs("cpu", (16,), share=4) == [(1, 3)] and cpu_plan("cpu", cores=16, share=4).busy is None
    # the flag, OMP_NUM_THREADS and a fixed worker count are the user's: the busy count does not lower them
    assert cpu_plan("cpu", threads=2, cores=2, busy=1.0).threads == 2
    # a cgroup quota of 2 cores on 8 CPUs: the quota's cores stay free while the idle CPUs outnumber them
    assert [free_cores(2, busy, watched=8) for busy in (0.0, 6.0, 6.5, 7.0, 8.0)] == [2, 2, 1, 1, 1]


class _Watch:
    """A stand-in for `devices.CoreWatch` that says `busy` of `watched` CPUs are busy, and counts the askings."""

    def __init__(self, busy, watched=2):
        self.answer, self.watched, self.asked = busy, watched, 0

    def busy(self, seconds=0.1):
        self.asked += 1
        return self.answer


def test_the_plan_watches_the_cores_only_where_it_chooses_threads(monkeypatch):
    from dogmacache import devices

    watch = _Watch(1.0)
    monkeypatch.setattr(devices, "CoreWatch", lambda: watch)
    plan = cpu_plan("cpu", cores=2)
    assert (plan.threads, plan.busy, plan.watched, watch.asked) == (1, 1.0, 2, 1)  # one core busy elsewhere
    cpu_plan("cpu", threads=2, cores=2)  # the user's count
    cpu_plan("cpu", cores=2, ceiling=1)  # torch's count allows one thread only
    cpu_plan("cpu", cores=1)  # nothing to choose
    cpu_plan("cuda", cores=8)  # a GPU run's one or two threads
    cpu_plan("cpu", cores=2, busy=0.0)  # the caller's count
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    cpu_plan("cpu", cores=2)
    assert watch.asked == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    given = _Watch(0.0)
    assert cpu_plan("cpu", cores=2, watch=given).threads == 2 and given.asked == 1 and watch.asked == 1


def _stat(path, ticks):
    """A /proc/stat with the machine line and one line per CPU of `ticks` {cpu: (busy, idle)}."""
    lines = [f"cpu  {sum(b for b, _ in ticks.values())} 0 0 {sum(i for _, i in ticks.values())} 0 0 0 0 0 0"]
    lines += [f"cpu{c} {b // 2} {b - b // 2} 0 {i} 0 0 0 0 0 0" for c, (b, i) in sorted(ticks.items())]
    path.write_text("\n".join([*lines, "intr 1 2 3", "ctxt 4"]) + "\n")


def test_cpu_ticks_are_read_for_the_cpus_asked(tmp_path):
    from dogmacache.devices import cpu_jiffies

    stat = tmp_path / "stat"
    _stat(stat, {0: (100, 900), 1: (500, 500), 2: (10, 90)})
    assert cpu_jiffies({1}, stat) == (500, 1000)
    assert cpu_jiffies({0, 2}, stat) == (110, 1100)
    assert cpu_jiffies({3}, stat) is None  # no line for CPU 3 (offline, renumbered): cannot tell
    assert cpu_jiffies({0}, tmp_path / "missing") is None
    for broken in ("cpu0 1 2\n", "\ncpu0 1 2 3 4\n", "cpu0 a b c d\n", "cpux 1 2 3 4\n"):
        stat.write_text(broken)  # too few fields, an empty line first, not numbers, not a CPU number
        assert cpu_jiffies({0}, stat) is None


def test_the_watch_counts_other_processes_busy_cores(tmp_path):
    from dogmacache.devices import CoreWatch

    stat = tmp_path / "stat"
    _stat(stat, {0: (10, 10), 1: (10, 10), 2: (10, 10)})
    watch = CoreWatch({0, 1}, stat)  # CPU 2 is not this process's
    _stat(stat, {0: (110, 10), 1: (60, 60), 2: (110, 10)})  # CPUs 0 and 1 busy 150 of 200 ticks since
    busy = watch.busy(seconds=0.05)  # this process slept meanwhile: its own CPU time is next to nothing
    assert 1.4 < busy <= 1.5
    _stat(stat, {0: (510, 10), 1: (510, 10)})
    assert watch.busy() == busy  # the first answer is kept: every plan from one watch agrees
    _stat(stat, {0: (1, 1), 1: (1, 1)})  # counters that went backwards: no answer rather than a wrong one
    assert CoreWatch({0, 1}, stat).busy(seconds=0.0) is None
    start = time.perf_counter()
    assert CoreWatch({0, 1}, tmp_path / "missing").busy(seconds=5.0) is None  # cannot tell: no waiting either
    assert time.perf_counter() - start < 1.0


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads /proc/stat (Linux)")
def test_a_busy_process_beside_this_one_is_seen_and_this_one_is_not():
    """With a busy loop in another process and a spinning thread in this one, the watch counts the loop's core
    and leaves out this process's own CPU time, measured here over the same window (the cores may be shared with
    any other load: only this process's share is compared)."""
    import subprocess
    import sys
    import threading

    from dogmacache.devices import CoreWatch, affinity, cpu_jiffies

    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    stop = threading.Event()

    def spin():  # this process's own work, which the watch must not count
        while not stop.is_set():
            pass

    spinner = threading.Thread(target=spin)
    try:
        time.sleep(0.5)  # the loop has started
        spinner.start()
        cpus = affinity()
        before, own, wall = cpu_jiffies(cpus), time.process_time(), time.perf_counter()
        busy = CoreWatch(cpus).busy(0.5)
        after, own, wall = cpu_jiffies(cpus), time.process_time() - own, time.perf_counter() - wall
    finally:
        stop.set()
        loop.kill()
        loop.wait()
        if spinner.is_alive():
            spinner.join()
    everyone = (after[0] - before[0]) / (after[1] - before[1]) * len(cpus)  # this process included
    mine = own / wall
    assert mine > 0.05  # the spinning thread ran
    assert busy >= 0.5  # the loop's core (other processes can only add to it)
    assert abs((everyone - mine) - busy) < 0.25  # this process's own time taken off, not more, not less


def test_user_settings_and_omp_num_threads_win(monkeypatch):
    plan = cpu_plan("cpu", workers=3, threads=5, cores=2)
    assert (plan.workers, plan.threads) == (3, 5)  # oversubscribing on purpose is allowed
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert cpu_plan("cpu", cores=16, ceiling=2).threads == 6  # the environment is a user's setting, no ceiling
    assert cpu_plan("cpu", cores=16).workers == 2 and cpu_plan("cpu", cores=4).workers == 0
    assert cpu_plan("cpu", threads=3, cores=16).threads == 3  # a flag beats the environment
    monkeypatch.setenv("OMP_NUM_THREADS", "0")
    assert cpu_plan("cpu", cores=2, busy=0.0).threads == 2  # not a positive count: ignored
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


def test_manifest_records_the_threads_and_workers_used(proteins, tmp_path, monkeypatch):
    from dogmacache import devices

    before = torch.get_num_threads()
    run_embed(_config(proteins, tmp_path / "one.zarr", torch_threads=1, num_workers=0))
    assert torch.get_num_threads() == before
    recorded = _recorded(tmp_path / "one.zarr")
    assert (recorded["torch_threads"], recorded["num_workers"]) == (1, 0)
    # the run and the plan below see the same cores (each would watch them in its own moment)
    monkeypatch.setattr(devices.CoreWatch, "busy", lambda self, seconds=0.1: 0.0)
    run_embed(_config(proteins, tmp_path / "default.zarr"))
    plan = cpu_plan("cpu", ceiling=before, cheap_inputs=True)
    recorded = _recorded(tmp_path / "default.zarr")
    # the plan's threads; no worker: ESM-2's inputs cost less to prepare than to pass between processes
    assert (recorded["torch_threads"], recorded["num_workers"]) == (plan.threads, 0)
    run_embed(_config(proteins, tmp_path / "worker.zarr", num_workers=1))  # an explicit count is honoured
    assert _recorded(tmp_path / "worker.zarr")["num_workers"] == 1
    # recorded, not a number setting: the cache embedded at 1 thread is complete for a run at 2 threads
    assert "torch_threads" not in NUMBER_SETTINGS
    assert run_embed(_config(proteins, tmp_path / "one.zarr", torch_threads=2))["complete"]


def test_a_run_gives_busy_cores_up_and_says_so(proteins, tmp_path, monkeypatch, capsys):
    from dogmacache import devices

    monkeypatch.setattr(devices, "usable_cores", lambda *a, **k: 2)
    monkeypatch.setattr(devices, "affinity", lambda: {0, 1})
    monkeypatch.setattr(devices.CoreWatch, "busy", lambda self, seconds=0.1: 1.0)  # one core busy elsewhere
    with torch_threads(2):
        run_embed(_config(proteins, tmp_path / "busy.zarr"))
    recorded = _recorded(tmp_path / "busy.zarr")
    assert (recorded["torch_threads"], recorded["num_workers"]) == (1, 0)
    said = capsys.readouterr().out
    assert "torch threads: 1, input workers: 0 (other processes kept 1.0 of 2 CPUs busy; --threads N chooses)" in said
    monkeypatch.setattr(devices.CoreWatch, "busy", lambda self, seconds=0.1: 0.0)  # idle: both cores, said nothing
    with torch_threads(2):
        run_embed(_config(proteins, tmp_path / "idle.zarr"))
    assert _recorded(tmp_path / "idle.zarr")["torch_threads"] == 2 and "torch threads:" not in capsys.readouterr().out


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
    from dogmacache import devices

    # the run and the plan below see the same cores (each would watch them in its own moment)
    monkeypatch.setattr(devices.CoreWatch, "busy", lambda self, seconds=0.1: 0.0)
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
    # the default is left to each run, beside fixed settings, each once
    assert settings_to_try(2)[0] == (None, None) and len(set(settings_to_try(2))) == len(settings_to_try(2))
    result = bench_threads(repeats=1, busy=False, workdir=str(tmp_path), proteins=40)
    assert [(c["label"], c["items"]) for c in result["cases"]] == [("Enformer", 24), ("ESM-2", 40)]
    for case, text in zip(result["cases"], map(render_text, threads_tables(result)), strict=True):
        condition = case["conditions"]["as is"]
        rows = condition["rows"]
        assert [(r["workers"], r["threads"]) for r in rows] == settings_to_try(result["cores"])
        assert all(r["median_s"] > 0 and r["setup_s"] > 0 for r in rows)
        ((workers, threads),) = condition["default_chose"]  # read back from the run's manifest
        assert 1 <= threads <= result["cores"] and workers + threads <= result["cores"]
        assert f"({workers}, {threads})" in text
        line = next(line for line in text.splitlines() if "default within 1.2x of the best" in line)
        verdict = line.split()[-2] if line.endswith(")") else line.split()[-1]  # "NO (1.2031)": a ratio shown as 1.20
        assert verdict == ("yes" if condition["default_over_best"] <= 1.2 else "NO")  # the verdict of the ratio


def _unfinish(out, shard: int) -> None:
    """The cache as an interrupted run leaves it: not complete, `shard` not written."""
    group = zarr.open_group(out, mode="r+")
    group.attrs["dogmacache"] = {**dict(group.attrs["dogmacache"]), "complete": False, "shards": []}
    group["shard_sha256"][shard] = np.zeros(32, dtype=np.uint8)


def _set_begun(out, threads: int) -> None:
    """The cache as if begun with `threads` torch threads."""
    group = zarr.open_group(out, mode="r+")
    group.attrs["dogmacache"] = {
        **dict(group.attrs["dogmacache"]),
        "config": {**_recorded(out), "torch_threads": threads},
    }


def test_a_resume_on_the_cpu_takes_the_threads_the_cache_was_begun_with(proteins, tmp_path, idle_two_cores, capsys):
    """Begun at 1 thread (as a busy machine gives), resumed on an idle one with nothing chosen: 1 thread again, said
    with the resume (that its bytes then match an uninterrupted run's is test_embed_layers.py's, on a model whose
    bytes differ at 1 and 2 threads). A count the user chooses wins, and the manifest records it (`resumed_with`); a
    count above the cores here falls back to the plan and says the new shards may differ by float rounding."""
    from dogmacache.embed import runner

    used = idle_two_cores(runner)
    out = tmp_path / "begun.zarr"
    run_embed(_config(proteins, out, torch_threads=1, shard_items=1))
    _unfinish(out, 1)
    capsys.readouterr()
    run_embed(_config(proteins, out, shard_items=1))
    assert used[-1] == 1
    said = capsys.readouterr().out
    assert "shards already written; torch threads: 1, as the cache was begun with, so that its shards match" in said
    _unfinish(out, 2)
    run_embed(_config(proteins, out, torch_threads=2, shard_items=1))  # chosen: taken as it is, and recorded
    said = capsys.readouterr().out
    assert used[-1] == 2 and "continued with {'torch_threads': 2}, begun with {'torch_threads': 1}" in said
    _set_begun(out, 8)
    _unfinish(out, 0)
    run_embed(_config(proteins, out, shard_items=1))
    assert used[-1] == 2
    said = capsys.readouterr().out
    assert "begun with 8 torch threads, more than the 2 cores this process may use; the new shards may" in said


def test_a_cache_stopped_before_its_first_shard_is_this_runs_alone(proteins, tmp_path, idle_two_cores, capsys):
    """No shard written: no rows to match, so the run chooses its threads afresh (2 on idle cores, not the 1 the
    cache was begun with) and the manifest records this run's settings, with no `resumed_with`; a cache so finished
    is a --reuse source like any other."""
    from dogmacache.embed import runner

    used = idle_two_cores(runner)
    out = tmp_path / "begun.zarr"
    run_embed(_config(proteins, out, torch_threads=1, num_workers=1, shard_items=1))
    n_shards = open_cache(out).manifest.n_shards
    for shard in range(n_shards):
        _unfinish(out, shard)
    run_embed(_config(proteins, out, shard_items=1))
    assert used[-1] == 2
    config = open_cache(out).manifest.config
    assert config["torch_threads"] == 2 and "resumed_with" not in config
    assert config["num_workers"] == 0  # this run's plan, not the stopped run's
    for shard in range(n_shards):
        _unfinish(out, shard)
    run_embed(_config(proteins, out, torch_threads=1, max_batch=3, shard_items=1))  # chosen, over nothing begun
    config = open_cache(out).manifest.config
    assert (config["torch_threads"], config["max_batch"]) == (1, 3) and "resumed_with" not in config
    for shard in range(n_shards):
        _unfinish(out, shard)
    run_embed(_config(proteins, out, torch_threads=1, max_batch=3, num_workers=1, shard_items=1))  # workers alone
    assert open_cache(out).manifest.config["num_workers"] == 1
    assert "continued with" not in capsys.readouterr().out


def test_a_layers_resume_takes_one_count_for_every_cache(proteins, tmp_path, idle_two_cores, capsys):
    """--layers finishes all its caches in one pass at one thread count: the one the unfinished caches were begun
    with, also for a layer cache begun anew beside them, and said once; caches begun with different counts fall
    back to the plan and say so."""
    from dogmacache.embed import layers as layers_module
    from dogmacache.embed.layers import layer_out, run_embed_layers

    used = idle_two_cores(layers_module)
    base = str(tmp_path / "c")
    first, last = layer_out(base, "1"), layer_out(base, "-1")
    run_embed_layers(_config(proteins, base, torch_threads=1, shard_items=1), ["1"])  # the first layer's alone
    _unfinish(first, 1)
    capsys.readouterr()
    run_embed_layers(_config(proteins, base, shard_items=1), ["1", "-1"])  # "-1": begun now
    said = capsys.readouterr().out
    assert used[-1] == 1 and said.count("as the cache was begun with") == 1
    assert _recorded(last)["torch_threads"] == 1  # the new cache records what it ran at
    _set_begun(last, 2)
    _unfinish(first, 0)
    _unfinish(last, 2)
    run_embed_layers(_config(proteins, base, shard_items=1), ["1", "-1"])
    assert used[-1] == 2 and "were begun with different torch thread counts" in capsys.readouterr().out


def test_a_quota_on_the_process_own_nested_cgroup_is_found(tmp_path):
    """A cgroup-v2 host without a namespace: the quota sits on the process's own cgroup (a systemd scope with
    CPUQuota), named in /proc/self/cgroup, not at the mount's top; the smallest quota on the way up counts. A
    cgroup v1 cpu controller's nested path likewise; a path that is not under the mount (a namespaced container
    names its own root) leaves the top's quota."""
    v2_root = tmp_path / "v2"
    (v2_root / "user.slice" / "run-job.scope").mkdir(parents=True)
    (v2_root / "user.slice" / "cpu.max").write_text("300000 100000\n")
    (v2_root / "user.slice" / "run-job.scope" / "cpu.max").write_text("100000 100000\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/user.slice/run-job.scope\n")
    assert cgroup_cpu_limit(v2_root, proc) == 1.0
    assert cgroup_cpu_limit(v2_root, tmp_path / "no-proc-file") is None  # the top has no cpu.max
    v1_root = tmp_path / "v1"
    (v1_root / "cpu,cpuacct" / "docker" / "abc").mkdir(parents=True)
    (v1_root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us").write_text("150000\n")
    (v1_root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us").write_text("100000\n")
    proc.write_text("4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n")
    assert cgroup_cpu_limit(v1_root, proc) == 1.5
    (tmp_path / "ns").mkdir()
    namespaced = v2(tmp_path / "ns", "200000 100000\n")
    proc.write_text("0::/\n")
    assert cgroup_cpu_limit(namespaced, proc) == 2.0


def test_an_external_dask_scheduler_says_whose_cores_planned_the_workers_threads(
    proteins, tmp_path, monkeypatch, capsys
):
    from dogmacache.embed import distributed

    monkeypatch.setattr(distributed, "_fan_out", lambda *args: {"items": 0})  # no scheduler to reach here
    distributed.run_embed_dask(_config(proteins, tmp_path / "c.zarr"), scheduler="tcp://127.0.0.1:9")
    said = capsys.readouterr().out
    assert "--dask-scheduler: each worker runs" in said and "pass --threads N to set it for theirs" in said
    distributed.run_embed_dask(_config(proteins, tmp_path / "d.zarr", torch_threads=1), scheduler="tcp://127.0.0.1:9")
    assert "--dask-scheduler" not in capsys.readouterr().out  # a count chosen: nothing to say
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    distributed.run_embed_dask(_config(proteins, tmp_path / "e.zarr"), scheduler="tcp://127.0.0.1:9")
    assert "--dask-scheduler" not in capsys.readouterr().out  # OMP_NUM_THREADS chose it, not this machine's cores
    monkeypatch.delenv("OMP_NUM_THREADS")
    run_embed(_config(proteins, tmp_path / "f.zarr", shard_items=1))
    _set_begun(tmp_path / "f.zarr", 64)  # begun with more threads than this machine's cores: the plan decides
    _unfinish(tmp_path / "f.zarr", 0)
    distributed.run_embed_dask(_config(proteins, tmp_path / "f.zarr", shard_items=1), scheduler="tcp://127.0.0.1:9")
    assert "--dask-scheduler: each worker runs" in capsys.readouterr().out


def test_odd_proc_cgroup_lines_are_read_without_error(tmp_path):
    """A cgroup name that is not UTF-8, a path climbing above the mount, lines of other controllers: no error, and
    nothing outside the mount is read."""
    root = tmp_path / "root"
    (root / "caf\udce9.scope").mkdir(parents=True)
    (root / "caf\udce9.scope" / "cpu.max").write_text("200000 100000\n")
    (tmp_path / "cpu.max").write_text("100000 100000\n")  # above the mount: must not count
    proc = tmp_path / "cgroup"
    proc.write_bytes(b"0::/caf\xe9.scope\n9:memory:/x\n")
    assert cgroup_cpu_limit(root, proc) == 2.0
    proc.write_bytes(b"0::/../\n")
    assert cgroup_cpu_limit(root, proc) is None
    (root / "foo").mkdir()
    (root / "foo" / "cpu.max").write_text("50000 100000\n")  # a cgroup of the same name under the mount
    proc.write_bytes(b"0::/../foo\n")  # outside this namespace's root: not that one
    assert cgroup_cpu_limit(root, proc) is None
