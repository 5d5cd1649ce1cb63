"""What `dogmacache bench` prints and saves: the machine each section ran on (and whether other processes kept
it busy), numbers formatted to about 3 significant figures, tables as text and markdown, and the per-section
JSON records with the `summary.md` built from them.

A table is a dict {title, columns, rows (formatted strings), notes}; a record is the dict saved as
`<section>.json`: {section, seconds, machine, options, results}.

CPU timings are only as good as the machine is idle: torch's OpenMP threads spin-wait against other busy
processes (a tiny CDT step went from 7 ms to 0.7 s under one competing process on 2 cores). Each section
records the load average and how busy the cores were just before it starts, and says so when they were.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dogmacache.contracts.provenance import package_versions
from dogmacache.devices import CoreWatch, affinity

BUSY_WARNING = 0.2  # share of the CPUs this process may run on that other processes keep busy at a section's start

Table = dict[str, Any]
TablesFor = Callable[[dict[str, Any]], list[Table]]  # a section's results -> its tables


# ---- the machine -------------------------------------------------------------------------------------------
def cpu_busy_fraction(interval: float = 0.5) -> float | None:
    """Share of the CPUs this process may run on that other processes kept busy during `interval` seconds
    (`devices.CoreWatch`)."""
    watch = CoreWatch()
    busy = watch.busy(interval)
    return None if busy is None else busy / watch.watched


def machine_info() -> dict[str, Any]:
    """CPU model and cores, load and busy cores right now, torch and CUDA, package versions."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    cuda = torch.cuda.is_available()
    info: dict[str, Any] = {
        "time_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu,
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(affinity()),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],  # 1, 5, 15 minutes
        "cpu_busy_others_at_start": cpu_busy_fraction(),  # share of the CPUs it may run on, over 0.5 s
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name() if cuda else None,
        "platform": platform.platform(),
        "versions": package_versions(),
    }
    if cuda:
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info |= {
            "cuda_runtime": torch.version.cuda,
            "cuda_capability": f"{props.major}.{props.minor}",
            "cuda_memory_gb": round(props.total_memory / 1e9, 1),
        }
    return info


def machine_line(info: dict[str, Any]) -> str:
    busy = info.get("cpu_busy_others_at_start")
    load = info["load_average_at_start"]
    line = (
        f"{info['time_utc']}, {info['cpu_model']}, {info['cpu_cores_usable']} cores, torch {info['torch']} "
        f"(threads: {info['torch_threads']}), load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
    )
    if busy is not None:
        line += f", other processes busy on {busy:.0%} of the cores at start"
    if info.get("cuda_device"):
        line += f"; GPU {info['cuda_device']} ({info.get('cuda_memory_gb')} GB, CUDA {info.get('cuda_runtime')})"
    return line


def busy_warning(info: dict[str, Any]) -> str | None:
    busy = info.get("cpu_busy_others_at_start")
    if busy is None or busy < BUSY_WARNING:
        return None
    advice = "rerun on an idle machine" + (
        ", or with --threads 1 to see the difference" if info.get("torch_threads", 1) > 1 else ""
    )
    return (
        f"note: other processes kept {busy:.0%} of the {info['cpu_cores_usable']} cores busy at the start of this "
        "section; torch's threads contend with them and CPU timings can come out many times slower: "
        f"{advice}."
    )


# ---- number formatting and tables --------------------------------------------------------------------------
def fmt(value: Any) -> str:
    """Numbers to about 3 significant figures (thousands separated), integers whole; None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    if magnitude >= 1e-3 or value == 0:
        return f"{value:.3g}"
    return f"{value:.2e}"


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def verdict(
    value: float | None, target: float, higher_is_better: bool = True, applies: bool = True, percent: bool = False
) -> str:
    """ "yes" / "NO" against `target`; "n/a" where the target does not apply to the run (`mfu.target_scope`). The
    value itself is judged, never its rounding; where the table's rounding (`fmt`, or `pct` with `percent`) would
    show a missed target as met (7.9993 prints as 8.00, 0.010049 as 0.01), the verdict gives the value to 5
    significant figures beside its "NO"."""
    if not applies:
        return "n/a"
    if value is None:
        return "–"
    if value >= target if higher_is_better else value <= target:
        return "yes"
    shown = round(100 * value) / 100 if percent else as_printed(value)
    looks_met = shown >= target if higher_is_better else shown <= target
    return f"NO ({100 * value:.5g}%)" if looks_met and percent else f"NO ({value:.5g})" if looks_met else "NO"


def as_printed(value: float) -> float:
    """`value` rounded as `fmt` prints it."""
    if isinstance(value, int):
        return value
    try:
        return float(fmt(value).replace(",", ""))
    except ValueError:
        return value


def table(title: str, columns: list[str], rows: list[list[Any]], notes: list[str] | None = None) -> Table:
    return {
        "title": title,
        "columns": columns,
        "rows": [[fmt(c) for c in row] for row in rows],
        "notes": notes or [],
    }


def render_text(t: Table) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(t["columns"], *t["rows"], strict=True)]
    lines = [t["title"]]
    lines.append("  " + "  ".join(str(c).ljust(w) for c, w in zip(t["columns"], widths, strict=True)).rstrip())
    lines.append("  " + "  ".join("-" * w for w in widths))
    for row in t["rows"]:
        lines.append("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    lines += [f"  {note}" for note in t["notes"]]
    return "\n".join(lines)


def render_markdown(t: Table) -> str:
    lines = [
        f"**{t['title']}**",
        "",
        "| " + " | ".join(t["columns"]) + " |",
        "|" + "---|" * len(t["columns"]),
    ]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in t["rows"]]
    lines += [f"\n{note}" for note in t["notes"]]
    return "\n".join(lines)


# ---- records and the summary -------------------------------------------------------------------------------
def record_tables(record: dict[str, Any], tables_for: Mapping[str, TablesFor]) -> list[Table]:
    """The tables of one section's record; none for a section that failed."""
    results = record["results"]
    return [] if "error" in results else tables_for[record["section"]](results)


def write_record(folder: Path, record: dict[str, Any]) -> Path:
    """`record` as `folder/<section>.json` (values JSON cannot hold, such as paths, as strings)."""
    path = folder / f"{record['section']}.json"
    path.write_text(json.dumps(record, indent=2, default=str))
    return path


def summary_markdown(folder: Path, tables_for: Mapping[str, TablesFor]) -> str:
    """Every `<section>.json` in `folder` (this run's and earlier ones), in the order of `tables_for`, as
    markdown tables."""
    lines = ["# dogmacache bench", ""]
    for name in tables_for:
        path = folder / f"{name}.json"
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        lines += [f"## {name}", "", f"Measured {machine_line(record['machine'])}; {record['seconds']:.0f} s."]
        warning = busy_warning(record["machine"])
        if warning:
            lines.append(f"\n_{warning}_")
        lines.append("")
        if "error" in record["results"]:
            lines.append(f"failed: {record['results']['error']}\n")
        lines += [render_markdown(t) + "\n" for t in record_tables(record, tables_for)]
    return "\n".join(lines)
