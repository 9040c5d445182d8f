"""Policy files: the entropy partition fitted by `heterospec calibrate`, tied to a model pair."""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Mapping, Union

PolicyLike = Union[str, os.PathLike, Mapping]


@functools.lru_cache(maxsize=16)
def _fingerprint(path: str, size: int, mtime: float) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read(1 << 20))
    return h.hexdigest()


def model_fingerprint(path: Union[str, os.PathLike]) -> dict:
    """Name, size and a hash of the first and last MiB: cheap, and different for different models."""
    p = Path(path)
    st = p.stat()
    return {"file": p.name, "size": st.st_size, "sha256_head_tail": _fingerprint(str(p.resolve()), st.st_size, st.st_mtime)}


def load_policy(policy: PolicyLike) -> dict:
    if isinstance(policy, Mapping):
        doc = dict(policy)
    else:
        path = Path(policy)
        if not path.exists():
            raise FileNotFoundError(f"policy file not found: '{path}'")
        try:
            doc = json.loads(path.read_text())
        except ValueError as e:
            raise ValueError(f"'{path}' is not a policy JSON file: {e}") from None
    th = doc.get("thresholds")
    if not isinstance(th, list) or len(th) != 7:
        raise ValueError("a policy needs a list of 7 thresholds")
    return doc


def check_pair(doc: Mapping, target, draft, force: bool = False) -> None:
    """Refuses a policy fitted for another model pair unless forced."""
    pair = doc.get("model_pair")
    if not pair or force:
        return
    have = {"target": model_fingerprint(target), "draft": model_fingerprint(draft)}
    for role in ("target", "draft"):
        want = pair.get(role, {})
        if want.get("sha256_head_tail") != have[role]["sha256_head_tail"] or want.get("size") != have[role]["size"]:
            raise ValueError(f"this policy was fitted for {role} '{want.get('file')}', not '{have[role]['file']}'; "
                             f"calibrate for this pair (heterospec calibrate) or pass force_policy=True")
