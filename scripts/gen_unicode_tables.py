"""Generate csrc/text/unicode_tables.h: the character classes of the CLIP pre-tokeniser.

open_clip splits cleaned text with the `regex` module and the pattern

    <start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+

compiled with IGNORECASE. The C pre-tokeniser (csrc/text/bpe.c) needs, for every code point,
which of the three classes it falls in, and the few non-ASCII code points that IGNORECASE makes
equal to an ASCII letter of the literal alternatives.

Source of truth: the `regex` module itself, asked one code point at a time. Python's
`unicodedata` is only used for a report: the `regex` module ships a newer Unicode version than
CPython 3.11 (14.0), so deriving the tables from `unicodedata` would classify letters and digits
added since then as punctuation and tokenise differently from open_clip. Case-insensitivity also
changes one class: U+0345 COMBINING GREEK YPOGEGRAMMENI is not a letter, but it case-folds to
GREEK SMALL LETTER IOTA, so `[^\\s\\p{L}\\p{N}]` with IGNORECASE rejects it and no alternative
matches it; open_clip's findall then skips it like a space.

The tables are a function of one recorded `regex` release (and so of the Unicode version it
implements), written into the header: REGEX_VERSION below. The test extra pins exactly that
release, so the parity tests compare with open_clip on the same character database and a new
`regex` release on PyPI cannot turn the suite red. To move to a newer Unicode version, install
the new `regex`, set REGEX_VERSION, rerun this script, update the pin in pyproject.toml and run
the tokenizer tests. Code points a later Unicode version assigns (unassigned, category Cn, in
the recorded version) fall in [^\\s\\p{L}\\p{N}] here, as they do in the recorded `regex`.

Run (needs the `regex` package, a test-only dependency; a few seconds):
    python scripts/gen_unicode_tables.py            # rewrite the header
    python scripts/gen_unicode_tables.py --check    # exit 1 if the committed header is stale
"""
from __future__ import annotations

import os
import sys
import unicodedata

import regex

import _regen  # scripts/_regen.py (this script's directory is sys.path[0])

REGEX_VERSION = "2026.11.19"  # the release the committed tables come from (Unicode 18.0.0)
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "csrc", "text", "unicode_tables.h")
MAX_CP = 0x110000


def regex_unicode_version() -> str:
    """The Unicode version the installed `regex` implements, from its own description."""
    from importlib import metadata

    import re as _re

    try:
        text = metadata.metadata("regex").get_payload() or ""
    except Exception:  # noqa: BLE001 - metadata layouts differ; the version is informative only
        text = ""
    m = _re.search(r"supports Unicode (\d+\.\d+\.\d+)", text)
    return m.group(1) if m else "unknown"


def all_code_points() -> tuple[list[int], str]:
    """Every code point valid in UTF-8 (no surrogates), and the same as one string."""
    cps = [cp for cp in range(MAX_CP) if not 0xD800 <= cp < 0xE000]
    return cps, "".join(map(chr, cps))


def matched(pattern: str, cps: list[int], text: str) -> set[int]:
    """Code points a one-character IGNORECASE pattern matches (one scan of `text`)."""
    pat = regex.compile(pattern, regex.IGNORECASE)
    return {cps[m.start()] for m in pat.finditer(text)}


def classify(cps: list[int], text: str) -> tuple[list[int], list[int], list[int]]:
    """Code points matched by [\\p{L}], [\\p{N}] and by no alternative at all (IGNORECASE)."""
    letters = matched(r"[\p{L}]", cps, text)
    numbers = matched(r"[\p{N}]", cps, text)
    other = matched(r"[^\s\p{L}\p{N}]", cps, text)
    if letters & numbers or letters & other or numbers & other:
        sys.exit("a code point is in more than one class; the C pre-tokeniser assumes not")
    skipped = set(cps) - letters - numbers - other
    return sorted(letters), sorted(numbers), sorted(skipped)


def case_equivalents(cps: list[int], text: str) -> dict[str, list[int]]:
    """Non-ASCII code points that IGNORECASE matches against each ASCII letter."""
    out = {}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        out[letter] = sorted(cp for cp in matched(regex.escape(letter), cps, text) if cp >= 0x80)
    for ch in "<>_'":  # the non-letters of the literal alternatives must match only themselves
        if matched(regex.escape(ch), cps, text) != {ord(ch)}:
            sys.exit(f"{ch!r} matches another code point under IGNORECASE; update bpe.c")
    return out


def ranges(cps: list[int]) -> list[tuple[int, int]]:
    """Sorted code points -> inclusive [lo, hi] runs."""
    out: list[tuple[int, int]] = []
    for cp in cps:
        if out and out[-1][1] + 1 == cp:
            out[-1] = (out[-1][0], cp)
        else:
            out.append((cp, cp))
    return out


def emit_table(name: str, runs: list[tuple[int, int]], what: str) -> str:
    lines = [f"/* {what}: {len(runs)} runs. */",
             f"static const ovs_cp_range {name}[{len(runs)}] = {{"]
    row = []
    for lo, hi in runs:
        row.append(f"{{0x{lo:X}, 0x{hi:X}}}")
        if len(row) == 6:
            lines.append("    " + ", ".join(row) + ",")
            row = []
    if row:
        lines.append("    " + ", ".join(row) + ",")
    lines.append("};")
    return "\n".join(lines)


def unicodedata_report(letters: list[int], numbers: list[int]) -> str:
    ud_l = {cp for cp in range(MAX_CP) if unicodedata.category(chr(cp)).startswith("L")}
    ud_n = {cp for cp in range(MAX_CP) if unicodedata.category(chr(cp)).startswith("N")}
    extra_l, extra_n = len(set(letters) - ud_l), len(set(numbers) - ud_n)
    missing = len(ud_l - set(letters)) + len(ud_n - set(numbers))
    return (f" * Compared with Python's unicodedata {unicodedata.unidata_version}: {extra_l} letters "
            f"and {extra_n} numbers are newer\n * than it, {missing} code points are classified "
            f"differently the other way.")


def render() -> str:
    cps, text = all_code_points()
    letters, numbers, skipped = classify(cps, text)
    equiv = case_equivalents(cps, text)
    lines = [
        "/* Generated by scripts/gen_unicode_tables.py -- do not edit by hand.",
        " *",
        f" * Character classes of the CLIP pre-tokeniser as the `regex` module {regex.__version__}",
        f" * (Unicode {regex_unicode_version()}; REGEX_VERSION in the script, pinned by the test extra)",
        " * matches them with IGNORECASE: [\\p{L}], [\\p{N}], and the code points no alternative",
        " * matches (\\s plus U+0345), which findall skips. Everything else is [^\\s\\p{L}\\p{N}].",
        unicodedata_report(letters, numbers),
        " * Each table is sorted, non-overlapping inclusive runs; look up with a binary search.",
        " */",
        "#ifndef OVS_TEXT_UNICODE_TABLES_H",
        "#define OVS_TEXT_UNICODE_TABLES_H",
        "",
        "#include <stdint.h>",
        "",
        "typedef struct {",
        "    uint32_t lo, hi;  /* inclusive */",
        "} ovs_cp_range;",
        "",
        emit_table("ovs_letter_ranges", ranges(letters), "[\\p{L}] with IGNORECASE"),
        "",
        emit_table("ovs_number_ranges", ranges(numbers), "[\\p{N}] with IGNORECASE"),
        "",
        emit_table("ovs_skip_ranges", ranges(skipped), "matched by no alternative (skipped)"),
        "",
        "/* Non-ASCII code points that IGNORECASE matches against an ASCII letter, as",
        " * (lower-case letter, code point) pairs; the literal alternatives need these. */",
    ]
    pairs = [(letter, cp) for letter, cps in equiv.items() for cp in cps]
    lines.append(f"static const struct {{ char letter; uint32_t cp; }} ovs_case_extra[{len(pairs)}] = {{")
    for letter, cp in pairs:
        lines.append(f"    {{'{letter}', 0x{cp:X}}},  /* {unicodedata.name(chr(cp), '?')} */")
    lines += ["};", "", "#endif", ""]
    return "\n".join(lines)


def check_regex_version() -> int:
    """2 (with the reason) unless the installed `regex` is REGEX_VERSION."""
    if regex.__version__ == REGEX_VERSION:
        return 0
    print(f"the tables are generated from regex=={REGEX_VERSION}, but regex {regex.__version__} "
          f"is installed: install regex=={REGEX_VERSION} (the test extra pins it) or, to move "
          "to a new Unicode version, change REGEX_VERSION first", file=sys.stderr)
    return 2


def main() -> int:
    return _regen.main(__doc__, OUT, render, what="header", rerun="scripts/gen_unicode_tables.py",
                       precheck=check_regex_version)


if __name__ == "__main__":
    sys.exit(main())
