"""Make code-editing chat prompts from real standard-library functions.

Writes benchmarks/data/code_edit_chats.jsonl in Spec-Bench question format
({"question_id", "category", "turns"}). Each request asks the model to make
a small edit to a function and return the whole function, so most of the
answer is copied from the prompt -- the case n-gram speculation exploits.
The output is deterministic for a given Python version (fixed function
list, fixed task order, no randomness). Stdlib only; Python >= 3.9.
"""
import ast
import importlib
import inspect
import io
import json
import textwrap
import tokenize
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data" / "code_edit_chats.jsonl"
LIMIT = 40
FUNCTIONS = [
    "textwrap.indent", "shlex.quote", "shlex.split", "fnmatch.filter",
    "calendar.monthrange", "calendar.timegm", "heapq._siftdown", "heapq._siftup",
    "statistics._convert", "statistics.median", "statistics.median_low",
    "statistics.fmean", "statistics.pstdev", "statistics._float_sqrt_of_frac",
    "glob._glob0", "glob.escape", "glob.iglob", "glob._rlistdir",
    "difflib._check_types", "difflib._format_range_unified", "difflib.restore",
    "difflib.diff_bytes", "colorsys.hls_to_rgb", "colorsys.rgb_to_hls",
    "colorsys.rgb_to_hsv", "colorsys.hsv_to_rgb", "html.escape",
    "html._replace_charref", "base64.encode", "base64.b85encode",
    "base64._bytes_from_decode_data", "base64.encodebytes", "quopri.unhex",
    "quopri.needsquoting", "urllib.parse.unquote", "urllib.parse.urldefrag",
    "urllib.parse.urlunsplit", "urllib.parse._splitport",
    "urllib.parse.quote_from_bytes", "json.encoder.py_encode_basestring_ascii",
    # spares, used only when some function above is missing
    "statistics.stdev", "heapq._siftup_max", "base64._85encode",
]
# (instruction, strip docstrings and comments first?)
TASKS = [
    ("Add a docstring to this function and return the whole function.", True),
    ("Add type hints to this function's parameters and return value. "
     "Return the complete function.", False),
    ("Rename the variable `{old}` to `{new}` everywhere in this function "
     "and return it.", False),
    ("Add a comment above each loop and each `if` statement explaining "
     "what it does. Return the function.", True),
    ("Rewrite this function so that it raises ValueError for invalid input, "
     "keeping everything else the same.", False),
    ("Reformat this function to follow PEP 8 and return it unchanged "
     "otherwise.", False),
    ("Add a `logging.debug` call at the start of this function that logs "
     "its arguments. Return the complete function, otherwise unchanged.", False),
]
RENAMES = {"s": "text", "c": "char", "n": "count", "i": "index", "x": "item",
           "h": "hue", "l": "lightness", "v": "brightness", "b": "data",
           "data": "values", "pos": "position", "res": "result", "host": "hostname"}


def load_source(dotted):
    """Return the dedented source of module.function, or None if unavailable."""
    module_name, _, func_name = dotted.rpartition(".")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        return textwrap.dedent(inspect.getsource(func))
    except (ImportError, AttributeError, OSError, TypeError):
        return None


def strip_docs_and_comments(src):
    """Drop docstrings (found with ast) and comments; keep other lines verbatim."""
    lines = src.splitlines()
    drop = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                and ast.get_docstring(node) is not None and len(node.body) > 1:
            drop.update(range(node.body[0].lineno - 1, node.body[0].end_lineno))
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start[0] - 1, tok.start[1]
            if lines[row][:col].strip():
                lines[row] = lines[row][:col].rstrip()
            else:
                drop.add(row)
    kept = []
    for i, line in enumerate(lines):
        after_gap = not kept or not kept[-1].strip() or kept[-1].rstrip().endswith(":")
        if i not in drop and (line.strip() or not after_gap):
            kept.append(line)
    return "\n".join(kept).rstrip() + "\n"


def pick_rename(src):
    """Choose a real parameter/local name (via ast) and a descriptive new name."""
    nodes = list(ast.walk(ast.parse(src).body[0]))
    names = [n.arg if isinstance(n, ast.arg) else n.id
             for n in nodes if isinstance(n, (ast.arg, ast.Name))]
    local = {n.arg for n in nodes if isinstance(n, ast.arg)} - {"self"}
    local |= {n.id for n in nodes
              if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    old = min(local, key=lambda n: (n not in RENAMES, -names.count(n), n))
    new = RENAMES.get(old, old + "_value")
    return old, (new if new not in names else old + "_renamed")


def main():
    records = []
    for dotted in FUNCTIONS:
        src = load_source(dotted)
        if src is None or not 8 <= len(src.splitlines()) <= 40:
            print(f"skipping {dotted}: source unavailable or wrong length")
            continue
        template, strip = TASKS[len(records) % len(TASKS)]
        old, new = pick_rename(src)
        instruction = template.format(old=old, new=new)
        code = strip_docs_and_comments(src) if strip else src
        message = f"{instruction}\n\n```python\n{code}```"
        records.append({"question_id": len(records) + 1,
                        "category": "code_editing", "turns": [message]})
        if len(records) == LIMIT:
            break
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                   encoding="utf-8")
    print(f"wrote {len(records)} records to {OUT}")


if __name__ == "__main__":
    main()
