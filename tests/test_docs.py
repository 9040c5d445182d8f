"""The docs a newcomer reads: every relative link in README.md, docs/*.md and benchmarks/README.md
resolves to a file in the repository (and an #anchor to a heading of it), nothing points outside
the repository, and the README's first screen holds the two set-up commands."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
CHECKED = [README, *DOCS, REPO / "benchmarks" / "README.md"]

# The first set-up command: install, then run the main job on a public model.
GENERATE_COMMAND = ('python3 -m pip install ".[hf]" && heterospec generate -hf bartowski/SmolLM2-135M-Instruct-GGUF '
                    '-p "def fibonacci(n):" -n 64 --temp 0')

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _prose(text: str) -> str:
    """The text without code: links inside code blocks and spans are not links."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def links(path: Path) -> list[str]:
    return _LINK.findall(_prose(path.read_text(encoding="utf-8")))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # a link keeps its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = _slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_the_checked_files_exist():
    assert README.is_file()
    assert DOCS, "docs/ holds no markdown"
    for required in ("guide", "server", "c-api", "algorithm", "architecture", "benchmarks", "gpu"):
        assert (REPO / "docs" / f"{required}.md").is_file(), f"docs/{required}.md is missing"


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve_inside_the_repository(path):
    broken = []
    for target in links(path):
        if re.match(r"(https?|mailto):", target, re.I):
            continue
        file_part, _, anchor = target.partition("#")
        where = path if not file_part else (path.parent / file_part).resolve()
        if file_part.startswith("/"):
            broken.append(f"{target}: absolute path")
        elif REPO != where and REPO not in where.parents:
            broken.append(f"{target}: outside the repository")
        elif not where.exists():
            broken.append(f"{target}: no such file")
        elif anchor and where.suffix == ".md" and anchor not in anchors(where):
            broken.append(f"{target}: no heading with that anchor in {where.relative_to(REPO)}")
    assert not broken, f"{path.relative_to(REPO)}: " + "; ".join(broken)


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: str(p.relative_to(REPO)))
def test_nothing_points_outside_the_repository(path):
    text = path.read_text(encoding="utf-8")
    for outside in ("../shared", "steering repo"):
        assert outside not in text, f"{path.relative_to(REPO)} mentions {outside!r}"


def test_the_docs_index_lists_every_page():
    index = REPO / "docs" / "README.md"
    listed = {(index.parent / t.partition("#")[0]).resolve() for t in links(index)}
    missing = [p.name for p in DOCS if p != index and p.resolve() not in listed]
    assert not missing, f"docs/README.md does not link {missing}"


def test_readme_first_screen_holds_both_setup_commands():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    test_command = next(line.strip() for line in ci.splitlines() if line.startswith("python3 -m pip install"))
    first_screen = "\n".join(README.read_text(encoding="utf-8").splitlines()[:60])
    assert test_command in first_screen, f"the README's first 60 lines lack CI's command: {test_command}"
    assert GENERATE_COMMAND in first_screen, "the README's first 60 lines lack the install-and-generate command"


def test_readme_is_short():
    size = len(README.read_text(encoding="utf-8"))
    assert size < 8000, f"README.md has {size} characters: move detail into docs/"
