"""Build tests/data/tokenizer_corpus.json: the strings tests/test_tokenizer.py tokenizes with both
ovs and open_clip. Deterministic (fixed seeds, no dependence on dict/set order).

    python tests/data/make_tokenizer_corpus.py          # rewrite the JSON
    python tests/data/make_tokenizer_corpus.py --check  # exit 1 if the JSON is stale

Contents: every class name and synonym of the five class-name lists, template-filled prompts,
hand-written edge cases (Unicode, accents in NFC and NFD, emoji, scripts, HTML entities,
mojibake, quotes, full width, ligatures, control characters, special-token look-alikes,
contractions, digits), generated mojibake, random code points, and long strings (past the
77-token context, 100 kB). Only inputs live here; expected ids come from open_clip in the test.
"""
from __future__ import annotations

import json
import os
import random
import sys
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(HERE, "tokenizer_corpus.json")
CLASSNAME_DIR = os.path.join(ROOT, "ovs", "data", "classnames")
CLASSNAME_FILES = ("ade20k_150.txt", "ade20k_847.txt", "pascal_ctx_59.txt", "pascal_ctx_459.txt",
                   "pascal_voc_21.txt")


def class_entries(file: str) -> list[tuple[str, list[str]]]:
    """(raw names, synonyms) of each class line; FC-CLIP's split (", " -> ",", split, strip)."""
    out = []
    with open(os.path.join(CLASSNAME_DIR, file), encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            _, _, names = line.partition(":")
            out.append((names, [s.strip() for s in names.replace(", ", ",").split(",")]))
    return out


def templates() -> tuple[list[str], list[str]]:
    sys.path.insert(0, ROOT)
    from ovs.templates import IMAGENET_TEMPLATES, VILD_TEMPLATES
    return list(IMAGENET_TEMPLATES), list(VILD_TEMPLATES)


def cesu8(text: str) -> bytes:
    """CESU-8: characters above the BMP as two separately encoded UTF-16 surrogates."""
    out = bytearray()
    for ch in text:
        cp = ord(ch)
        if cp >= 0x10000:
            cp -= 0x10000
            for s in (0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF)):
                out += chr(s).encode("utf-8", "surrogatepass")
        else:
            out += ch.encode("utf-8")
    return bytes(out)


def edge_cases() -> list[str]:
    nfd = lambda s: unicodedata.normalize("NFD", s)  # noqa: E731
    cases = [
        # empty and whitespace
        "", " ", "   ", "\t", "\n", "\t\n \r\n", "\u3000", "\xa0", "\u2003\u2009\u200a",
        "  multiple   spaces\tand\ttabs  ", "line one\nline two\n\nline four", "trailing\n",
        "\u0085next line", "a\u2028b\u2029c", "cr\ronly", "crlf\r\nend",
        # ASCII prompts, case, punctuation, digits
        "a photo of a cat.", "A PHOTO OF A CAT.", "A Photo Of A Cat!", "a photo of a cat?!?!",
        "cat-dog hybrid", "snake_case_name", "C++ / C# / F#", "e-mail: someone@example.com",
        "http://example.com/path?q=1&r=2", "(parenthesised) [bracketed] {braced}", "#hashtag @user",
        "123456", "3.14159", "1,000,000", "v2.0.1", "2nd 3rd 4th", "0", "007", "1e-5",
        "a1b2c3", "tv monitor 42\"", "50% off!!!", "...", "---", "!!!", "???", "~`|\\^",
        # contractions and apostrophes
        "IT'S", "it's", "It'S", "WE'LL", "THEY'RE", "I'M", "YOU'VE", "SHE'D", "DON'T", "can't",
        "'s", "'S", "''s", "'s'", "x's'", "o'clock", "rock 'n' roll", "'re've'm'll'd",
        "it'ſ", "'ſ", "dogs' toys", "'",
        # special-token look-alikes
        "<start_of_text>", "<end_of_text>", "<START_OF_TEXT>", "<End_Of_Text>",
        "a<start_of_text>b", "!<end_of_text>", "<start_of_text><end_of_text>",
        "<ſtart_of_text>", "<ſtart_of_text>x", "<start_of_text", "start_of_text>", "<|endoftext|>",
        "<end_of_text> a photo of a cat <start_of_text>", "< start_of_text >",
        # accents, NFC and NFD
        "café", nfd("café"), "naïve", nfd("naïve"), "crème brûlée", nfd("crème brûlée"),
        "Ångström", nfd("Ångström"), "façade", "Œuvre", "œuf", "Straße", "STRASSE", "ẞ",
        "Tiếng Việt", nfd("Tiếng Việt"), "señor piñata", nfd("señor piñata"), "Æsir Ørsted",
        "e\u0301\u0301", "a\u0308\u0304", "\u0301 lonely accent",
        # Greek, Turkish and other case mappings
        "ΣΊΣΥΦΟΣ", "γάτα", "ὈΔΥΣΣΕΎΣ", "İstanbul", "ISTANBUL ıi", "ǅemal", "ﬀ",
        "\u0345", "a\u0345b", "\u03b1\u0345", "ᾳ", "ᾼ", "\u0345\u0345x",
        # scripts
        "日本語のテキスト", "猫がマットの上にいる", "中文文本测试", "一只猫", "한국어 텍스트", nfd("한국어"),
        "ｶﾀｶﾅ ﾊﾝｶｸ", "قطة على السجادة", "٣٤٥ قطط", "חתול על השטיח", "बिल्ली चटाई पर",
        "हिन्दी", "แมวบนเสื่อ", "ქართული", "Հայերեն", "አማርኛ", "ᏣᎳᎩ", "ꦗꦮ", "ᠮᠣᠩᠭᠣᠯ",
        "привет мир", "ПРИВЕТ МИР", "Ελληνικά", "Ünïcödé mixed 日本 and English",
        # letters and digits newer than Python 3.11's Unicode 14 (the regex module knows them)
        "\U0001e4d0\U0001e4d1\U0001e4d2", "\U0001e4f0\U0001e4f1", "\U00031350\U00031351",
        "\ua7cb\ua7cc", "\U00011f04\U00011f05", "x\U00011f50y", "\u0c5d\u0cdd", "\U0001e030",
        "\U0001f7d9", "\U0002ebf0", "\u1c89", "\U000105c0", "\U00016d40\U00016d41",
        # emoji
        "👍", "👍🏽", "👍🏿 thumbs", "👨‍👩‍👧‍👦", "family 👨‍👩‍👧 photo", "🏳️‍🌈", "🇫🇷🇩🇪",
        "1️⃣ keycap", "❤️", "❤", "🏴\U000e0067\U000e0062\U000e0077\U000e006c\U000e0073\U000e007f",
        "😀😃😄😁😆", "cat🐈dog🐕", "🧑🏾‍💻", "©®™", "☕ coffee", "\U0001faf6\U0001fae8",
        # HTML entities
        "&amp;", "&lt;cat&gt;", "&amp;amp;", "&amp;lt;b&amp;gt;", "&#39;", "&#x27;", "&#8217;",
        "&#x2019;s", "&eacute;t&eacute;", "&EACUTE;T&EACUTE;", "&Eacute;", "&nbsp;non&nbsp;breaking",
        "&copy; 2024", "&notanentity;", "&amp", "R&D", "AT&T", "&#0;", "&#x110000;", "&#55357;",
        "&#128512;", "&#x1F600;", "&hellip;", "&mdash;", "&NTILDE; &nTILDE;", "&SZLIG;",
        "&checkmark; &HilbertSpace;", "<b>bold</b> &amp; more", "x < y &amp; z",
        "first line &amp;\nsecond < line &amp;\nthird &amp;", "&lt;start_of_text&gt;",
        "&amp;#39;", "&&&;;;", "&#;", "&#x;", "&#12345678901234567890;", "&ampx;",
        # mojibake (UTF-8 read in a single-byte encoding), partial and nested
        "cafÃ©", "Ã©tÃ©", "Ã¼ber", "schÃ¶n", "sÃ³", "â€œquotedâ€\x9d", "â€œ like this â€�",
        "itâ€™s", "â€”", "â€¦", "â€¢ bullet", "Â£100", "Â· middot", "Ã la mode", "voilÃ le travail",
        "fÃ cil", "Ã s vezes", "Ã quele", "ÃƒÂ©", "The Mona Lisa doesnÃƒÂ¢Ã¢â€šÂ¬Ã¢â€žÂ¢t have eyebrows.",
        "ÐŸÑ€Ð¸Ð²ÐµÑ‚", "Ð¿Ñ€Ð¸Ð²ÐµÑ‚ Ð¼Ð¸Ñ€", "âœ” No problems", "&macr;\\_(ã\x83\x84)_/&macr;",
        "вЂњquotedвЂќ", "‚Äúmac‚Äù", "Ã¢â‚¬Å“", "Ã¡rbol", "Ã\x81rbol", "ÂÂÂ", "Ã", "Ã\n",
        "ðŸ˜€ emoji", "ðŸ˜ ok", "â€\" dash", "Ã©tÃ© ðŸ˜€ ok Ã ", "normal text then Ã© here",
        cesu8("I 😀 emoji").decode("latin-1"), cesu8("😀").decode("latin-1")[:-1],
        b"null \xc0\x80 here".decode("latin-1"), "\x80\x81\x8d\x9f", "price: \x80 5",
        "Ã©\u0301", "ï»¿BOM as text", "Ã¢â‚¬â„¢", "Ð ÑƒÑÑÐºÐ¸Ð¹",
        # curly quotes
        "“hello”", "‘it’s’", "It’s", "„German“", "«guillemets»", "‹single›", "ʼapostrophe",
        "‛reversed‟", "don’t STOP", "WE’LL",
        # full width, ligatures
        "ＦＵＬＬＷＩＤＴＨ　ｔｅｘｔ　１２３", "ＬＯＵＤ　ＮＯＩＳＥＳ", "Ｕﾀｰﾝ", "ｆｕｌｌ＇ｓ",
        "ﬁsh ﬂower ﬀ ﬃ ﬄ ﬅ ﬆ", "Ĳssel ĳs", "ǄǅǆǇǈǉǊǋǌ ǱǲǳŉO", "\ufb06ar",
        # control and format characters
        "a\x00b", "bell\x07", "\x1b[31mred\x1b[0m", "\x1b[1;32;40mgreen", "\x1b[", "del\x7f",
        "\x0cformfeed", "\x0bvertical", "zero\u200bwidth", "zw\u200cnj\u200dj", "\ufeffBOM",
        "\u206adeprecated\u206f", "\ufff9anno\ufffb", "obj\ufffc", "rtl \u202eevil\u202c",
        "\x1c\x1d\x1e\x1f separators", "soft\xadhyphen", "\ud83d\udca9", "lone \ud83d high",
        "lone \udca9 low", "\udca9\ud83d reversed", "\U000e0041 tag", "\ufffd replacement",
        "\uf8ff private", "\U0010ffff max", "\U000f0000 plane 15",
        # numbers and symbols
        "½ ¼ ¾", "x² + y³", "Ⅻ Roman", "① ② ③", "٠١٢٣٤٥٦٧٨٩", "१२३", "๑๒๓", "𝟘𝟙𝟚",
        "∑∫∂ math", "€$¥£", "°C", "±5", "µm", "→ ← ↑ ↓",
    ]
    # Around the context boundary: "a" is one token, so k words are k tokens.
    cases += [" ".join(["a"] * k) for k in (73, 74, 75, 76, 77, 78, 100)]
    cases += [" ".join(["photograph"] * k) + " cat" for k in (74, 75, 76)]
    return cases


def generated_mojibake(rng: random.Random) -> list[str]:
    words = ["café", "naïve", "señor", "Straße", "déjà vu", "über", "“quoted”", "it’s",
             "résumé", "€100", "Ελληνικά", "русский", "日本", "😀", "—", "…", "Ångström",
             "piñata", "açaí", "Æsir", "crème brûlée", "Ça va", "½ price", "©2024", "naïveté"]
    encodings = ["latin-1", "windows-1252", "windows-1251", "windows-1250", "windows-1253",
                 "windows-1254", "windows-1257", "iso-8859-2", "mac-roman", "cp437"]
    out = []
    for i in range(400):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 4)))
        enc = encodings[i % len(encodings)]
        bad = text.encode("utf-8").decode(enc, errors="replace")
        if i % 7 == 0:
            bad = bad.replace("\xa0", " ")
        if i % 11 == 0:  # twice
            bad = bad.encode("utf-8").decode(encodings[(i // 11) % 3], errors="replace")
        if i % 5 == 0:  # embedded in clean text
            bad = f"{rng.choice(words)} {bad} {rng.choice(words)}"
        out.append(bad)
    return out


def random_code_points(rng: random.Random) -> list[str]:
    """Random strings over many Unicode blocks, assigned or not (surrogates excluded)."""
    blocks = [(0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x52F), (0x590, 0x6FF),
              (0x900, 0xDFF), (0x1100, 0x11FF), (0x1E00, 0x1FFF), (0x2000, 0x2BFF),
              (0x3000, 0x30FF), (0x4E00, 0x4FFF), (0xA700, 0xA7FF), (0xAC00, 0xACFF),
              (0xFB00, 0xFFFD), (0x10000, 0x1034F), (0x11F00, 0x11F5F), (0x1D400, 0x1D7FF),
              (0x1E4D0, 0x1E4FF), (0x1F300, 0x1FAFF), (0x20000, 0x2001F), (0x31340, 0x3137F),
              (0xE0000, 0xE007F)]
    out = []
    for _ in range(300):
        chars = []
        for _ in range(rng.randint(1, 12)):
            lo, hi = rng.choice(blocks)
            chars.append(chr(rng.randint(lo, hi)))
            if rng.random() < 0.25:
                chars.append(" ")
        out.append("".join(chars))
    return out


def long_strings(rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    sentence = "a photo of a large brown dog running on the beach next to the ocean. "
    words100k = []
    size = 0
    while size < 100_000:
        w = "".join(rng.choice(letters) for _ in range(rng.randint(1, 10)))
        words100k.append(w)
        size += len(w) + 1
    mixed = ["café", "日本語", "😀", "123", "it's", "&amp;", "ÃƒÂ©", "“quote”", "Ｆｕｌｌ", "ﬁne"]
    mixed100k = " ".join(rng.choice(mixed + words100k[:50]) for _ in range(16_000))
    return [
        sentence * 3,                                            # > 77 tokens
        sentence * 20,
        " ".join(words100k),                                     # 100 kB of words
        mixed100k[:100_000],                                     # 100 kB of mixed text
        "a" * 100_000,                                           # one 100 kB word
        "".join(rng.choice(letters) for _ in range(1000)),       # one long random word
        "".join(rng.choice("abc😀é") for _ in range(600)),       # long mixed word and runs
        "word " + "!" * 3000 + " end",                           # a long punctuation run
        "9" * 5000,                                              # many single digits
        ("x" * 200 + " ") * 40,
    ]


def build() -> list[str]:
    rng = random.Random(20240601)
    imagenet, vild = templates()
    corpus: list[str] = []
    entries = {f: class_entries(f) for f in CLASSNAME_FILES}
    for f in CLASSNAME_FILES:
        for raw, synonyms in entries[f]:
            corpus.append(raw)
            corpus.extend(synonyms)
    firsts = {f: [syn[0] for _, syn in entries[f] if syn[0] != "invalid_class_id"]
              for f in CLASSNAME_FILES}
    corpus += [t.format(n) for n in firsts["ade20k_150.txt"] for t in vild]
    corpus += [t.format(n) for n in firsts["pascal_voc_21.txt"] for t in imagenet]
    corpus += ["a photo of a {}.".format(n) for n in firsts["pascal_ctx_459.txt"]]
    corpus += [t.format(n.upper()) for n, t in zip(firsts["ade20k_847.txt"], imagenet * 20)]
    corpus += edge_cases()
    corpus += generated_mojibake(rng)
    corpus += random_code_points(rng)
    corpus += long_strings(rng)
    seen, unique = set(), []
    for s in corpus:
        if s not in seen:
            seen.add(s)
            unique.append(s)
    return unique


def dumps(corpus: list[str]) -> str:
    # ensure_ascii keeps lone surrogates representable; one string per line for readable diffs.
    return "[\n" + ",\n".join(json.dumps(s, ensure_ascii=True) for s in corpus) + "\n]\n"


def main() -> int:
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import _regen  # scripts/_regen.py: the generators' shared --check / write

    return _regen.main(__doc__, OUT, lambda: dumps(build()), what="corpus",
                       rerun="tests/data/make_tokenizer_corpus.py",
                       summary=lambda text: f": {len(json.loads(text))} strings")


if __name__ == "__main__":
    sys.exit(main())
