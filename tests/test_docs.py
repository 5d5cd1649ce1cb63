"""Citations of the project's own docs: no tracked file points at material users do not have (an outside facts
file or a numbered paper extract), and every `docs/<file>.md#<anchor>` cited anywhere names an existing file with
a heading whose GitHub-style anchor matches."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "__pycache__", "node_modules", "build", "dist", ".pytest_cache", ".ruff_cache"}

# Citations of files outside the repository: the facts file by name or section, and the numbered paper extracts.
OUTSIDE_CITATION = re.compile(r"REFERENCE(\.md|\s+(section|§)|\s+\d)|seeds/00\d")
# A cited doc section anywhere in the tree, e.g. docs/papers.md#cdt-training-recipe
DOC_CITATION = re.compile(r"docs/([\w./-]+?\.md)#([\w-]+)")
# A relative markdown link from one doc to another, e.g. (formats.md#zarr-read-cost)
DOC_LINK = re.compile(r"\]\(([\w./-]+?\.md)#([\w-]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")


def tracked_files() -> list[Path]:
    """Files git tracks under ROOT; a walk of the tree (build and cache folders left out) where git is missing."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True).stdout
        return [ROOT / name for name in out.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        found = []
        for folder, dirs, files in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
            found.extend(Path(folder) / f for f in files)
        return found


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces -> '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every heading anchor of a markdown text, duplicates numbered as GitHub does (name, name-1, ...)."""
    seen: dict[str, int] = {}
    found = set()
    in_fence = False
    for line in markdown.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        match = None if in_fence else HEADING.match(line)
        if match:
            base = github_anchor(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def outside_citations(files: list[Path]) -> list[str]:
    bad = []
    for path in files:
        text = read_text(path)
        for number, line in enumerate((text or "").splitlines(), 1):
            if OUTSIDE_CITATION.search(line):
                bad.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    return bad


def broken_doc_citations(files: list[Path]) -> list[str]:
    """'file:line: target' for each cited docs/<file>.md#<anchor> or doc-to-doc link that resolves to nothing."""
    cache: dict[Path, set[str] | None] = {}
    bad = []
    for path in files:
        text = read_text(path)
        if text is None:
            continue
        in_docs = path.parent.name == "docs" or "docs" in path.relative_to(ROOT).parts[:-1]
        for number, line in enumerate(text.splitlines(), 1):
            targets = [(ROOT / "docs" / name, anchor) for name, anchor in DOC_CITATION.findall(line)]
            if in_docs and path.suffix == ".md":
                targets += [(path.parent / name, anchor) for name, anchor in DOC_LINK.findall(line)]
            for doc, anchor in targets:
                doc = doc.resolve()
                if doc not in cache:
                    content = read_text(doc) if doc.is_file() else None
                    cache[doc] = None if content is None else anchors(content)
                if cache[doc] is None or anchor not in cache[doc]:
                    bad.append(f"{path.relative_to(ROOT)}:{number}: {doc.name}#{anchor}")
    return bad


def test_no_citation_of_files_outside_the_repository():
    bad = outside_citations(tracked_files())
    assert not bad, "cite the docs/ section that states the fact instead:\n" + "\n".join(bad)


def test_every_cited_doc_section_exists():
    files = tracked_files()
    assert any(DOC_CITATION.search(read_text(f) or "") for f in files)  # the tree does cite its docs
    bad = broken_doc_citations(files)
    assert not bad, "no such doc file or heading anchor:\n" + "\n".join(bad)


def test_github_anchors():
    assert github_anchor("CDT training recipe") == "cdt-training-recipe"
    assert github_anchor("CDT authors' files") == "cdt-authors-files"
    assert github_anchor("Bio-DTA") == "bio-dta"
    assert (
        github_anchor("`gtex`: isoform expression (IsoFormer / CDBridge)")
        == "gtex-isoform-expression-isoformer--cdbridge"
    )
    assert anchors("# A\n```\n# not a heading\n```\n## A\n") == {"a", "a-1"}


def test_checkers_find_bad_citations(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\n## Real part\n\nSee [x](other.md#nothing).\n")
    source, d = tmp_path / "mod.py", "docs/"
    source.write_text(
        f"# {d}guide.md#real-part\n# {d}guide.md#missing-part\n# {d}absent.md#x\n# " + "REFERENCE" + ".md 1\n"
    )
    files = [source, tmp_path / "docs" / "guide.md"]
    assert outside_citations(files) == ["mod.py:4: # " + "REFERENCE" + ".md 1"]
    assert broken_doc_citations(files) == [
        "mod.py:2: guide.md#missing-part",
        "mod.py:3: absent.md#x",
        "docs/guide.md:5: other.md#nothing",
    ]
