"""A random-weight model with SmolLM2-135M's attention shape (9 query heads on 3 KV heads of 64
dimensions, n_embd 576) and a 32k training context, for timing sparse prefill at lengths the
shared models do not reach (its outputs mean nothing; only its speed is measured).

  python3 benchmarks/long_context_model.py benchmarks/.cache/long-ctx-random.gguf [--layers 8]
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import gguf_factory as factory  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", type=Path)
    ap.add_argument("--layers", type=int, default=8, help="layers (8: SmolLM2 has 30; fewer keep the runs short)")
    ap.add_argument("--ctx", type=int, default=32768 + 1024)
    args = ap.parse_args()
    args.path.parent.mkdir(parents=True, exist_ok=True)
    factory.write_llama(args.path, n_embd=576, n_layer=args.layers, n_head=9, n_head_kv=3, n_ff=1536,
                        n_ctx_train=args.ctx, seed=11, dtype="f16")
    print(args.path)


if __name__ == "__main__":
    main()
