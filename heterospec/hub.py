"""Models by name from the Hugging Face Hub: `-hf REPO[:QUANT]` and `Engine.from_pretrained`.

Downloads go through `huggingface_hub` (the `[hf]` extra): its cache, HF_TOKEN, HF_ENDPOINT,
HF_HUB_OFFLINE and progress bars. Nothing here runs unless a model is asked for by name.

Which file: `filename` (a name or a glob, as llama-cpp-python's from_pretrained) when given, else
the GGUF whose name carries the quant tag (llama.cpp's `-hf repo:Q8_0`), else Q4_K_M, else the
first GGUF (llama.cpp's default). Projector files (mmproj) are never chosen. A split GGUF
(`-00001-of-00003.gguf`) is fetched whole and loaded from its first part. A repo already in the
cache loads without the network when the Hub cannot be reached or HF_HUB_OFFLINE=1.
"""
from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path
from typing import Optional, Sequence

DEFAULT_QUANT = "Q4_K_M"
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


class HubError(OSError):
    """A model asked for by name could not be found or fetched; the message says what to do."""


# -- choosing the file (pure logic) ------------------------------------------------------------


def parse_spec(spec: str) -> tuple[str, Optional[str]]:
    """"owner/name[:QUANT]" -> (repo id, quant tag or None)."""
    repo, _, tag = spec.partition(":")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ValueError(f"-hf takes a Hugging Face repository as owner/name[:QUANT], not {spec!r}")
    return repo, tag or None


def _has_tag(name: str, tag: str) -> bool:
    # the tag as a whole part of the name: Q4_K matches "x-Q4_K.gguf", not "x-Q4_K_M.gguf"
    return re.search(rf"(^|[-._/]){re.escape(tag)}([-.]|$)", name, re.IGNORECASE) is not None


def choose_files(files: Sequence[str], repo: str, tag: Optional[str] = None,
                 filename: Optional[str] = None) -> list[str]:
    """The files to fetch from a repo listing, the one to load first. Raises HubError."""
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf") and "mmproj" not in Path(f).name.lower())
    if not ggufs:
        raise HubError(f"{repo} has no GGUF file (heterospec loads GGUF models; look for a '-GGUF' repository)")
    if filename is not None:
        picked = [f for f in ggufs if f == filename or fnmatch.fnmatch(f, filename) or fnmatch.fnmatch(Path(f).name, filename)]
        what = f"matching {filename!r}"
    elif tag is not None:
        picked = [f for f in ggufs if _has_tag(f, tag)]
        what = f"for the quant {tag!r}"
    else:
        picked = [f for f in ggufs if _has_tag(f, DEFAULT_QUANT)] or ggufs[:1]
        what = ""
    if not picked:
        names = sorted({Path(_SPLIT.sub(" (split)", f)).name for f in ggufs})
        raise HubError(f"{repo} has no GGUF {what}; it has: {', '.join(names)}")
    first = next((f for f in picked if not _SPLIT.search(f) or int(_SPLIT.search(f).group(1)) == 1), picked[0])
    groups = {_split_group(f) for f in picked}
    if filename is not None and len(groups) > 1:
        raise HubError(f"{len(groups)} GGUF files of {repo} match {filename!r} ({', '.join(sorted(groups))}); "
                       "name one")
    return _split_parts(first, files)


def _split_group(name: str) -> str:
    return _SPLIT.sub("", name)


def _split_parts(first: str, files: Sequence[str]) -> list[str]:
    """A split GGUF's parts, first part first (all of them must be there); else [first]."""
    m = _SPLIT.search(first)
    if not m:
        return [first]
    total = int(m.group(2))
    stem = first[:m.start()]
    parts = [f"{stem}-{i:05d}-of-{total:05d}.gguf" for i in range(1, total + 1)]
    missing = [p for p in parts if p not in files]
    if missing:
        raise HubError(f"the split GGUF {Path(first).name} lacks {len(missing)} of its {total} parts "
                       f"({Path(missing[0]).name}, ...)")
    return parts


# -- fetching ----------------------------------------------------------------------------------


def _hub():
    try:   # its submodules load lazily: name the ones used
        import huggingface_hub
        import huggingface_hub.constants
        import huggingface_hub.errors
    except ImportError:
        raise HubError("models by name need the Hugging Face extra: pip install 'heterospec[hf]'") from None
    return huggingface_hub


def _endpoint(hub) -> str:
    return os.environ.get("HF_ENDPOINT") or getattr(hub.constants, "ENDPOINT", "https://huggingface.co")


def _explain(e: BaseException, repo: str, hub) -> HubError:
    """The Hub's exceptions, said as what to do."""
    errors = hub.errors
    where = _endpoint(hub)
    if isinstance(e, errors.GatedRepoError):
        return HubError(f"{repo} is gated: accept its terms at {where}/{repo} and set HF_TOKEN to a token "
                        "of that account")
    if isinstance(e, errors.RepositoryNotFoundError):
        return HubError(f"there is no repository {repo} on {where} (check the name; a private one needs HF_TOKEN)")
    if isinstance(e, errors.RevisionNotFoundError):
        return HubError(f"{repo} has no such revision")
    if isinstance(e, (errors.EntryNotFoundError, getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError))):
        return HubError(f"a file of {repo} is missing on {where}: {e}")
    return HubError(f"cannot fetch {repo} from {where} ({type(e).__name__}: {_first_line(e)}); check the network, "
                    "or set HF_HUB_OFFLINE=1 to use the models already in the cache")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def _listing(hub, repo: str) -> tuple[list[str], Optional[Path]]:
    """The repo's files: from the Hub, else (offline, or unreachable) from the cache's snapshot,
    which then holds them (the second element: its folder)."""
    if not hub.constants.HF_HUB_OFFLINE:
        try:
            return hub.HfApi().list_repo_files(repo), None
        except (hub.errors.RepositoryNotFoundError, hub.errors.RevisionNotFoundError) as e:
            raise _explain(e, repo, hub) from None
        except Exception as e:   # no network: the cache may still hold it
            unreachable = e
    else:
        unreachable = None
    try:
        folder = Path(hub.snapshot_download(repo, local_files_only=True))
    except Exception:
        if unreachable is not None:
            raise _explain(unreachable, repo, hub) from None
        raise HubError(f"{repo} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: unset it to download") from None
    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()]
    return files, folder


def fetch(spec_or_repo: str, filename: Optional[str] = None, tag: Optional[str] = None) -> Path:
    """Downloads (or finds in the cache) the GGUF that `spec_or_repo` ("owner/name[:QUANT]")
    names, all its split parts, and returns the path to load. Raises HubError, ValueError."""
    repo, spec_tag = parse_spec(spec_or_repo)
    hub = _hub()
    files, cached = _listing(hub, repo)
    parts = choose_files(files, repo, tag or spec_tag, filename)
    if cached is not None:
        return cached / parts[0]
    paths = []
    for part in parts:
        try:
            paths.append(Path(hub.hf_hub_download(repo, part)))
        except Exception as e:
            raise _explain(e, repo, hub) from None
    return paths[0]
