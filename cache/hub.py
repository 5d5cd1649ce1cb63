"""Sharing caches on the Hugging Face Hub: a dataset repository per folder of caches, with a generated
dataset card (YAML metadata + provenance of each cache), resumable large uploads, and `pull` that verifies.

A folder to publish is either one cache (its root holds the manifest) or a folder of caches (one per
subfolder); the card lists every cache it finds. Readers can also train straight from `hf://datasets/...`.
Nothing uploaded names this machine's files: the card and the uploaded copy of each manifest (the root
`zarr.json`) show a model given as a local folder by its name and weights revision, and every absolute
path in a config by its file name (`portable`); the local caches are not changed.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dogmacache.cache import layout
from dogmacache.cache.manifest import MANIFEST_KEY, Manifest, describe_fidelity, describe_reused
from dogmacache.cache.reader import damaged_metadata, open_cache
from dogmacache.cache.verify import verify_cache
from dogmacache.errors import CacheError

CARD_NAME = "README.md"


@dataclass(frozen=True)
class FoundCache:
    relpath: str  # "." for a cache at the folder's root
    manifest: Manifest


def is_cache_folder(path: Path) -> bool:
    """Whether `path` holds a cache's group (a zarr.json with a manifest), read as JSON, without opening it."""
    if not (path / "zarr.json").is_file():
        return False
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except ValueError as err:  # not JSON, or not UTF-8
        fix = "copy or pull the cache again, or re-create it (or move that folder out of the way)"
        raise damaged_metadata(str(path), "", err, fix) from None
    return isinstance(meta, dict) and "dogmacache" in (meta.get("attributes") or {})


def find_caches(folder: Path, root: bool = True) -> list[FoundCache]:
    """Caches in `folder`: the folder itself (unless not `root`), or its immediate subfolders."""
    candidates = [folder] if root else []
    candidates += sorted(  # not a creation's or an --overwrite's folder (`layout.STAGED_PREFIX`): no cache yet
        p
        for p in folder.iterdir()
        if p.is_dir() and not p.name.startswith(layout.STAGED_PREFIX) and (p / "zarr.json").is_file()
    )
    found = []
    for path in candidates:
        if not is_cache_folder(path):
            continue
        cache = open_cache(path, allow_partial=True)
        found.append(FoundCache(os.path.relpath(path, folder), cache.manifest))
        if path == folder:
            break  # a cache's own subfolders are its arrays
    return found


_ABSOLUTE = re.compile(r"^(/|~|file://|[A-Za-z]:[\\/]|\.\.?[\\/]|\\\\)")  # absolute, ./ ../ relative, UNC


def _portable_value(value: Any) -> Any:
    if isinstance(value, str) and (_ABSOLUTE.match(value) or ".." in value.replace("\\", "/").split("/")):
        return Path(value.removeprefix("file://").replace("\\", "/").rstrip("/")).name
    if isinstance(value, dict):
        return {k: _portable_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_portable_value(v) for v in value]
    return value


def portable(manifest: Manifest) -> Manifest:
    """The manifest as published: absolute local paths (the model folder, config paths) become file names."""
    return dataclasses.replace(manifest, model=_portable_value(manifest.model), config=_portable_value(manifest.config))


def _size_category(n: int) -> str:
    for limit, name in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < limit:
            return name
    return "1M<n<10M"


def dataset_card(repo: str, caches: list[FoundCache], license_id: str = "other") -> str:
    """The README.md the Hub shows: YAML metadata, what each cache holds, how it was made, how to read it."""
    caches = [FoundCache(c.relpath, portable(c.manifest)) for c in caches]
    n_max = max(c.manifest.n_items for c in caches)
    tags = sorted({"biology", "embeddings", "zarr", "dogmacache"} | {c.manifest.modality for c in caches})
    lines = ["---", f"license: {license_id}", "tags:"] + [f"- {t}" for t in tags]
    lines += [
        "size_categories:",
        f"- {_size_category(n_max)}",
        f"pretty_name: {repo.split('/')[-1]}",
        "---",
        "",
    ]
    lines += [
        f"# {repo}",
        "",
        "Frozen foundation-model embeddings written by dogmacache: one Zarr v3 group per cache, array `embeddings` "
        "(one item per chunk, items sharded), `ids` (the join key), and the manifest in the root attribute "
        "`dogmacache`. Train from them without a GPU and without the foundation models.",
        "",
        "| cache | modality | model | revision | layer | pooling | items | item shape | dtype |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in caches:
        m = c.manifest
        lines.append(
            f"| `{c.relpath}` | {m.modality} | {m.model} | {m.model_revision} | {m.layer} | {m.pooling} | "
            f"{m.n_items:,} | {tuple(m.item_shape)} | {m.dtype} |"
        )
    lines += ["", "## Provenance", ""]
    for c in caches:
        m = c.manifest
        versions = ", ".join(f"{k} {v}" for k, v in sorted(m.created_by.items()))
        lines += [
            f"### `{c.relpath}`",
            "",
            f"- input digest: `{m.input_digest}`",
            f"- created: {m.created_at} with {versions}",
            f"- shards: {m.n_shards} of {m.shard_items} items, compression {m.compression}, complete: {m.complete}",
            f"- fidelity: {describe_fidelity(m.fidelity)}",
            *[f"- reused: {line}" for line in describe_reused(m.reused)],
            f"- config: `{json.dumps(m.config, sort_keys=True)}`",
            "",
        ]
    first = caches[0].relpath
    sub = "" if first == "." else f"/{first}"
    lines += [
        "## Reading",
        "",
        "```python",
        "import zarr  # plain zarr, no dogmacache needed",
        f'g = zarr.open_group("hf://datasets/{repo}{sub}", mode="r")',
        'x, ids = g["embeddings"][0], g["ids"][:]',
        *(
            [
                "# bfloat16 caches store their bits as uint16 (zarr v3 has no bfloat16): view them as bfloat16",
                "import ml_dtypes; x = x.view(ml_dtypes.bfloat16)",
            ]
            if caches[0].manifest.dtype == "bfloat16"  # the cache the snippet opens
            else []
        ),
        "",
        "from dogmacache.cache import open_cache  # lookup by id, manifest checks",
        f'cache = open_cache("hf://datasets/{repo}{sub}")',
        "```",
        "",
        *(
            [
                "bfloat16 caches here ("
                + ", ".join(f"`{c.relpath}`" for c in caches if c.manifest.dtype == "bfloat16")
                + "): plain zarr returns their bits as uint16; view them with `.view(ml_dtypes.bfloat16)`.",
                "",
            ]
            if any(c.manifest.dtype == "bfloat16" for c in caches)
            else []
        ),
        "`dogmacache cache pull " + repo + " DIR` downloads and verifies every shard checksum.",
        "",
    ]
    return "\n".join(lines)


# files of a cache folder that are no part of a cache: writer locks, shard notes, the temporary file of a shard
# write a kill stopped (`shards._write_file`), and huggingface_hub's own upload records (`.cache/huggingface`, which
# `upload_large_folder` writes into the folder it sends and never uploads); neither uploaded nor counted
NOT_UPLOADED = ("*.lock", f"*{layout.SHARD_NOTES}*", "*.partial", f"*{layout.STAGED_PREFIX}*", ".cache")


def check_hub_limits(folder: Path, caches: list[FoundCache] | None = None) -> tuple[int, int]:
    """(files, bytes) to upload, or a CacheError naming the Hub limit a folder would break. With `caches` (those
    the card lists), also a CacheError for a folder the upload would send unchecked or leave out: a cache deeper
    than the folder's subfolders (neither verified nor made portable) or a symbolic link to a folder (the upload
    does not follow it)."""
    listed = None if caches is None else {os.path.normpath(c.relpath) for c in caches}
    n_files, n_bytes = 0, 0
    for root, dirs, all_files in os.walk(folder):
        dirs[:] = [d for d in dirs if not any(fnmatch.fnmatch(d, p) for p in NOT_UPLOADED)]
        files = [f for f in all_files if not any(fnmatch.fnmatch(f, p) for p in NOT_UPLOADED)]
        if listed is not None:
            linked = [d for d in dirs if os.path.islink(os.path.join(root, d))]
            if linked:
                where = os.path.join(root, linked[0])
                raise CacheError(
                    f"{where} is a symbolic link to {os.path.realpath(where)}; the upload does not follow links: copy "
                    f"that folder into {folder}, or publish it on its own"
                )
            relative = os.path.normpath(os.path.relpath(root, folder))
            if "zarr.json" in files and relative not in listed and is_cache_folder(Path(root)):
                raise CacheError(
                    f"{root} is a cache below a subfolder of {folder}; publish takes a cache or a folder of caches "
                    "one level down: move it up a level, or publish its folder on its own"
                )
        if len(dirs) + len(files) > layout.HUB_MAX_FOLDER_ENTRIES:
            raise CacheError(
                f"{root} has {len(dirs) + len(files)} entries; the Hub takes < {layout.HUB_MAX_FOLDER_ENTRIES}"
            )
        for name in files:
            size = os.path.getsize(os.path.join(root, name))
            if size >= layout.HUB_MAX_FILE_BYTES:
                raise CacheError(f"{os.path.join(root, name)} is {size:,} bytes; the Hub takes files < 20 GB")
            n_files, n_bytes = n_files + 1, n_bytes + size
    if n_files >= layout.HUB_MAX_FILES:
        raise CacheError(f"{folder} holds {n_files} files; a Hub repository takes < {layout.HUB_MAX_FILES}")
    return n_files, n_bytes


def plan_publish(
    folder: str | os.PathLike, repo: str, license_id: str = "other"
) -> tuple[list[FoundCache], str, int, int]:
    """Everything `publish` checks before it sends anything: caches found and complete, limits, the card."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CacheError(f"{folder} is not a directory; pass the cache (or folder of caches) to publish")
    check_repo_id(repo)
    caches = find_caches(folder)
    if not caches:
        raise CacheError(f"{folder} holds no dogmacache cache (neither it nor a subfolder has a manifest)")
    unfinished = [c.relpath for c in caches if not c.manifest.complete]
    if unfinished:
        raise CacheError(f"caches {unfinished} in {folder} are not complete; finish them before publishing")
    n_files, n_bytes = check_hub_limits(folder, caches)
    return caches, dataset_card(repo, caches, license_id), n_files, n_bytes


def publish(
    folder: str | os.PathLike, repo: str, *, license_id: str = "other", private: bool = False, verify: bool = True
) -> str:
    """Verify, create the dataset repo, upload (resumable: re-run after an interruption), then the card."""
    import huggingface_hub

    folder = Path(folder)
    caches, card, _, _ = plan_publish(folder, repo, license_id)
    if huggingface_hub.get_token() is None:  # HF_TOKEN or the file `huggingface-cli login` writes
        raise CacheError(f"no Hugging Face token found to publish dataset repo {repo}: {_LOGIN}, then re-run")
    if verify:
        for c in caches:
            report = verify_cache(folder / c.relpath)
            if not report.ok:
                raise CacheError(f"{folder / c.relpath} fails verification: {report.problems[0]}")
    try:
        _send(huggingface_hub.HfApi(), folder, repo, caches, card, private)
    except OSError as err:  # the Hub's and requests' errors are OSErrors; a local file's stays as it is
        problem = _hub_error(err, repo, "publish to")
        if problem is None:
            raise
        raise problem from err
    return f"https://huggingface.co/datasets/{repo}"


def _send(api: Any, folder: Path, repo: str, caches: list[FoundCache], card: str, private: bool) -> None:
    """One commit of every manifest marked unfinished (over an earlier publish's, which would otherwise stand before
    the new shards until the end) with the card marked in progress, then every other file (resumable), then one
    commit of every manifest as it is with the card: a publish stopped anywhere leaves a repository whose caches
    read as unfinished under a card that says so, or as the new ones under their own card."""
    # private=None: a new repository takes its owner's default visibility (the Hub ignores it for an existing one)
    api.create_repo(repo, repo_type="dataset", private=True if private else None, exist_ok=True)
    roots = [_in_repo(c.relpath, "zarr.json") for c in caches]
    _refuse_lingering(api, folder, repo)
    groups = [json.loads((folder / root).read_text()) for root in roots]  # each root zarr.json, read once

    def manifests(complete: bool) -> dict[str, bytes]:  # each as published: without local paths
        return {
            root: _manifest_bytes(meta, portable(c.manifest), complete)
            for c, root, meta in zip(caches, roots, groups, strict=True)
        }

    # the card goes to the repository only: inside the Zarr group it would be a stray member
    _commit(api, repo, {**manifests(False), CARD_NAME: _in_progress(card).encode()}, "publish begun: unfinished")
    api.upload_large_folder(
        repo_id=repo,
        folder_path=str(folder),
        repo_type="dataset",
        ignore_patterns=[*map(_literal, roots), *NOT_UPLOADED],
    )
    _commit(api, repo, {**manifests(True), CARD_NAME: card.encode()}, "manifests and dataset card")


def _commit(api: Any, repo: str, files: dict[str, bytes], message: str) -> None:
    """`files` (path in the repository -> bytes) in one commit: the Hub shows all of them or none."""
    from huggingface_hub import CommitOperationAdd

    operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=data) for path, data in files.items()]
    api.create_commit(repo_id=repo, repo_type="dataset", operations=operations, commit_message=message)


IN_PROGRESS = (
    "> **A publish of this repository is in progress or was stopped midway**: its caches read as unfinished "
    "(`dogmacache cache pull` refuses them) until it ends, and the table below is what it will hold."
)


def _in_progress(card: str) -> str:
    """`card` with the IN_PROGRESS note after its YAML metadata."""
    head, sep, body = card.partition("\n---\n")
    return f"{head}{sep}\n{IN_PROGRESS}\n{body}" if sep else f"{IN_PROGRESS}\n\n{card}"


def _literal(path: str) -> str:
    """`path` as a pattern that matches only itself (the upload's ignore patterns are fnmatch patterns, in which a
    folder named `dna[v2].zarr` would match other names and not its own)."""
    return re.sub(r"([\[\]*?])", r"[\1]", path)


def _refuse_lingering(api: Any, folder: Path, repo: str) -> None:
    """CacheError where the repository holds Zarr metadata (a cache, or an array) that this publish would neither
    send nor replace: an upload adds and replaces files, never deletes, so a cache left out of the folder, or one at
    the repository's top level beside a folder of caches, would stay there and be pulled as if published with the
    rest. Checked before anything is sent."""
    sent = {p.relative_to(folder).as_posix() for p in folder.rglob("zarr.json")}
    there = {f for f in api.list_repo_files(repo_id=repo, repo_type="dataset") if f.endswith("zarr.json")}
    lingering = sorted(there - sent, key=lambda f: (f.count("/"), f))  # a cache's own metadata first
    if lingering:
        shown = ", ".join(lingering[:4]) + (f" and {len(lingering) - 4} more" if len(lingering) > 4 else "")
        raise CacheError(
            f"dataset repo {repo} holds Zarr metadata {folder} lacks ({shown}: a cache, or an array of one): a "
            "publish adds and replaces files, never deletes them, so they would stay beside this one; delete them "
            "on the Hub first (the repo's Files page, or HfApi().delete_folder), or publish to another repo"
        )


def _manifest_bytes(meta: dict, manifest: Manifest, complete: bool) -> bytes:
    """A cache's root zarr.json (`meta`) with `manifest` as its manifest, marked complete or not."""
    group = {**meta, "attributes": {**meta["attributes"], MANIFEST_KEY: {**manifest.to_dict(), "complete": complete}}}
    return json.dumps(group, indent=2).encode()


_LOGIN = "log in with `huggingface-cli login` (or set HF_TOKEN)"
_UNREACHABLE = {"ConnectionError", "ConnectError", "Timeout", "TimeoutException", "LocalEntryNotFoundError"}


def _hub_error(err: OSError, repo: str, action: str, revision: str | None = None) -> CacheError | None:
    """One line for a failed Hub call: the repo, what went wrong and what to do; None for a local file error."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalTokenNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"dataset repo {repo}"
    again = "re-run: the upload resumes where it stopped" if action == "publish to" else "re-run the pull"
    if isinstance(err, LocalTokenNotFoundError):
        return CacheError(f"no Hugging Face token found to {action} {where}: {_LOGIN}, then re-run")
    if {cls.__name__ for cls in type(err).__mro__} & _UNREACHABLE:  # requests', httpx' or the Hub's offline error
        return CacheError(
            f"cannot reach the Hugging Face Hub to {action} {where} ({type(err).__name__}); "
            f"check the network (and any proxy or HF_ENDPOINT), then {again}"
        )
    if isinstance(err, GatedRepoError):
        return CacheError(f"{where} is gated: accept its terms on its Hub page, {_LOGIN} and {again}")
    if isinstance(err, RevisionNotFoundError):
        return CacheError(f"{where} has no revision {revision!r}; check --revision (a branch, tag or commit)")
    if isinstance(err, RepositoryNotFoundError):
        return CacheError(
            f"{where} was not found on the Hub: check its spelling (OWNER/NAME); a private repo needs a token: {_LOGIN}"
        )
    if isinstance(err, HfHubHTTPError):
        status = getattr(err.response, "status_code", None)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if status in (401, 403):
            may = f"write to {repo.split('/')[0]}" if action == "publish to" else "read it"
            return CacheError(
                f"the Hub refused to let this token {action} {where} (HTTP {status}): {_LOGIN} with a token that "
                f"may {may}, then {again}"
            )
        return CacheError(
            f"the Hub could not {action} {where} ({reason}); check the repo name, a token for a private repo "
            f"({_LOGIN}) and the network, then {again}"
        )
    return None


def _in_repo(relpath: str, name: str) -> str:
    return name if relpath == "." else f"{relpath}/{name}"


def _revision_files(repo: str, revision: str | None) -> set[str]:
    """The paths of the files in `repo` at `revision` (the Hub's listing)."""
    from huggingface_hub import HfApi

    return set(HfApi().list_repo_files(repo_id=repo, repo_type="dataset", revision=revision))


def _refuse_unfinished(dest: Path, repo: str, files: set[str] | None) -> None:
    """CacheError for a pulled manifest (at the top level or one folder down, and in the revision's `files` where
    they are known) that says its publish has not finished, read before the cache is opened: opening checks its
    arrays against the manifest, and a half-sent cache would be blamed on its writer."""
    for meta in sorted([*dest.glob("zarr.json"), *dest.glob("*/zarr.json")]):
        relative = meta.relative_to(dest).as_posix()
        if files is not None and relative not in files:
            continue
        try:
            manifest = (json.loads(meta.read_text()).get("attributes") or {}).get(MANIFEST_KEY)
        except (ValueError, AttributeError):
            continue  # not a manifest pull can read: opening the cache names the problem
        if isinstance(manifest, dict) and manifest.get("complete") is False:
            raise CacheError(
                f"{meta.parent} from {repo} is unfinished: its publish stopped midway or is still running; pull "
                "again later, or ask the publisher to re-run `dogmacache cache publish`"
            )


def check_repo_id(repo: str) -> None:
    """A Hub repository id as OWNER/NAME in the Hub's own rules (`validate_repo_id`), or one line saying how."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    problem = None if repo.count("/") == 1 else "it must be OWNER/NAME"
    if problem is None:
        try:
            validate_repo_id(repo)
        except HFValidationError as err:
            problem = " ".join(str(err).split())
    if problem:
        raise CacheError(
            f"repository {repo!r} is not a Hub repository id ({problem}); give OWNER/NAME, e.g. "
            "my-lab/gasperini-enformer (letters, digits, '-', '_' and '.'; no hf:// or datasets/ prefix)"
        )


def pull(repo: str, dest: str | os.PathLike, *, revision: str | None = None) -> list[str]:
    """Download a dataset repository and verify every cache in it. Returns the verified caches' paths."""
    from huggingface_hub import snapshot_download

    check_repo_id(repo)
    dest = Path(dest)
    # a download never deletes what the revision lacks: zarr.json files already there (not opened: a damaged one
    # is what a pull repairs) mean the caches found afterwards are checked against the revision's file list
    earlier = dest.is_dir() and any([*dest.glob("zarr.json"), *dest.glob("*/zarr.json")])
    try:
        snapshot_download(repo_id=repo, repo_type="dataset", local_dir=str(dest), revision=revision)
        files = _revision_files(repo, revision) if earlier else None
    except OSError as err:
        problem = _hub_error(err, repo, "download", revision)
        if problem is None:
            raise
        raise problem from err
    _refuse_unfinished(dest, repo, files)
    caches = find_caches(dest)
    if is_cache_folder(dest) and (files is None or "zarr.json" in files):  # a top-level cache ends the search
        below = [c for c in find_caches(dest, root=False) if files is None or f"{c.relpath}/zarr.json" in files]
        if below:
            raise CacheError(
                f"dataset repo {repo} holds a cache at its top level and {len(below)} in its folders "
                f"({', '.join(c.relpath for c in below[:3])}): one was left by an earlier publish, and which is "
                "current the repo does not say; ask the publisher to delete the stale one"
            )
    if files is not None:  # only the caches of the revision pulled are verified and reported

        def pulled(c: FoundCache) -> bool:
            return ("zarr.json" if c.relpath == "." else f"{c.relpath}/zarr.json") in files

        stale = [c for c in caches if not pulled(c)]
        if stale:
            print(
                f"{dest} also holds {len(stale)} cache(s) that {repo}"
                f"{'@' + revision if revision else ''} lacks ({', '.join(c.relpath for c in stale[:5])}), left from "
                "an earlier pull or copy: not verified, not reported; pull into an empty folder to have only this one"
            )
        # a stale cache at the folder's root would hide the revision's caches in its subfolders
        caches = [c for c in find_caches(dest, root="zarr.json" in files) if pulled(c)]
    if not caches:
        raise CacheError(
            f"dataset repo {repo} (downloaded to {dest}) holds no dogmacache cache: no Zarr group with a "
            "'dogmacache' manifest at its top level or one folder down; check the repo name"
        )
    verified = []
    for c in caches:
        report = verify_cache(dest / c.relpath)
        if not report.ok and not c.manifest.complete:  # the writer's advice ("re-run it") is not the puller's
            raise CacheError(
                f"{dest / c.relpath} from {repo} is unfinished: its publish stopped midway or is still running; "
                f"pull again later, or ask the publisher to re-run `dogmacache cache publish`"
            )
        if not report.ok:
            raise CacheError(f"{dest / c.relpath} from {repo} fails verification: {report.problems[0]}")
        verified.append(str(dest / c.relpath))
    return verified
