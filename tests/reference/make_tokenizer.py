#!/usr/bin/env python3
"""Build the tokenizer assets shipped in `crates/clipdino/assets/` from the installed open_clip.

Writes:
  crates/clipdino/assets/tokenizer.json      HF `tokenizers` JSON reproducing open_clip's SimpleTokenizer
  crates/clipdino/assets/html_entities.txt   the HTML5 named character references (Python's
                                             `html.entities.html5`) plus ftfy's upper-case aliases

Run with the Python of a virtualenv created by tests/reference/setup_venv.sh (open_clip_torch
installed; the `tokenizers` package is optional and only used for a final self-check):

    python tests/reference/make_tokenizer.py

The vocabulary is built exactly as `open_clip.tokenizer.SimpleTokenizer.__init__` builds it from
`bpe_simple_vocab_16e6.txt.gz` (shipped inside the open_clip_torch wheel, MIT licence): the 256
byte symbols, the same 256 with the `</w>` end-of-word suffix, the first 48 894 merges, then the
two special tokens, 49 408 entries in all. open_clip calls the special tokens `<start_of_text>` /
`<end_of_text>`; the file uses the original OpenAI / Hugging Face names `<|startoftext|>` (49406)
and `<|endoftext|>` (49407).
"""

import gzip
import html
import html.entities
import json
import os
import sys

import open_clip
from open_clip import tokenizer as oc_tok

try:  # ftfy is an open_clip dependency; used for its entity aliases
    import ftfy.chardata as ftfy_chardata
except ImportError:  # pragma: no cover
    sys.exit("ftfy is required (it is a dependency of open_clip_torch)")

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ASSETS = os.path.join(REPO, "crates", "clipdino", "assets")

SOT = "<|startoftext|>"
EOT = "<|endoftext|>"

# open_clip's pre-tokenizer regex is
#   <start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
# compiled with re.IGNORECASE and applied to lower-cased text. Two deliberate changes:
# * the special-token alternatives are dropped: text typed by a user never becomes a control
#   token (open_clip would turn a literal "<end_of_text>" into id 49407 mid-prompt);
# * the two effects of IGNORECASE that survive lower-casing are spelled out, so the pattern
#   works case-sensitively (found by scanning every code point with the `regex` module):
#   "'ſ" (U+017F LONG S folds to s) matches the "'s" alternative, and U+0345 COMBINING GREEK
#   YPOGEGRAMMENI (folds to ι) matches no alternative at all, so it is dropped.
SPLIT_PATTERN = (
    r"""'[sſ]|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}\x{0345}]+"""
)


def build_vocab_and_merges():
    bpe_path = oc_tok.default_bpe()
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    byte_symbols = list(oc_tok.bytes_to_unicode().values())
    vocab = byte_symbols + [s + "</w>" for s in byte_symbols]
    vocab += ["".join(m) for m in merges]
    vocab += [SOT, EOT]
    assert len(vocab) == 49408, len(vocab)
    assert len(set(vocab)) == len(vocab)

    # Cross-check against the live open_clip tokenizer (ViT-B-16 uses the default one).
    ref = open_clip.get_tokenizer("ViT-B-16")
    assert isinstance(ref, oc_tok.SimpleTokenizer)
    renamed = {"<start_of_text>": SOT, "<end_of_text>": EOT}
    ref_vocab = {renamed.get(k, k): v for k, v in ref.encoder.items()}
    assert ref_vocab == {tok: i for i, tok in enumerate(vocab)}
    assert list(ref.bpe_ranks.keys()) == merges
    return vocab, merges


def tokenizer_json(vocab, merges):
    special = lambda content, idx: {  # noqa: E731
        "id": idx,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [special(SOT, 49406), special(EOT, 49407)],
        # Used only when the file is loaded by the `tokenizers` library on its own: clipdino's
        # ClipTokenizer runs open_clip's full cleaning itself and skips this normalizer.
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "},
                {"type": "Lowercase"},
            ],
        },
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": SPLIT_PATTERN},
                    "behavior": "Removed",
                    "invert": True,
                },
                {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": False,
                    "use_regex": False,
                },
            ],
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": SOT, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": EOT, "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": SOT, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": EOT, "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 0}},
                {"SpecialToken": {"id": EOT, "type_id": 0}},
            ],
            "special_tokens": {
                SOT: {"id": SOT, "ids": [49406], "tokens": [SOT]},
                EOT: {"id": EOT, "ids": [49407], "tokens": [EOT]},
            },
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": False,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": EOT,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "</w>",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {tok: i for i, tok in enumerate(vocab)},
            "merges": [f"{a} {b}" for a, b in merges],
        },
    }


def entity_table():
    """Lines `<kind>\t<name>\t<hex code points>`.

    kind `h`: an entry of Python's `html.entities.html5` (what `html.unescape` decodes; names
    without a trailing ';' are the legacy forms it also accepts). kind `f`: an extra entry of
    ftfy's own table (`ftfy.chardata.HTML_ENTITIES`: upper-cased aliases such as `EACUTE;`).
    ftfy decodes every `h` entry whose name ends with ';' plus every `f` entry.
    """
    out = []
    for name, value in sorted(html.entities.html5.items()):
        out.append(("h", name, value))
    for amp_name, value in sorted(ftfy_chardata.HTML_ENTITIES.items()):
        name = amp_name[1:]
        if name in html.entities.html5:
            assert html.entities.html5[name] == value
            continue
        out.append(("f", name, value))
    # ftfy's table must be exactly {h names ending in ';'} plus the f names.
    ftfy_names = {n for k, n, _ in out if k == "f" or n.endswith(";")}
    assert ftfy_names == {k[1:] for k in ftfy_chardata.HTML_ENTITIES}
    lines = [
        "# HTML5 named character references (Python html.entities.html5, from the WHATWG HTML\n",
        "# standard) and ftfy's upper-case aliases. Generated by tests/reference/make_tokenizer.py.\n",
        "# kind<TAB>name<TAB>code points (hex). kind h: html.unescape table; f: ftfy-only alias.\n",
    ]
    for kind, name, value in out:
        cps = " ".join(f"{ord(c):X}" for c in value)
        assert "\t" not in name and " " not in name
        lines.append(f"{kind}\t{name}\t{cps}\n")
    return "".join(lines)


def self_check(path):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        print("(python `tokenizers` not installed: skipping the self-check)")
        return
    tok = Tokenizer.from_file(path)
    ref = open_clip.get_tokenizer("ViT-B-16")
    for text in ["a photo of a cat.", "It's a dog's life!! 123 ünïcödé 東京 🐱", "a  b\tc"]:
        got = tok.encode(text).ids
        want = [ref.sot_token_id] + ref.encode(text) + [ref.eot_token_id]
        assert got == want, (text, got, want)
    print("tokenizers self-check ok:", tok.encode("a photo of a cat.").ids)


def main():
    vocab, merges = build_vocab_and_merges()
    os.makedirs(ASSETS, exist_ok=True)
    path = os.path.join(ASSETS, "tokenizer.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(tokenizer_json(vocab, merges), f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes, open_clip {open_clip.__version__})")
    ent_path = os.path.join(ASSETS, "html_entities.txt")
    with open(ent_path, "w", encoding="utf-8") as f:
        f.write(entity_table())
    print(f"wrote {ent_path} ({os.path.getsize(ent_path)} bytes)")
    self_check(path)


if __name__ == "__main__":
    main()
