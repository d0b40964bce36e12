"""The command line of the generators whose output is committed (scripts/gen_unicode_tables.py,
tests/data/make_tokenizer_corpus.py): rewrite the file, or with --check exit 1 if the committed
one differs from what the generator produces now."""
from __future__ import annotations

import argparse
import sys
from typing import Callable


def main(doc: str, out: str, render: Callable[[], str], *, what: str, rerun: str,
         precheck: Callable[[], int] | None = None, summary: Callable[[str], str] | None = None) -> int:
    """Parse [--check]; precheck() (a non-zero return is the exit code: e.g. a wrong version of
    the generator's source); text = render(); then write it to `out` (printing "wrote OUT" and
    summary(text)) or, with --check, compare. Returns the exit code: 0, or 1 when stale."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help=f"compare with the committed {what}")
    args = ap.parse_args()
    if precheck is not None and (rc := precheck()):
        return rc
    text = render()
    if args.check:
        with open(out, encoding="utf-8") as f:
            if f.read() != text:
                print(f"{out} is stale: rerun {rerun}", file=sys.stderr)
                return 1
        print("up to date")
        return 0
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {out}" + (summary(text) if summary else ""))
    return 0
