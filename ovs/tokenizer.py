"""The CLIP tokenizer, equal to open_clip's ``SimpleTokenizer`` (open_clip 3.3.0, clean="lower").

    >>> from ovs.tokenizer import tokenize
    >>> tokenize(["a photo of a cat.", "a photo of a dog."]).shape
    (2, 77)

Text goes through open_clip's cleaning -- ``ftfy.fix_text``, ``html.unescape`` twice, whitespace
folding, ``lower()`` -- and then through the C tokenizer (csrc/text/bpe.c), which splits it with
open_clip's pre-tokenisation pattern and applies byte-level BPE with the merges file shipped in
``ovs/data``. Each row of :func:`tokenize` is ``<start_of_text>``, the ids, ``<end_of_text>``,
zeros; a text longer than ``context_length - 2`` ids is cut and still ends with
``<end_of_text>``, as in open_clip.

ftfy is not a dependency. The part of ``ftfy.fix_text`` (ftfy 6.3.1, default settings) that
open_clip runs is reimplemented below with CPython's own Unicode machinery: HTML entities,
mojibake detection and repair (UTF-8 read as Latin-1, Windows-125x, ISO-8859-2, MacRoman or
CP437, including the partial and nested cases ftfy handles), C1 controls, Latin ligatures,
full/half-width forms, curly quotes, line breaks, surrogates, terminal escapes, control
characters and NFC. The mojibake heuristic's character categories and patterns follow ftfy's
design (ftfy by Robyn Speer, Apache-2.0; see ovs/data/README.md); tests compare this module with
ftfy and open_clip on a corpus and on generated mojibake.
"""
from __future__ import annotations

import codecs
import functools
import gzip
import html
import html.entities
import operator
import os
import re
import threading
import unicodedata
from typing import Sequence

import numpy as np

from . import _core

__all__ = ["Tokenizer", "tokenize", "clean_text", "default_tokenizer", "DEFAULT_CONTEXT_LENGTH"]

DEFAULT_CONTEXT_LENGTH = 77
DEFAULT_MERGES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                              "bpe_simple_vocab_16e6.txt.gz")


# =============================================================================================
# ftfy-compatible text fixing
# =============================================================================================

def _cls(*parts: str) -> str:
    """A regex character class from literal characters and "a-b" ranges (escaped)."""
    out = []
    for part in parts:
        i = 0
        while i < len(part):
            if i + 2 < len(part) and part[i + 1] == "-":
                out.append(re.escape(part[i]) + "-" + re.escape(part[i + 2]))
                i += 3
            else:
                out.append(re.escape(part[i]))
                i += 1
    return "[" + "".join(out) + "]"


# ---------------------------------------------------------------- single-byte encodings
# The encodings ftfy tries when it reinterprets text as bytes, in its order. "sloppy" ones are
# Windows code pages whose unassigned bytes decode to the Latin-1 character of the same number,
# plus byte 0x1A standing for U+FFFD (so text that already lost characters can be re-encoded).
_SLOPPY = ("windows-1252", "windows-1251", "windows-1250", "windows-1253", "windows-1254",
           "windows-1257")


class _Charmap:
    __slots__ = ("name", "sloppy", "pattern", "table")

    def __init__(self, name: str, sloppy: bool):
        self.name = name
        self.sloppy = sloppy
        high = bytes(list(range(0x80, 0x100)) + [0x1A])
        if sloppy:
            chars = list(bytes(range(256)).decode("latin-1"))
            for b, ch in enumerate(bytes(range(256)).decode(name, errors="replace")):
                if ch != "\ufffd":
                    chars[b] = ch
            chars[0x1A] = "\ufffd"
            decoding = "".join(chars)
            self.table = codecs.charmap_build(decoding)
            charlist = "".join(decoding[b] for b in high)
        else:
            self.table = None
            charlist = high.decode(name)
        # Text is encodable iff every character is ASCII other than 0x1A, or one of these.
        self.pattern = re.compile(_cls("\x00-\x19\x1b-\x7f", charlist) + "*")

    def possible(self, text: str) -> bool:
        return self.pattern.fullmatch(text) is not None

    def encode(self, text: str) -> bytes:
        if self.table is None:
            return text.encode(self.name)
        return codecs.charmap_encode(text, "strict", self.table)[0]


_CHARMAPS = ([_Charmap("latin-1", False)] + [_Charmap(e, True) for e in _SLOPPY]
             + [_Charmap("iso-8859-2", False), _Charmap("mac-roman", False), _Charmap("cp437", False)])
_SLOPPY_1252 = _CHARMAPS[1]
_SLOPPY_1252_DECODE = "".join(
    ch if ch != "\ufffd" else chr(b)
    for b, ch in enumerate(bytes(range(256)).decode("windows-1252", errors="replace")))

# ---------------------------------------------------------------- mojibake heuristic
# Character categories of ftfy's badness heuristic: the few hundred characters UTF-8 mojibake is
# made of, grouped by how they behave in real text.
_CAT = {
    "common": "\u00a0\u00ad\u00b4\u00b7\u2013\u2014\u2015\u2019\u2026",
    "c1": "\u0080-\u009f",
    "bad": ("\u00a4\u00a6\u00a8\u00aa\u00ac\u00af\u00b8\u00ba\u0192\u02c6\u02c7\u02d8\u02db\u02dc"
            "\u2020\u2021\u2030\u2310\u25ca\ufffd"),
    "law": "\u00a7\u00b6",
    "currency": "\u00a2\u00a3\u00a5\u20a7\u20ac",
    "start": ("\u00a1\u00a9\u00ab\u00bf\u0384\u0385\u2018\u201a\u201c\u201e\u2022\u2039"
              "\uf8ff"),
    "end": "\u00ae\u00bb\u02dd\u201d\u203a\u2122",
    "numeric": ("\u00b1-\u00b3\u00b5\u00b9\u00bc-\u00be\u00d7\u00f7\u2044\u2116\u2202\u2206"
                "\u220f\u2211\u221a\u221e\u2229\u222b\u2248\u2260\u2261\u2264\u2265"),
    "kaomoji": "\u00b0\u00d2-\u00d6\u00d9-\u00dc\u00f2-\u00f6\u00f8-\u00fc\u014c\u0150\u016a\u0172",
    "upper_accented": ("\u00c0-\u00d1\u00d8\u00dc\u00dd\u0100\u0102\u0104\u0106\u010c\u010e"
                       "\u0110\u0112\u0116\u0118\u011a\u011e\u0122\u012a\u0130\u0136\u0139"
                       "\u013b\u013d\u0141\u0143\u0145\u0147\u0152\u0158\u015a\u015e\u0160"
                       "\u0162\u0164\u016e\u0170\u0178\u0179\u017b\u017d\u0490"),
    "lower_accented": ("\u00df-\u00f1\u00fc\u0101\u0103\u0105\u0107\u010d\u010f\u0111\u0113"
                       "\u0117\u0119\u011b\u011f\u0123\u012b\u012f\u0137\u013a\u013c\u013e"
                       "\u0142\u0153\u0155\u015b\u015f\u0161\u0165\u017a\u017c\u017e\u0491"
                       "\ufb01\ufb02"),
    "upper_common": "\u00de\u0386\u0388-\u038a\u038c\u038e\u038f\u0391-\u03ab\u0401-\u042f",
    "lower_common": "\u03ac-\u03c9\u0430-\u045f",
    "box": ("\u2502\u250c\u2510\u2518\u251c\u2524\u252c\u253c\u2550-\u256c\u2580\u2584\u2588"
            "\u258c\u2590-\u2593"),
}


def _c(names: str, extra: str = "") -> str:
    """Character class of the space-separated categories `names` plus literal `extra`."""
    return _cls(*[_CAT[n] for n in names.split()], extra)


def _badness_alternatives() -> list[str]:
    """Alternatives of the badness pattern: unlikely juxtapositions of mojibake characters."""
    return [
        _c("c1"),
        _c("bad lower_accented upper_accented box start end currency numeric law") + _c("bad"),
        "[a-zA-Z]" + _c("lower_common upper_common") + _c("bad"),
        _c("bad") + _c("lower_accented upper_accented box start end currency numeric law"),
        _c("lower_accented lower_common box end currency numeric") + _c("upper_accented"),
        _c("box end currency numeric") + _c("lower_accented"),
        _c("lower_accented box end") + _c("currency"),
        r"\s" + _c("upper_accented") + _c("currency"),
        _c("upper_accented box") + _c("numeric law"),
        _c("lower_accented upper_accented box currency end") + _c("start") + _c("numeric"),
        _c("lower_accented upper_accented currency numeric box law") + _c("end") + _c("start"),
        _c("currency numeric box") + _c("start"),
        "[a-z]" + _c("upper_accented") + _c("start currency"),
        _c("box") + _c("kaomoji"),
        _c("lower_accented upper_accented currency numeric start end law") + _c("box"),
        _c("box") + _c("end"),
        _c("lower_accented upper_accented") + _c("start end") + r"\w",
        "[\u0152\u0153][^A-Za-z]",              # the ligature oe not followed by a Latin letter
        _c("upper_accented") + "\u00b0",        # degree sign after a capital letter
        # common two-character Windows-1252 mojibake
        "[\u00c2\u00c3\u00ce\u00d0]"
        + _c("start end", "\u20ac\u0153\u0160\u0161\u00a2\u00a3\u0178\u017e\u00a0\u00ad\u00ae"
                          "\u00a9\u00b0\u00b7\u00bb\u2013\u2014\u00b4"),
        "\u00d7[\u00b2\u00b3]",
        # Windows-1252 mojibake of Arabic: four characters, as 'common' ones are involved
        ("[\u00d8\u00d9]"
         + _c("common currency bad numeric start", "\u0178\u0160\u00ae\u00b0\u00b5\u00bb")) * 2,
        "\u00e0[\u00b2\u00b5\u00b9\u00bc\u00bd\u00be]",   # starts of South Asian scripts
        # MacRoman mojibake
        "\u221a[\u00b1\u2202\u2020\u2260\u00ae\u2122\u00b4\u2264\u2265\u00a5\u00b5\u00f8]",
        "\u2248[\u00b0\u00a2]",
        "\u201a\u00c4[\u00ec\u00ee\u00ef\u00f2\u00f4\u00fa\u00f9\u00fb\u2020\u00b0\u00a2\u03c0]",
        "\u201a[\u00e2\u00f3][\u00e0\u00e4\u00b0\u00ea]",
        # Windows-1251 mojibake
        "\u0432\u0402",
        "[\u0412\u0413\u0420\u0421]" + _c("c1 bad start end currency", "\u00b0\u00b5")
        + "[\u0412\u0413\u0420\u0421]",
        "\u0413\u045e\u0412\u0402\u0412.[A-Za-z ]",
        # Windows-1252 spellings of a-grave, a-acute and U+A0 itself
        "\u00c3[\u00a0\u00a1]",
        r"[a-z]\s?[\u00c3\u00c2] ",
        "^[\u00c3\u00c2] ",
        _c("end", "a-z.,?!") + "\u00c2" + _c("start end", " "),
        # Windows-1253 and Windows-1257 mojibake
        "\u03b2\u20ac[\u2122\u00a0\u0386\u00ad\u00ae\u00b0]",
        "[\u0392\u0393\u039e\u039f]" + _c("c1 bad start end currency", "\u00b0")
        + "[\u0392\u0393\u039e\u039f]",
        "\u0101\u20ac",
    ]


@functools.lru_cache(maxsize=None)
def _badness_re() -> re.Pattern:
    return re.compile("|".join(_badness_alternatives()))  # compiled on first use (~25 ms)


def _is_bad(text: str) -> bool:
    """Does the text contain a character sequence that is far likelier mojibake than intended?"""
    return _badness_re().search(text) is not None


# ---------------------------------------------------------------- UTF-8 look-alikes
def _decoded_by(byte_values: Sequence[int]) -> str:
    """Characters these bytes decode to in Latin-1 and the Windows code pages ftfy trusts."""
    out = set()
    for enc in ("latin-1",) + _SLOPPY:
        for b in byte_values:
            try:
                out.add(bytes([b]).decode(enc))
            except UnicodeDecodeError:
                pass
    return "".join(sorted(out))


_FIRST_OF_2 = _decoded_by(range(0xC2, 0xE0))
_FIRST_OF_3 = _decoded_by(range(0xE0, 0xF0))
_FIRST_OF_4 = _decoded_by((0xF0, 0xF3))  # other lead bytes only reach rare planes
_CONTINUATION = _decoded_by(range(0x80, 0xC0)) + " "  # a space may stand for byte A0
# Continuations that rarely stand for themselves next to mojibake (not dashes, quotes, bullets).
_CONTINUATION_STRICT = "".join(
    ch for ch in _decoded_by(range(0x80, 0xC0))
    if ch not in "\u2013\u2014\u2015\u2018\u2019\u201a\u201c\u201d\u201e\u2022\u2026")

_UTF8_DETECTOR_RE = re.compile(
    "(?<!" + _cls(_CONTINUATION_STRICT) + ")(?:"
    + _cls(_FIRST_OF_2) + _cls(_CONTINUATION)
    + "|" + _cls(_FIRST_OF_3) + _cls(_CONTINUATION) + "{2}"
    + "|" + _cls(_FIRST_OF_4) + _cls(_CONTINUATION) + "{3}"
    + ")+")

# UTF-8 sequences that would decode if a space were byte A0 (a no-break space some program
# turned into a plain space). Lead bytes are limited to those that give likely characters.
_ALTERED_UTF8_RE = re.compile(
    b"[\xc2\xc3\xc5\xce\xd0\xd9] "
    b"|[\xe2\xe3] [\x80-\x84\x86-\x9f\xa1-\xbf]"
    b"|[\xe0-\xe3][\x80-\x84\x86-\x9f\xa1-\xbf] "
    b"|\xf0 [\x80-\xbf][\x80-\xbf]"
    b"|\xf0[\x80-\xbf] [\x80-\xbf]"
    b"|\xf0[\x80-\xbf][\x80-\xbf] ")
# "Ã " is usually "à " (a word of its own), except before Portuguese "às", "àquele"...
_A_GRAVE_WORD_RE = re.compile(b"\xc3 (?! |quele|quela|quilo|s )")
# UTF-8 sequences with continuation bytes lost (0x1A from a sloppy code page, or one '?').
_LOSSY_UTF8_RE = re.compile(
    b"[\xc2-\xdf]\x1a"
    b"|[\xc2-\xc3]\\?"
    b"|\xed[\xa0-\xaf][\x1a?]\xed[\xb0-\xbf][\x1a?\x80-\xbf]"
    b"|\xed[\xa0-\xaf][\x1a?\x80-\xbf]\xed[\xb0-\xbf][\x1a?]"
    b"|[\xe0-\xef][\x1a?][\x1a\x80-\xbf]"
    b"|[\xe0-\xef][\x1a\x80-\xbf][\x1a?]"
    b"|[\xf0-\xf4][\x1a?][\x1a\x80-\xbf][\x1a\x80-\xbf]"
    b"|[\xf0-\xf4][\x1a\x80-\xbf][\x1a?][\x1a\x80-\xbf]"
    b"|[\xf0-\xf4][\x1a\x80-\xbf][\x1a\x80-\xbf][\x1a?]"
    b"|\x1a")


def _restore_byte_a0(data: bytes) -> bytes:
    data = _A_GRAVE_WORD_RE.sub(b"\xc3\xa0 ", data)
    return _ALTERED_UTF8_RE.sub(lambda m: m.group(0).replace(b" ", b"\xa0"), data)


# UTF-8 variants: CESU-8 (surrogate pairs encoded separately, 6 bytes) and Java's C0 80 null.
_CESU8_RE = re.compile(b"\xed([\xa0-\xaf]|$)([\x80-\xbf]|$)(\xed|$)([\xb0-\xbf]|$)([\x80-\xbf]|$)")
_UTF8_SPECIAL_RE = re.compile(
    b"\xc0(?:\x80|$)"
    b"|\xed(?:[\xa0-\xaf]|$)(?:[\x80-\xbf]|$)(?:\xed|$)(?:[\xb0-\xbf]|$)(?:[\x80-\xbf]|$)"
    b"|\xed(?:[\xa0-\xbf]|$)(?:[\x80-\xbf]|$)")


def _decode_utf8_variants(data: bytes) -> str:
    """Decode UTF-8 that may contain CESU-8 pairs or C0 80; UnicodeDecodeError otherwise."""
    out = []
    pos = 0
    while True:
        m = _UTF8_SPECIAL_RE.search(data, pos)
        if m is None:
            out.append(data[pos:].decode("utf-8"))
            return "".join(out)
        start = m.start()
        out.append(data[pos:start].decode("utf-8"))
        rest = data[start:]
        if rest[0] == 0xC0:
            if len(rest) < 2:
                rest.decode("utf-8")  # raises: a truncated sequence
            out.append("\x00")
            pos = start + 2
            continue
        if len(rest) < 6 or not _CESU8_RE.match(rest):
            rest[:3].decode("utf-8")  # raises: a lone surrogate
            raise UnicodeDecodeError("utf-8", data, start, start + 3, "invalid continuation")
        cp = (((rest[1] & 0x0F) << 16) | ((rest[2] & 0x3F) << 10) | ((rest[4] & 0x0F) << 6)
              | (rest[5] & 0x3F)) + 0x10000
        out.append(chr(cp))
        pos = start + 6


# ---------------------------------------------------------------- the encoding fixer
def _fix_encoding_step(text: str) -> str:
    """One round of mojibake repair; returns the text unchanged when nothing applies."""
    if not text or text.isascii() or not _is_bad(text):
        return text
    possible = []
    for cm in _CHARMAPS:
        if not cm.possible(text):
            continue
        possible.append(cm.name)
        data = cm.encode(text)
        if cm.name != "mac-roman" and _ALTERED_UTF8_RE.search(data):
            data = _restore_byte_a0(data)
        if cm.sloppy:
            data = _LOSSY_UTF8_RE.sub("\ufffd".encode(), data)
        try:
            if 0xED in data or 0xC0 in data:
                return _decode_utf8_variants(data)
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    if _UTF8_DETECTOR_RE.search(text):
        fixed = _decode_inconsistent_utf8(text)
        if fixed != text:
            return fixed
    if "latin-1" in possible:
        # Latin-1 that only has C1 controls where Windows-1252 has characters.
        try:
            fixed = text.encode("latin-1").decode("windows-1252")
            if fixed != text:
                return fixed
        except UnicodeDecodeError:
            pass
    if _C1_RE.search(text):
        return _fix_c1_controls(text)
    return text


def _fix_encoding(text: str) -> str:
    while True:
        fixed = _fix_encoding_step(text)
        if fixed == text:
            return fixed
        text = fixed


def _decode_inconsistent_utf8(text: str) -> str:
    """Fix UTF-8 mojibake embedded in otherwise different text, one stretch at a time."""
    def fix(m: re.Match) -> str:
        part = m.group(0)
        if len(part) < len(text) and _is_bad(part):
            return _fix_encoding(part)
        return part
    return _UTF8_DETECTOR_RE.sub(fix, text)


_C1_RE = re.compile("[\x80-\x9f]")


def _fix_c1_controls(text: str) -> str:
    return _C1_RE.sub(lambda m: _SLOPPY_1252_DECODE[ord(m.group(0))], text)


# ---------------------------------------------------------------- the other fixers
@functools.lru_cache(maxsize=None)
def _entities() -> dict:
    table = {}
    for name, char in html.entities.html5.items():
        if not name.endswith(";"):
            continue
        table["&" + name] = char
        # Lower-case entities are also decoded when upper-cased ("&EACUTE;"), unless that
        # spelling means something else.
        if name == name.lower():
            upper = "&" + name.upper()
            if html.unescape(upper) == upper:
                table[upper] = char.upper()
    return table


_ENTITY_RE = re.compile(r"&#?[0-9A-Za-z]{1,24};")


def _unescape_entity(m: re.Match) -> str:
    ent = m.group(0)
    char = _entities().get(ent)
    if char is not None:
        return char
    if ent.startswith("&#"):
        out = html.unescape(ent)
        return ent if ";" in out else out  # only a complete reference counts
    return ent


def _unescape_html(text: str) -> str:
    return _ENTITY_RE.sub(_unescape_entity, text)


_LIGATURES = str.maketrans({
    "\u0132": "IJ", "\u0133": "ij", "\u0149": "\u02bcn",
    "\u01f1": "DZ", "\u01f2": "Dz", "\u01f3": "dz",
    "\u01c4": "D\u017d", "\u01c5": "D\u017e", "\u01c6": "d\u017e",
    "\u01c7": "LJ", "\u01c8": "Lj", "\u01c9": "lj",
    "\u01ca": "NJ", "\u01cb": "Nj", "\u01cc": "nj",
    "\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl",
    "\ufb05": "\u017ft", "\ufb06": "st",
})
# Full-width ASCII, half-width katakana/hangul and friends -> standard width; ideographic space.
_WIDTH = {0x3000: " "}
_WIDTH.update({cp: unicodedata.normalize("NFKC", chr(cp)) for cp in range(0xFF01, 0xFFF0)
               if unicodedata.normalize("NFKC", chr(cp)) != chr(cp)})
_QUOTES = str.maketrans({**{cp: "'" for cp in (0x02BC, 0x2018, 0x2019, 0x201A, 0x201B)},
                         **{cp: '"' for cp in range(0x201C, 0x2020)}})
# Control characters with no visible effect (ASCII controls other than \t \n \f \r, the
# deprecated Arabic format controls, interlinear annotations, U+FFFC, the BOM).
_CONTROL = dict.fromkeys([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F,
                          *range(0x206A, 0x2070), 0xFEFF, *range(0xFFF9, 0xFFFD)])
_ANSI_RE = re.compile(r"\x1b\[((?:\d|;)*)([a-zA-Z])")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_SURROGATE_PAIR_RE = re.compile("[\ud800-\udbff][\udc00-\udfff]")


def _fix_line_breaks(text: str) -> str:
    return (text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n")
            .replace("\u2029", "\n").replace("\u0085", "\n"))


def _fix_surrogates(text: str) -> str:
    if _SURROGATE_RE.search(text):
        text = _SURROGATE_PAIR_RE.sub(
            lambda m: chr(0x10000 + ((ord(m.group(0)[0]) - 0xD800) << 10)
                          + (ord(m.group(0)[1]) - 0xDC00)), text)
        text = _SURROGATE_RE.sub("\ufffd", text)
    return text


def _fix_segment(text: str, unescape: bool) -> str:
    """ftfy's fix_and_explain on one line: apply every fixer until nothing changes."""
    while True:
        orig = text
        if unescape:
            text = _unescape_html(text)
        text = _fix_encoding(text)
        text = _fix_c1_controls(text)
        text = text.translate(_LIGATURES)
        text = text.translate(_WIDTH)
        text = text.translate(_QUOTES)
        text = _fix_line_breaks(text)
        text = _fix_surrogates(text)
        text = _ANSI_RE.sub("", text)
        text = text.translate(_CONTROL)
        text = unicodedata.normalize("NFC", text)
        if text == orig:
            return text


# ASCII text without these characters is left unchanged by every fixer.
_ASCII_NEEDS_FIX_RE = re.compile("[&\x00-\x08\x0b\x0d-\x1f\x7f]")
_MAX_SEGMENT = 1_000_000


def fix_text(text: str) -> str:
    """``ftfy.fix_text(text)`` with ftfy's default settings, without ftfy.

    The text is fixed line by line (and in pieces of at most a million characters). HTML
    entities are decoded until the first line that contains "<", which suggests real HTML.
    """
    if text.isascii() and not _ASCII_NEEDS_FIX_RE.search(text):
        return text
    out = []
    unescape = True
    pos, n = 0, len(text)
    while pos < n:
        brk = text.find("\n", pos) + 1
        if brk == 0:
            brk = n
        brk = min(brk, pos + _MAX_SEGMENT)
        segment = text[pos:brk]
        if unescape and "<" in segment:
            unescape = False
        out.append(_fix_segment(segment, unescape))
        pos = brk
    return "".join(out)


def clean_text(text: str) -> str:
    """open_clip's "lower" cleaning: fix_text, HTML-unescape twice, fold whitespace, lower."""
    text = html.unescape(html.unescape(fix_text(text)))
    return " ".join(text.split()).lower()


# =============================================================================================
# The tokenizer
# =============================================================================================

class Tokenizer:
    """CLIP's byte-level BPE tokenizer (49408 tokens with the default merges file).

    ``merges_path``: a CLIP merges file, gzip-compressed if it ends in ".gz"; default the
    ``bpe_simple_vocab_16e6.txt.gz`` shipped with ovs. The instance is thread-safe.
    """

    def __init__(self, merges_path: str | os.PathLike | None = None,
                 context_length: int = DEFAULT_CONTEXT_LENGTH):
        path = os.fspath(merges_path) if merges_path is not None else DEFAULT_MERGES
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            merges = f.read()
        self._bpe = _core.bpe_create(merges)
        self.vocab_size, self.sot_token_id, self.eot_token_id = _core.bpe_info(self._bpe)
        self.context_length = _check_context(context_length)

    def encode(self, text: str) -> list[int]:
        """Token ids of one text after cleaning, without <start_of_text>/<end_of_text>."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        return _core.bpe_encode(self._bpe, clean_text(text))

    def decode(self, ids) -> str:
        """Text of token ids, as open_clip decodes it (a space after each word, specials kept)."""
        if isinstance(ids, np.ndarray):
            if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
                raise ValueError(f"ids must be a 1-D integer array, got {ids.ndim}-D {ids.dtype}")
            ids = ids.tolist()
        data = _core.bpe_token_bytes(self._bpe, ids)
        return data.decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """Token ids of each text: int32 array (N, context_length), see :func:`tokenize`."""
        texts = _check_texts(texts)
        context = self.context_length if context_length is None else _check_context(context_length)
        return _core.bpe_tokenize(self._bpe, [clean_text(t) for t in texts], context)


def _check_texts(texts) -> list[str] | tuple[str, ...]:
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"texts must be a str or a list/tuple of str, got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be str, got {type(t).__name__}")
    return texts


def _check_context(context_length) -> int:
    if isinstance(context_length, bool):
        raise TypeError("context_length must be an int, got bool")
    try:
        n = operator.index(context_length)
    except TypeError:
        raise TypeError(f"context_length must be an int, got {type(context_length).__name__}") from None
    if n < 2:
        raise ValueError(f"context_length must be >= 2 (room for <start_of_text> and "
                         f"<end_of_text>), got {n}")
    return n


_default: Tokenizer | None = None
_default_lock = threading.Lock()


def default_tokenizer() -> Tokenizer:
    """The shared tokenizer with the default merges file, loaded on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Tokenizer()
    return _default


def tokenize(texts: str | Sequence[str], context_length: int = DEFAULT_CONTEXT_LENGTH) -> np.ndarray:
    """open_clip.tokenize without torch: int32 array (N, context_length).

    ``texts``: one str (N = 1) or a list/tuple of str; an empty list gives a (0, context_length)
    array. Row i is <start_of_text> (49406), the ids of texts[i], <end_of_text> (49407), zeros;
    texts longer than context_length - 2 ids are cut, keeping <end_of_text> last.
    """
    texts = _check_texts(texts)
    context = _check_context(context_length)
    return default_tokenizer()(texts, context)
