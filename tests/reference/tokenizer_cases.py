#!/usr/bin/env python3
"""Write `tests/fixtures/tokenizer/cases.json`: strings with open_clip's token ids.

Run with the Python of a virtualenv created by tests/reference/setup_venv.sh:

    python tests/reference/tokenizer_cases.py

The ids are the unpadded rows of `open_clip.get_tokenizer("ViT-B-16")(texts)` (SOT … EOT,
cut to 77 with EOT last), i.e. exactly what the OpenCLIP ViT-B/16 text tower receives.
`crates/clipdino/tests/tokenizer.rs` compares the Rust tokenizer against them.

Kinds:
  class     every name of the shipped class lists (crates/clipdino/assets/classes/*.txt)
  template  every class name inside a full-set and a fast-set template, and every template
            with two fixed labels
  misc      mixed case, punctuation, accents, emoji, CJK, HTML entities, numbers, whitespace,
            control characters, empty and over-long strings, plus seeded random strings
"""

import json
import os
import random
import sys

import ftfy
import open_clip
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CLASSES_DIR = os.path.join(REPO, "crates", "clipdino", "assets", "classes")
OUT = os.path.join(REPO, "tests", "fixtures", "tokenizer", "cases.json")
CLASS_LISTS = ["voc21", "context60", "coco_object", "coco_stuff", "ade20k", "cityscapes"]

FULL = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
FAST = [t("{}") for t in SIMPLE_IMAGENET_TEMPLATES]


def class_names():
    names = []
    for list_id in CLASS_LISTS:
        with open(os.path.join(CLASSES_DIR, list_id + ".txt"), encoding="utf-8") as f:
            names += [line.strip() for line in f if line.strip()]
    seen, unique = set(), []
    for n in names:
        if n not in seen:
            seen.add(n)
            unique.append(n)
    return unique


def handwritten():
    """Hand-picked hard cases, grouped by theme."""
    cases = []
    add = cases.extend
    # mixed case
    add(["A Photo Of A CAT.", "TRAFFIC LIGHT", "tEdDy BeAr", "McDonald's", "iPhone", "ΣΑΣ ΟΔΟΣ",
         "ǅemal", "İstanbul", "ISTANBUL ıi", "STRASSE Straße ẞ", "ǈ ǋ ǲ", "ΌΣΟΣ", "ΑΣ.", "Σ"])
    # punctuation and contractions
    add(["cat!", "(dog)", "[bird]", "{horse}", "ice-cream, vanilla", "it's", "don't", "we'll",
         "they're", "I've", "I'm", "she'd", "IT'S", "rock'n'roll", "a/b", "C++", "e-mail",
         "U.S.A.", "...", "!!!???", "#hashtag", "@user", "50% off!", "a -- b", "a—b", "a–b",
         "“smart quotes”", "‘single’", "`backticks`", "«guillemets»", "„low“", "a's'b", "''s",
         "'s", "'", "x'ſ", "it'ſ", "o'ſaa", "¿qué?", "¡hola!", "a...b", "a.b.c", "<tag>",
         "</w>", "a </w> b", "~tilde~", "^_^", "¯\\_(ツ)_/¯", "\\backslash\\", "pipe|pipe",
         "semi;colon", "colon:colon", "q&a", "AT&T", "R&D dept", "a & b", "&", "&&", "& ;"])
    # accents, diacritics, non-Latin scripts
    add(["café", "naïve", "crème brûlée", "Ångström", "São Paulo", "Zürich", "façade",
         "jalapeño", "żółć", "Łódź", "phở", "Việt Nam", "ñandú", "smörgåsbord", "œuvre",
         "cafe\u0301", "e\u0301\u0301", "A\u030a", "\u0345", "a\u0345b", "ω\u0345",
         "Ελληνικά", "русский язык", "עברית", "العربية", "हिन्दी", "ภาษาไทย", "ქართული",
         "Հայերեն", "ᚠᚢᚦ", "𝔣𝔯𝔞𝔨𝔱𝔲𝔯", "𝐛𝐨𝐥𝐝", "ℌ𝔢𝔩𝔩𝔬", "Ⓐⓑⓒ", "ǆungla", "ﬁsh", "ﬂower",
         "oﬃce", "ĳsselmeer", "ŉ", "ﬅop", "ﬆar"])
    # emoji
    add(["🐱", "cat 🐱", "🐶🐱🐭", "👍🏽", "👨‍👩‍👧", "🇵🇱", "🇯🇵 flag", "❤️", "1️⃣", "🏳️‍🌈",
         "a🙂b", "🙂🙂🙂🙂🙂", "☕ coffee", "✔ done", "★☆", "♥", "🎉🎊", "🤖 robot", "🍕 pizza",
         "🚗💨", "⚽"])
    # CJK and width forms
    add(["猫", "東京タワー", "한국어", "中文 字符", "日本語のテキスト", "ｶﾀｶﾅ", "ＬＯＵＤ　ＮＯＩＳＥＳ",
         "ｈｅｌｌｏ", "１２３", "（括弧）", "「引用」", "。、", "ﾟ", "ﾝ", "ｰ", "가나다", "ㄱㄴㄷ",
         "汉字 and latin", "漢字123", "天気がいい", "ＡＢＣ！", "￥100", "￠"])
    # HTML entities (ftfy + html.unescape twice)
    add(["&amp;", "Tom &amp; Jerry", "&lt;b&gt;bold&lt;/b&gt;", "&eacute;", "&EACUTE;",
         "P&EACUTE;REZ", "BUNDESSTRA&SZLIG;E", "&ntilde; &Ntilde; &NTILDE; &nTILDE;", "&#233;",
         "&#xE9;", "&#XE9;", "&#128;", "&#150;", "&copy", "&copy;", "&COPY;", "&ampfoo",
         "&amp;amp;", "&amp;amp;amp;amp;", "&#59;", "a < b &amp; c", "a &lt; b", "&notit;",
         "&notin;", "&nbsp;x", "&#0;", "&#x110000;", "&#xD800;", "&#65", "&#65;&#66;", "&bogus;",
         "&;", "&#;", "&#x;", "&#xZZ;", "&hellip;", "&mdash;", "&rsquo;s", "&apos;",
         "&quot;quoted&quot;", "&Jscr;ohn", "&checkmark;", "&frac12;", "&#x1F431;", "&#128049;",
         "&#00000065;", "&#x00041;", "&#9999999999999;", "&amp", "&ltb", "&AMP;", "&AMP",
         "&thinsp;", "&zwj;", "&shy;", "&#13;", "&#x85;", "&#x7f;", "&#x1c;x",
         "line one\n&amp; two", "first <b>\n&amp; second", "&amp; first\n<second>",
         "&" + "a" * 24 + ";", "&" + "a" * 25 + ";", "&" + "b" * 33, "&amp;lt;", "&amp;#65;",
         "&#38;amp;", "caf&eacute; &amp; cr&egrave;me"])
    # numbers
    add(["123", "3.14159", "1,000,000", "2nd place", "50%", "24/7", "١٢٣", "۱۲۳", "½", "x²",
         "Ⅻ", "①②", "0", "007", "1e10", "-5", "+7", "#1", "$100", "€50", "12:30", "2024-01-01",
         "३", "𝟙𝟚𝟛", "¹²³", "1st 2nd 3rd 4th"])
    # whitespace
    add(["  leading", "trailing  ", "a    b", "a\tb", "a\nb", "a\r\nb", "a\rb", "\t\n ",
         "a\u00a0b", "a\u2003b", "a\u3000b", "a\u200bb", "a\u2028b", "a\u2029b", "a\x85b",
         "a\x0bb", "a\x0cb", "a\x1cb", "a\x1fb", "\u202fx\u205f", "a \t \n b", "\n\ncat\n\n",
         "a\u180eb", "a\u2060b", "a\ufeffb", "\ufeffbom"])
    # control characters and escapes
    add(["a\x00b", "a\x07b", "\x1b[31mred\x1b[0m", "\x1b[1;32mgreen", "\x1b]0;x", "a\x7fb",
         "a\x92s", "a\x80b", "\x93quoted\x94", "a\x81b", "\u00adsoft\u00adhyphen", "a\u200db",
         "a\u202eb", "a\ufffcb", "a\ufff9b", "a\u206ab", "\U000e0067tag"])
    # empty and trivial
    add(["", " ", "\n", "\t", ".", "a", "A", "0", "'", "&", ";;"])
    # special-token spellings (see the test for the deliberate divergence on these)
    add(["<|startoftext|>", "<|endoftext|>", "<start_of_text>", "a <end_of_text> b"])
    # mojibake (ftfy repairs it; not replicated)
    add(["cafÃ©", "Ã¼ber", "âœ” No problems"])
    return cases


def long_strings(rng, names):
    out = []
    for i in range(30):
        words = [rng.choice(names) for _ in range(rng.randint(40, 90))]
        out.append(" ".join(words))
    out.append("a photo of " + "a very " * 50 + "big cat.")
    out.append("1" * 120)
    out.append(" ".join(str(i) for i in range(100)))
    out.append("🐱" * 40)
    out.append("猫" * 100)
    out.append("supercalifragilisticexpialidocious " * 12)
    out.append("&amp; " * 90)
    out.append("x" * 2000)
    out.append("Ab. " * 60)
    out.append("word " * 75)  # 75 words + SOT + EOT = 77: fits exactly
    out.append("word " * 76)  # one too many
    return out


def random_strings(rng, names, n):
    pools = [
        "abcdefghijklmnopqrstuvwxyz",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789",
        " " * 6 + "\t\n",
        "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
        "éèêëàâäôöûüçñßøåæœÉÀÇÑÜ",
        "αβγδεζηθλμπσςωΑΒΓΣΩ",
        "абвгдеёжзийклмнопрстуфхцчшщъыьэюя",
        "猫犬鳥東京日本語中文字한국어カタカナひらがな",
        "🐱🐶🙂👍🏽❤️✔★🇵🇱",
        "\u0301\u0308\u0327\u200d\u00a0\u3000\u2019\u201c\u201d\ufb01",
    ]
    fragments = ["&amp;", "&lt;", "&#39;", "&eacute;", "'s", "'ll", "n't", "...", "--"]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 8)):
            r = rng.random()
            if r < 0.35:
                w = rng.choice(names)
                if rng.random() < 0.3:
                    w = w.upper() if rng.random() < 0.5 else w.title()
                parts.append(w)
            elif r < 0.45:
                parts.append(rng.choice(fragments))
            else:
                pool = rng.choice(pools)
                parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 6))))
            parts.append(rng.choice([" ", " ", " ", "", "  ", "\t", ", "]))
        out.append("".join(parts))
    return out


def main():
    tok = open_clip.get_tokenizer("ViT-B-16")
    ctx = tok.context_length
    names = class_names()
    rng = random.Random(20231219)

    cases = []

    def add(kind, text):
        body = tok.encode(text)
        full = [tok.sot_token_id] + body + [tok.eot_token_id]
        row = tok([text])[0].tolist()
        n = min(len(full), ctx)
        # Cross-check our reading of the truncation rule against the padded row upstream.
        expect = full[:ctx]
        expect[-1] = tok.eot_token_id
        assert row[:n] == expect and all(v == 0 for v in row[n:]), text
        cases.append({"kind": kind, "text": text, "ids": row[:n]})

    for n in names:
        add("class", n)
    for i, n in enumerate(names):
        add("template", FULL[i % len(FULL)].format(n))
        add("template", FAST[i % len(FAST)].format(n))
    for t in FULL + [f for f in FAST if f not in FULL]:
        add("template", t.format("cat"))
        add("template", t.format("traffic light"))

    misc = handwritten() + long_strings(rng, names)
    misc += random_strings(rng, names, 2600 - len(cases) - len(misc))
    seen = set()
    for text in misc:
        if text not in seen:
            seen.add(text)
            add("misc", text)

    doc = {
        "generator": "tests/reference/tokenizer_cases.py",
        "open_clip_version": open_clip.__version__,
        "ftfy_version": ftfy.__version__,
        "python_version": sys.version.split()[0],
        "context_length": ctx,
        "templates_full": FULL,
        "templates_fast": FAST,
        "cases": cases,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    kinds = {}
    for c in cases:
        kinds[c["kind"]] = kinds.get(c["kind"], 0) + 1
    print(f"wrote {OUT}: {len(cases)} cases {kinds}, {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    main()
