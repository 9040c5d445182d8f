#!/usr/bin/env python3
"""Fetch the pinned llama.cpp source into third_party/llama.cpp (ignored by git).

The source comes from the llama-cpp-python source distribution named in
llama_cpp.pin, which vendors llama.cpp under vendor/llama.cpp. We download it
with pip, check its sha256, unpack only what the build needs, and apply the
patches in third_party/patches/ (in name order; each is checked to apply
cleanly first, and the stamp records their sha256, so a changed patch unpacks
afresh). A later run finds the stamp file and does nothing, so builds after the
first are offline.

Usage: fetch_llama_cpp.py [--dest DIR] [--extra PATH ...] [--unpatched]
(--unpatched: llama.cpp as the pin ships it, e.g. for the benchmark's peer.)
Prints the llama.cpp directory on success.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PATCHES = HERE / "patches"

# What the library build needs from vendor/llama.cpp (about 36 MB).
BUILD_MEMBERS = ("CMakeLists.txt", "cmake/", "ggml/", "src/", "include/", "vendor/",
                 "licenses/", "LICENSE", "AUTHORS")


def read_pin(path: Path = HERE / "llama_cpp.pin") -> dict[str, str]:
    pin = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" in line:
            key, value = (s.strip() for s in line.split("=", 1))
            pin[key] = value
    for key in ("package", "version", "sha256"):
        if key not in pin:
            raise SystemExit(f"{path}: missing '{key}'")
    return pin


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pip_environment() -> dict[str, str]:
    # pip's build isolation (we run inside `pip install .`) puts a sitecustomize on
    # PYTHONPATH that hides the interpreter's site-packages, and with them pip itself.
    # A child pip needs them back; the isolation is only for the build backend.
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONNOUSERSITE", None)
    return env


def pip_command(env: dict[str, str]) -> list[str]:
    candidates = [[sys.executable, "-m", "pip"]]
    candidates += [[exe] for exe in map(shutil.which, ("pip3", "pip")) if exe]
    for cmd in candidates:
        probe = subprocess.run(cmd + ["--version"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        if probe.returncode == 0:
            return cmd
    raise SystemExit("fetch_llama_cpp: pip is not available to download the pinned llama.cpp; "
                     "install pip or point HETEROSPEC_LLAMA_CPP_DIR at a llama.cpp checkout")


def download_sdist(pin: dict[str, str], downloads: Path) -> Path:
    name = f"{pin['package'].replace('-', '_')}-{pin['version']}.tar.gz"
    target = downloads / name
    if target.exists() and sha256_of(target) == pin["sha256"]:
        return target
    downloads.mkdir(parents=True, exist_ok=True)
    spec = f"{pin['package']}=={pin['version']}"
    env = pip_environment()
    base = pip_command(env) + ["download", "--no-deps", "--no-binary", pin["package"],
                            "--dest", str(downloads), spec]
    # pip prepares the sdist's metadata; without isolation that is fast when
    # scikit-build-core is importable, otherwise let pip make an isolated env.
    for extra in (["--no-build-isolation"], []):
        r = subprocess.run(base + extra, env=env, stdout=sys.stderr, stderr=sys.stderr)
        if r.returncode == 0 and target.exists():
            break
    else:
        raise SystemExit(f"fetch_llama_cpp: could not download {spec} with pip")
    got = sha256_of(target)
    if got != pin["sha256"]:
        target.unlink()
        raise SystemExit(f"fetch_llama_cpp: sha256 mismatch for {name}: expected {pin['sha256']}, "
                         f"got {got}; the download was removed")
    return target


def patches() -> list[Path]:
    return sorted(PATCHES.glob("*.patch")) if PATCHES.is_dir() else []


def patch_stamp() -> str:
    return " ".join(f"{p.name}:{sha256_of(p)[:16]}" for p in patches())


def _patch_commands(patch: Path) -> list[tuple[list[str], list[str]]]:
    """(check, apply) command pairs: git apply (git is there wherever the repo was cloned), else
    patch(1)."""
    out = []
    if shutil.which("git"):
        out.append((["git", "apply", "--check", "-p1", str(patch)], ["git", "apply", "-p1", str(patch)]))
    if shutil.which("patch"):
        base = ["patch", "-p1", "--forward", "--batch", "-i", str(patch)]
        out.append((base + ["--dry-run"], base))
    if not out:
        raise SystemExit("fetch_llama_cpp: neither git nor patch is available to apply third_party/patches")
    return out


def apply_patches(tree: Path) -> None:
    """Applies every patch to `tree`, after checking that each applies cleanly."""
    # the tree lies inside this repository: keep git from treating it as part of it
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(tree.parent))
    for p in patches():
        check, apply = _patch_commands(p)[0]
        for cmd in (check, apply):
            r = subprocess.run(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if r.returncode != 0:
                raise SystemExit(f"fetch_llama_cpp: {p.name} does not apply to the pinned llama.cpp "
                                 f"({' '.join(cmd[:2])}):\n{r.stdout}")
        print(f"fetch_llama_cpp: applied {p.name}", file=sys.stderr)


def unpack(sdist: Path, pin: dict[str, str], dest: Path, members: tuple[str, ...], patched: bool = True) -> None:
    prefix = f"{pin['package'].replace('-', '_')}-{pin['version']}/vendor/llama.cpp/"
    tmp = Path(tempfile.mkdtemp(prefix=".llama.cpp-", dir=dest.parent))
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            picked = []
            for m in tar.getmembers():
                if not m.name.startswith(prefix):
                    continue
                rel = m.name[len(prefix):]
                if not rel or not any(rel == p.rstrip("/") or rel.startswith(p) for p in members):
                    continue
                if m.issym() or m.islnk() or ".." in Path(rel).parts:
                    continue  # never follow links out of the tree
                m.name = rel
                picked.append(m)
            if not picked:
                raise SystemExit(f"fetch_llama_cpp: {sdist.name} has no {prefix}")
            tar.extractall(tmp, members=picked, filter="data") if hasattr(tarfile, "data_filter") \
                else tar.extractall(tmp, members=picked)
        if patched:
            apply_patches(tmp)
        (tmp / ".heterospec-pin").write_text(f"{pin['package']}=={pin['version']} {pin['sha256']}\n"
                                             f"members: {' '.join(members)}\n"
                                             f"patches: {patch_stamp() if patched else ''}\n")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def is_fresh(dest: Path, pin: dict[str, str], members: tuple[str, ...], patched: bool = True) -> bool:
    stamp = dest / ".heterospec-pin"
    if not stamp.exists():
        return False
    lines = stamp.read_text().splitlines()
    have = set(lines[1].split(":", 1)[1].split()) if len(lines) > 1 else set()
    stamped = lines[2].split(":", 1)[1].strip() if len(lines) > 2 and lines[2].startswith("patches:") else ""
    want = patch_stamp() if patched else ""
    return lines[0].endswith(pin["sha256"]) and set(members) <= have and stamped == want


def fetch(dest: Path, extra: tuple[str, ...] = (), patched: bool = True) -> Path:
    pin = read_pin()
    members = tuple(dict.fromkeys(BUILD_MEMBERS + extra))
    if is_fresh(dest, pin, members, patched):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    downloads = dest.parent / "downloads"   # beside the unpacked tree (third_party/ for the build)
    sdist = download_sdist(pin, downloads)
    print(f"fetch_llama_cpp: unpacking llama.cpp from {sdist.name} into {dest}", file=sys.stderr)
    unpack(sdist, pin, dest, members, patched)
    if os.environ.get("HETEROSPEC_KEEP_SDIST") != "1":
        sdist.unlink()
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=HERE / "llama.cpp")
    ap.add_argument("--extra", nargs="*", default=[],
                    help="more paths under vendor/llama.cpp to unpack (e.g. common/ examples/)")
    ap.add_argument("--unpatched", action="store_true",
                    help="leave third_party/patches out (llama.cpp as the pin ships it)")
    args = ap.parse_args()
    print(fetch(args.dest.resolve(), tuple(args.extra), patched=not args.unpatched))


if __name__ == "__main__":
    main()
