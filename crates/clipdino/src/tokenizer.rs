//! The CLIP text tokenizer: open_clip's `SimpleTokenizer` (`open_clip/tokenizer.py`, itself a copy
//! of OpenAI CLIP's `simple_tokenizer.py`), as used by OpenCLIP ViT-B/16.
//!
//! Upstream does, per string:
//! 1. `ftfy.fix_text` (ftfy 6), then `html.unescape` twice, `strip()`;
//! 2. whitespace collapse (`" ".join(text.split())`) and `lower()`;
//! 3. split with `'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+` (case-insensitive);
//! 4. byte-level BPE with the `</w>` end-of-word suffix (49 408 tokens);
//! 5. `[SOT] + ids + [EOT]`, truncated to 77 with EOT forced into the last slot.
//!
//! Steps 3–4 come from a Hugging Face `tokenizers` JSON file (`assets/tokenizer.json`, built by
//! `tests/reference/make_tokenizer.py`; the hub's `tokenizer.json` of the OpenCLIP models loads
//! too, minus two case-folding quirks of upstream's regex that only the shipped file spells out:
//! `'ſ` and U+0345). Steps 1–2 are done here in Rust, because `tokenizers` has no ftfy and no HTML
//! unescaping. Of ftfy we replicate every fixer except mojibake repair (`fix_encoding`, a
//! heuristic re-decoding of text that went through the wrong codec): HTML entities (with ftfy's
//! "no `<` in the line" rule and its upper-case aliases), C1 controls as Windows-1252, Latin
//! ligatures, half/full-width forms, curly quotes, line breaks, terminal escapes, control
//! characters and NFC, repeated to a fixed point per line as ftfy does.
//!
//! Only the file's pre-tokenizer and model are used: its normalizer is replaced by the cleaning
//! above and its added-token matching is skipped, so text typed by a user never turns into a
//! control token (upstream maps a literal `<end_of_text>` to id 49407, which would move the
//! text tower's argmax pooling).

use std::collections::HashMap;
use std::sync::OnceLock;

use tokenizers::models::bpe::BPE;
use tokenizers::{
    Model, ModelWrapper, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer,
    PreTokenizerWrapper,
};

use crate::error::{Error, Result};

/// Token slots of the text tower (`positional_embedding` rows), SOT and EOT included.
pub const CONTEXT_LENGTH: usize = 77;
/// Start-of-text token (open_clip calls it `<start_of_text>`), id 49406 in CLIP's vocabulary.
pub const SOT_TOKEN: &str = "<|startoftext|>";
/// End-of-text token (open_clip: `<end_of_text>`), id 49407; the text tower pools at it.
pub const EOT_TOKEN: &str = "<|endoftext|>";

/// The shipped tokenizer file (HF `tokenizers` JSON, CLIP BPE vocabulary, MIT; see
/// `assets/LICENSES.md`).
pub static EMBEDDED_TOKENIZER_JSON: &[u8] = include_bytes!("../assets/tokenizer.json");
static HTML_ENTITIES_TXT: &str = include_str!("../assets/html_entities.txt");

/// Token ids of one string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// `SOT, tokens…, EOT`, at most `context_length` ids; EOT is always last.
    pub ids: Vec<u32>,
    /// The text needed more than `context_length` ids and was cut (EOT kept last).
    pub truncated: bool,
}

/// open_clip's `SimpleTokenizer`, backed by a Hugging Face `tokenizers` JSON file.
#[derive(Clone)]
pub struct ClipTokenizer {
    pre_tokenizer: PreTokenizerWrapper,
    model: BPE,
    sot: u32,
    eot: u32,
    context_length: usize,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab_size", &self.model.get_vocab_size())
            .field("sot", &self.sot)
            .field("eot", &self.eot)
            .field("context_length", &self.context_length)
            .finish()
    }
}

fn tok_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{what}: {e}"))
}

impl ClipTokenizer {
    /// Parses a Hugging Face `tokenizer.json` holding a CLIP byte-level BPE.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self> {
        let tok = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| tok_err("tokenizer.json is not a valid tokenizers file", e))?;
        let model = match tok.get_model() {
            ModelWrapper::BPE(bpe) => bpe.clone(),
            _ => {
                return Err(Error::Tokenizer(
                    "tokenizer.json: `model` is not a BPE model (not a CLIP tokenizer)".into(),
                ))
            }
        };
        if model.dropout.is_some() {
            return Err(Error::Tokenizer(
                "tokenizer.json: BPE `dropout` is set; CLIP tokenization must be deterministic"
                    .into(),
            ));
        }
        if model.end_of_word_suffix.as_deref() != Some("</w>") {
            return Err(Error::Tokenizer(format!(
                "tokenizer.json: BPE `end_of_word_suffix` is {:?}, CLIP uses \"</w>\"",
                model.end_of_word_suffix
            )));
        }
        let pre_tokenizer = tok.get_pre_tokenizer().cloned().ok_or_else(|| {
            Error::Tokenizer(
                "tokenizer.json: no `pre_tokenizer` (CLIP needs its regex split + byte level)"
                    .into(),
            )
        })?;
        // Special tokens: HF names first, then open_clip's own spelling.
        let find = |names: [&str; 2]| names.iter().find_map(|n| tok.token_to_id(n));
        let sot = find([SOT_TOKEN, "<start_of_text>"]).ok_or_else(|| {
            Error::Tokenizer(format!(
                "tokenizer.json: no `{SOT_TOKEN}` token in the vocabulary"
            ))
        })?;
        let eot = find([EOT_TOKEN, "<end_of_text>"]).ok_or_else(|| {
            Error::Tokenizer(format!(
                "tokenizer.json: no `{EOT_TOKEN}` token in the vocabulary"
            ))
        })?;
        Ok(Self {
            pre_tokenizer,
            model,
            sot,
            eot,
            context_length: CONTEXT_LENGTH,
        })
    }

    /// The tokenizer shipped in the crate (`assets/tokenizer.json`, ≈ 1.5 MB).
    pub fn embedded() -> Result<Self> {
        Self::from_json_bytes(EMBEDDED_TOKENIZER_JSON)
    }

    /// Same tokenizer with another context length (≥ 2); CLIP ViT-B/16 uses 77.
    pub fn with_context_length(mut self, context_length: usize) -> Result<Self> {
        if context_length < 2 {
            return Err(Error::invalid(
                "context_length",
                format!("{context_length} leaves no room for SOT and EOT"),
            ));
        }
        self.context_length = context_length;
        Ok(self)
    }

    pub fn sot(&self) -> u32 {
        self.sot
    }

    pub fn eot(&self) -> u32 {
        self.eot
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Vocabulary size of the BPE model (49 408 for CLIP, special tokens included).
    pub fn vocab_size(&self) -> usize {
        self.model.get_vocab_size()
    }

    /// BPE ids of `text` after open_clip's cleaning, without SOT/EOT and without truncation.
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>> {
        let cleaned = clean_text(text);
        let mut pretok = PreTokenizedString::from(cleaned.as_str());
        self.pre_tokenizer
            .pre_tokenize(&mut pretok)
            .map_err(|e| tok_err("pre-tokenizer", e))?;
        pretok
            .tokenize(|piece| self.model.tokenize(piece.get()))
            .map_err(|e| tok_err("BPE", e))?;
        let mut ids = Vec::new();
        for (piece, _, tokens) in pretok.get_splits(OffsetReferential::Original, OffsetType::None) {
            let tokens = tokens
                .as_ref()
                .ok_or_else(|| Error::Tokenizer(format!("piece {piece:?} was not tokenized")))?;
            ids.extend(tokens.iter().map(|t| t.id));
        }
        Ok(ids)
    }

    /// `SOT, tokens…, EOT` as open_clip's `tokenizer(texts)` row, unpadded: at most
    /// `context_length` ids, cut with EOT written into the last slot.
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let body = self.encode_raw(text)?;
        let mut ids = Vec::with_capacity((body.len() + 2).min(self.context_length));
        ids.push(self.sot);
        let room = self.context_length - 2;
        let truncated = body.len() > room;
        // Upstream keeps the first context_length ids of SOT+body+EOT and overwrites the
        // last one with EOT, i.e. SOT + body[..context_length-2] + EOT.
        ids.extend_from_slice(&body[..body.len().min(room)]);
        ids.push(self.eot);
        Ok(Encoded { ids, truncated })
    }

    pub fn encode_batch<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Encoded>> {
        texts.iter().map(|t| self.encode(t.as_ref())).collect()
    }

    /// Text of `ids` (SOT/EOT dropped, every `</w>` read as a space, so the result ends with
    /// one), as open_clip's `decode`. Unknown ids are an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let table = byte_decoder();
        let mut bytes = Vec::new();
        for &id in ids {
            if id == self.sot || id == self.eot {
                continue;
            }
            let token = self.model.id_to_token(id).ok_or_else(|| {
                Error::invalid("token id", format!("{id} is not in the vocabulary"))
            })?;
            let token = token.replace("</w>", " ");
            for c in token.chars() {
                match table.get(&c) {
                    Some(&b) => bytes.push(b),
                    None if c == ' ' => bytes.push(b' '),
                    None => {
                        return Err(Error::Tokenizer(format!(
                            "token {id} holds {c:?}, not a byte-level symbol"
                        )))
                    }
                }
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// GPT-2 / CLIP `bytes_to_unicode`: printable Latin-1 bytes map to themselves, the other 68
/// bytes to U+0100.. in byte order.
fn byte_encoder() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0u32..256 {
        let printable =
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            n += 1;
            char::from_u32(0x100 + n - 1).unwrap_or('\0')
        };
    }
    table
}

fn byte_decoder() -> &'static HashMap<char, u8> {
    static DECODER: OnceLock<HashMap<char, u8>> = OnceLock::new();
    DECODER.get_or_init(|| {
        byte_encoder()
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect()
    })
}

// ---------------------------------------------------------------------------------------------
// Text cleaning: `_clean_lower` of open_clip = whitespace_clean(basic_clean(text)).lower()
// ---------------------------------------------------------------------------------------------

/// open_clip's cleaning of one prompt (`_clean_lower`): ftfy's fixes (no mojibake repair),
/// `html.unescape` twice, whitespace collapse, `lower()`. Public for diagnostics.
pub fn clean_text(text: &str) -> String {
    let fixed = ftfy_fix_text(text);
    let unescaped = html_unescape(&html_unescape(&fixed));
    let mut out = String::with_capacity(unescaped.len());
    for word in unescaped.split(is_py_whitespace).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    // Rust's `to_lowercase` applies the same full mappings as Python's `str.lower`
    // (including final sigma and İ → i + U+0307).
    out.to_lowercase()
}

/// Python's `str.isspace` (used by `split()` / `strip()`): Unicode White_Space plus the
/// information separators U+001C..U+001F.
fn is_py_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1C}'..='\u{1F}').contains(&c)
}

/// `ftfy.fix_text` with the default config, minus `fix_encoding`. ftfy works line by line
/// (lines keep their `\n`), and once a line contains `<` it stops decoding HTML entities for
/// that line and all the following ones.
fn ftfy_fix_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut unescape = true;
    for segment in text.split_inclusive('\n') {
        if segment.contains('<') {
            unescape = false;
        }
        out.push_str(&ftfy_fix_segment(segment, unescape));
    }
    out
}

/// ftfy's `fix_and_explain` loop: apply the fixers in order until nothing changes.
fn ftfy_fix_segment(segment: &str, unescape: bool) -> String {
    let mut text = segment.to_string();
    // ftfy loops until a fixed point; every step shortens or normalises the text, so this
    // ends after a few rounds. The cap only guards against a bug turning into a hang.
    for _ in 0..64 {
        let before = text.clone();
        if unescape && text.contains('&') {
            text = ftfy_unescape_html(&text);
        }
        // (fix_encoding: mojibake repair is not replicated.)
        text = text
            .chars()
            .fold(String::with_capacity(text.len()), |mut s, c| {
                fix_char(c, &mut s);
                s
            });
        if text.contains('\r')
            || text.contains('\u{2028}')
            || text.contains('\u{2029}')
            || text.contains('\u{85}')
        {
            text = text
                .replace("\r\n", "\n")
                .replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n");
        }
        if text.contains('\u{1B}') {
            text = remove_terminal_escapes(&text);
        }
        text = text.chars().filter(|&c| !is_ftfy_control(c)).collect();
        text = nfc(&text);
        if text == before {
            break;
        }
    }
    text
}

/// The per-character fixers of ftfy, in its order: `fix_c1_controls` (C1 → Windows-1252),
/// `fix_latin_ligatures`, `fix_character_width`, `uncurl_quotes`. Each is a pure character
/// map whose outputs are left alone by the later ones, so they compose per character.
fn fix_char(c: char, out: &mut String) {
    let c = match c as u32 {
        0x80..=0x9F => WINDOWS_1252_C1[(c as u32 - 0x80) as usize],
        _ => c,
    };
    if let Some(s) = latin_ligature(c) {
        out.push_str(s);
        return;
    }
    let cp = c as u32;
    if (0xFF01..=0xFF5E).contains(&cp) {
        // Full-width ASCII.
        out.push(char::from_u32(cp - 0xFEE0).unwrap_or(c));
        return;
    }
    if cp == 0x3000 || (0xFF5F..=0xFFEF).contains(&cp) {
        if let Ok(i) = WIDTH_MAP.binary_search_by_key(&cp, |&(k, _)| k) {
            out.push_str(WIDTH_MAP[i].1);
            return;
        }
    }
    match c {
        '\u{2BC}' | '\u{2018}'..='\u{201B}' => out.push('\''),
        '\u{201C}'..='\u{201F}' => out.push('"'),
        _ => out.push(c),
    }
}

/// `sloppy-windows-1252` decoding of bytes 0x80..0x9F (undefined bytes stay as C1 controls).
const WINDOWS_1252_C1: [char; 32] = [
    '\u{20AC}', '\u{81}', '\u{201A}', '\u{192}', '\u{201E}', '\u{2026}', '\u{2020}', '\u{2021}',
    '\u{2C6}', '\u{2030}', '\u{160}', '\u{2039}', '\u{152}', '\u{8D}', '\u{17D}', '\u{8F}',
    '\u{90}', '\u{2018}', '\u{2019}', '\u{201C}', '\u{201D}', '\u{2022}', '\u{2013}', '\u{2014}',
    '\u{2DC}', '\u{2122}', '\u{161}', '\u{203A}', '\u{153}', '\u{9D}', '\u{17E}', '\u{178}',
];

/// ftfy's `LIGATURES` (Latin ligatures and legacy digraphs only).
fn latin_ligature(c: char) -> Option<&'static str> {
    Some(match c {
        'Ĳ' => "IJ",
        'ĳ' => "ij",
        'ŉ' => "\u{2BC}n",
        'Ǳ' => "DZ",
        'ǲ' => "Dz",
        'ǳ' => "dz",
        'Ǆ' => "D\u{17D}",
        'ǅ' => "D\u{17E}",
        'ǆ' => "d\u{17E}",
        'Ǉ' => "LJ",
        'ǈ' => "Lj",
        'ǉ' => "lj",
        'Ǌ' => "NJ",
        'ǋ' => "Nj",
        'ǌ' => "nj",
        'ﬀ' => "ff",
        'ﬁ' => "fi",
        'ﬂ' => "fl",
        'ﬃ' => "ffi",
        'ﬄ' => "ffl",
        'ﬅ' => "\u{17F}t",
        'ﬆ' => "st",
        _ => return None,
    })
}

/// ftfy's `WIDTH_MAP` beyond full-width ASCII: U+3000 and NFKC of U+FF5F..U+FFEF.
#[rustfmt::skip]
const WIDTH_MAP: &[(u32, &str)] = &[
    (0x3000, "\u{20}"), (0xFF5F, "\u{2985}"), (0xFF60, "\u{2986}"), (0xFF61, "\u{3002}"),
    (0xFF62, "\u{300C}"), (0xFF63, "\u{300D}"), (0xFF64, "\u{3001}"), (0xFF65, "\u{30FB}"),
    (0xFF66, "\u{30F2}"), (0xFF67, "\u{30A1}"), (0xFF68, "\u{30A3}"), (0xFF69, "\u{30A5}"),
    (0xFF6A, "\u{30A7}"), (0xFF6B, "\u{30A9}"), (0xFF6C, "\u{30E3}"), (0xFF6D, "\u{30E5}"),
    (0xFF6E, "\u{30E7}"), (0xFF6F, "\u{30C3}"), (0xFF70, "\u{30FC}"), (0xFF71, "\u{30A2}"),
    (0xFF72, "\u{30A4}"), (0xFF73, "\u{30A6}"), (0xFF74, "\u{30A8}"), (0xFF75, "\u{30AA}"),
    (0xFF76, "\u{30AB}"), (0xFF77, "\u{30AD}"), (0xFF78, "\u{30AF}"), (0xFF79, "\u{30B1}"),
    (0xFF7A, "\u{30B3}"), (0xFF7B, "\u{30B5}"), (0xFF7C, "\u{30B7}"), (0xFF7D, "\u{30B9}"),
    (0xFF7E, "\u{30BB}"), (0xFF7F, "\u{30BD}"), (0xFF80, "\u{30BF}"), (0xFF81, "\u{30C1}"),
    (0xFF82, "\u{30C4}"), (0xFF83, "\u{30C6}"), (0xFF84, "\u{30C8}"), (0xFF85, "\u{30CA}"),
    (0xFF86, "\u{30CB}"), (0xFF87, "\u{30CC}"), (0xFF88, "\u{30CD}"), (0xFF89, "\u{30CE}"),
    (0xFF8A, "\u{30CF}"), (0xFF8B, "\u{30D2}"), (0xFF8C, "\u{30D5}"), (0xFF8D, "\u{30D8}"),
    (0xFF8E, "\u{30DB}"), (0xFF8F, "\u{30DE}"), (0xFF90, "\u{30DF}"), (0xFF91, "\u{30E0}"),
    (0xFF92, "\u{30E1}"), (0xFF93, "\u{30E2}"), (0xFF94, "\u{30E4}"), (0xFF95, "\u{30E6}"),
    (0xFF96, "\u{30E8}"), (0xFF97, "\u{30E9}"), (0xFF98, "\u{30EA}"), (0xFF99, "\u{30EB}"),
    (0xFF9A, "\u{30EC}"), (0xFF9B, "\u{30ED}"), (0xFF9C, "\u{30EF}"), (0xFF9D, "\u{30F3}"),
    (0xFF9E, "\u{3099}"), (0xFF9F, "\u{309A}"), (0xFFA0, "\u{1160}"), (0xFFA1, "\u{1100}"),
    (0xFFA2, "\u{1101}"), (0xFFA3, "\u{11AA}"), (0xFFA4, "\u{1102}"), (0xFFA5, "\u{11AC}"),
    (0xFFA6, "\u{11AD}"), (0xFFA7, "\u{1103}"), (0xFFA8, "\u{1104}"), (0xFFA9, "\u{1105}"),
    (0xFFAA, "\u{11B0}"), (0xFFAB, "\u{11B1}"), (0xFFAC, "\u{11B2}"), (0xFFAD, "\u{11B3}"),
    (0xFFAE, "\u{11B4}"), (0xFFAF, "\u{11B5}"), (0xFFB0, "\u{111A}"), (0xFFB1, "\u{1106}"),
    (0xFFB2, "\u{1107}"), (0xFFB3, "\u{1108}"), (0xFFB4, "\u{1121}"), (0xFFB5, "\u{1109}"),
    (0xFFB6, "\u{110A}"), (0xFFB7, "\u{110B}"), (0xFFB8, "\u{110C}"), (0xFFB9, "\u{110D}"),
    (0xFFBA, "\u{110E}"), (0xFFBB, "\u{110F}"), (0xFFBC, "\u{1110}"), (0xFFBD, "\u{1111}"),
    (0xFFBE, "\u{1112}"), (0xFFC2, "\u{1161}"), (0xFFC3, "\u{1162}"), (0xFFC4, "\u{1163}"),
    (0xFFC5, "\u{1164}"), (0xFFC6, "\u{1165}"), (0xFFC7, "\u{1166}"), (0xFFCA, "\u{1167}"),
    (0xFFCB, "\u{1168}"), (0xFFCC, "\u{1169}"), (0xFFCD, "\u{116A}"), (0xFFCE, "\u{116B}"),
    (0xFFCF, "\u{116C}"), (0xFFD2, "\u{116D}"), (0xFFD3, "\u{116E}"), (0xFFD4, "\u{116F}"),
    (0xFFD5, "\u{1170}"), (0xFFD6, "\u{1171}"), (0xFFD7, "\u{1172}"), (0xFFDA, "\u{1173}"),
    (0xFFDB, "\u{1174}"), (0xFFDC, "\u{1175}"), (0xFFE0, "\u{A2}"), (0xFFE1, "\u{A3}"),
    (0xFFE2, "\u{AC}"), (0xFFE3, "\u{20}\u{304}"), (0xFFE4, "\u{A6}"), (0xFFE5, "\u{A5}"),
    (0xFFE6, "\u{20A9}"), (0xFFE8, "\u{2502}"), (0xFFE9, "\u{2190}"), (0xFFEA, "\u{2191}"),
    (0xFFEB, "\u{2192}"), (0xFFEC, "\u{2193}"), (0xFFED, "\u{25A0}"), (0xFFEE, "\u{25CB}"),
];

/// ftfy's `remove_terminal_escapes`: `\x1b\[[\d;]*[A-Za-z]`.
fn remove_terminal_escapes(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\u{1B}' && chars.get(i + 1) == Some(&'[') {
            let mut j = i + 2;
            // Python's `\d` is any Unicode decimal digit; `is_numeric` is a close superset.
            while j < chars.len() && (chars[j] == ';' || chars[j].is_numeric()) {
                j += 1;
            }
            if j < chars.len() && chars[j].is_ascii_alphabetic() {
                i = j + 1;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// ftfy's `CONTROL_CHARS`.
fn is_ftfy_control(c: char) -> bool {
    matches!(c as u32,
        0x00..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0x206A..=0x206F | 0xFEFF | 0xFFF9..=0xFFFC)
}

fn nfc(text: &str) -> String {
    if text.is_ascii() {
        return text.to_string();
    }
    let mut n = tokenizers::NormalizedString::from(text);
    n.nfc();
    n.get().to_string()
}

// ---------------------------------------------------------------------------------------------
// HTML character references
// ---------------------------------------------------------------------------------------------

struct EntityTables {
    /// Python's `html.entities.html5` (names with and without the trailing ';').
    html5: HashMap<&'static str, String>,
    /// ftfy's extra upper-case aliases (`EACUTE;` → "É", …), all ending in ';'.
    ftfy_upper: HashMap<&'static str, String>,
}

fn entity_tables() -> &'static EntityTables {
    static TABLES: OnceLock<EntityTables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut html5 = HashMap::new();
        let mut ftfy_upper = HashMap::new();
        for line in HTML_ENTITIES_TXT.lines().filter(|l| !l.starts_with('#')) {
            let mut cols = line.split('\t');
            let (Some(kind), Some(name), Some(cps)) = (cols.next(), cols.next(), cols.next())
            else {
                continue;
            };
            let value: Option<String> = cps
                .split(' ')
                .map(|h| u32::from_str_radix(h, 16).ok().and_then(char::from_u32))
                .collect();
            let Some(value) = value else { continue };
            match kind {
                "h" => {
                    html5.insert(name, value);
                }
                "f" => {
                    ftfy_upper.insert(name, value);
                }
                _ => {}
            }
        }
        EntityTables { html5, ftfy_upper }
    })
}

/// ftfy's `unescape_html`: decodes `&#?[0-9A-Za-z]{1,24};` when it is a known entity (with the
/// semicolon) or a numeric reference that `html.unescape` decodes completely.
fn ftfy_unescape_html(text: &str) -> String {
    let tables = entity_tables();
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while let Some(off) = text[i..].find('&') {
        let start = i + off;
        out.push_str(&text[i..start]);
        let mut j = start + 1;
        if bytes.get(j) == Some(&b'#') {
            j += 1;
        }
        let name_start = j;
        while j < bytes.len() && bytes[j].is_ascii_alphanumeric() {
            j += 1;
        }
        let run = j - name_start;
        if (1..=24).contains(&run) && bytes.get(j) == Some(&b';') {
            let m = &text[start..=j];
            let name = &text[start + 1..=j];
            let replacement = if let Some(v) = tables
                .html5
                .get(name)
                .or_else(|| tables.ftfy_upper.get(name))
            {
                v.clone()
            } else if m.starts_with("&#") {
                let u = html_unescape(m);
                if u.contains(';') {
                    m.to_string()
                } else {
                    u
                }
            } else {
                m.to_string()
            };
            out.push_str(&replacement);
            i = j + 1;
        } else {
            out.push('&');
            i = start + 1;
        }
    }
    out.push_str(&text[i..]);
    out
}

/// Python's `html.unescape` (HTML5 rules: numeric references with the Windows-1252 fix-ups,
/// named references with or without ';', longest legacy prefix).
pub fn html_unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let tables = entity_tables();
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while let Some(off) = text[i..].find('&') {
        let start = i + off;
        out.push_str(&text[i..start]);
        let after = start + 1;
        // Regex: &(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)
        if bytes.get(after) == Some(&b'#') {
            let (radix, digits_start) = match bytes.get(after + 1) {
                Some(b'x' | b'X') => (16, after + 2),
                _ => (10, after + 1),
            };
            let is_digit = |b: u8| {
                if radix == 16 {
                    b.is_ascii_hexdigit()
                } else {
                    b.is_ascii_digit()
                }
            };
            // `#x…` needs a hex digit; `#` + decimal digit wins first in the regex, and
            // `x` is not a decimal digit, so there is no ambiguity.
            let mut j = digits_start;
            while j < bytes.len() && is_digit(bytes[j]) {
                j += 1;
            }
            if j == digits_start {
                out.push('&');
                i = after;
                continue;
            }
            let num = text[digits_start..j].chars().fold(0u32, |acc, d| {
                let v = d.to_digit(radix).unwrap_or(0);
                // Saturate above the Unicode range: Python's big ints just compare > 0x10FFFF.
                acc.saturating_mul(radix).saturating_add(v).min(0x11_0000)
            });
            if bytes.get(j) == Some(&b';') {
                j += 1;
            }
            out.push_str(&numeric_charref(num));
            i = j;
        } else {
            let rest = &text[after..];
            let mut end = after;
            let mut count = 0;
            for (k, c) in rest.char_indices() {
                if count == 32 || matches!(c, '\t' | '\n' | '\u{0C}' | ' ' | '<' | '&' | '#' | ';')
                {
                    break;
                }
                count += 1;
                end = after + k + c.len_utf8();
            }
            if count == 0 {
                out.push('&');
                i = after;
                continue;
            }
            if bytes.get(end) == Some(&b';') {
                end += 1;
            }
            let s = &text[after..end];
            i = end;
            if let Some(v) = tables.html5.get(s) {
                out.push_str(v);
                continue;
            }
            // Longest prefix of at least 2 characters that is an entity (only the legacy names
            // without ';' can match here).
            let cuts: Vec<usize> = s.char_indices().map(|(k, _)| k).skip(2).collect();
            let hit = cuts
                .iter()
                .rev()
                .find_map(|&k| tables.html5.get(&s[..k]).map(|v| (k, v)));
            match hit {
                Some((k, v)) => {
                    out.push_str(v);
                    out.push_str(&s[k..]);
                }
                None => {
                    out.push('&');
                    out.push_str(s);
                }
            }
        }
    }
    out.push_str(&text[i..]);
    out
}

/// Python's `html._replace_charref` for `&#N;`.
fn numeric_charref(num: u32) -> String {
    match num {
        0x00 => "\u{FFFD}".into(),
        0x0D => "\r".into(),
        0x80..=0x9F => WINDOWS_1252_C1[(num - 0x80) as usize].to_string(),
        0xD800..=0xDFFF | 0x11_0000.. => "\u{FFFD}".into(),
        0x01..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0xFDD0..=0xFDEF => String::new(),
        n if n & 0xFFFE == 0xFFFE => String::new(),
        n => char::from_u32(n).map(String::from).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> ClipTokenizer {
        ClipTokenizer::embedded().expect("embedded tokenizer")
    }

    #[test]
    fn photo_of_a_cat() {
        let t = tok();
        let e = t.encode("a photo of a cat.").unwrap();
        assert_eq!(e.ids, [49406, 320, 1125, 539, 320, 2368, 269, 49407]);
        assert!(!e.truncated);
        assert_eq!(
            t.encode("it's ok").unwrap().ids,
            [49406, 585, 568, 2481, 49407]
        );
        assert_eq!((t.sot(), t.eot(), t.vocab_size()), (49406, 49407, 49408));
        assert_eq!(t.context_length(), 77);
    }

    #[test]
    fn empty_string_is_sot_eot() {
        let e = tok().encode("").unwrap();
        assert_eq!(e.ids, [49406, 49407]);
        assert_eq!(tok().encode(" \t\n ").unwrap().ids, [49406, 49407]);
    }

    #[test]
    fn truncation_keeps_eot_last() {
        let t = tok();
        // "word" is one token: 75 words + SOT + EOT fill the 77 slots exactly.
        let fits = t.encode(&"word ".repeat(75)).unwrap();
        assert_eq!(fits.ids.len(), 77);
        assert!(!fits.truncated);
        let cut = t.encode(&"word ".repeat(76)).unwrap();
        assert_eq!(cut.ids.len(), 77);
        assert!(cut.truncated);
        assert_eq!(cut.ids[0], 49406);
        assert_eq!(cut.ids[76], 49407);
        assert_eq!(&cut.ids[1..76], &fits.ids[1..76]);
        let short = t.clone().with_context_length(5).unwrap();
        let e = short.encode("a photo of a cat.").unwrap();
        assert_eq!(e.ids, [49406, 320, 1125, 539, 49407]);
        assert!(e.truncated);
        assert!(t.with_context_length(1).is_err());
    }

    #[test]
    fn batch_and_decode() {
        let t = tok();
        let b = t.encode_batch(&["a photo of a cat.", "dog"]).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].ids.len(), 8);
        assert_eq!(t.decode(&b[0].ids).unwrap(), "a photo of a cat . ");
        let e = t.encode("Crème brûlée 🍮").unwrap();
        assert_eq!(t.decode(&e.ids).unwrap(), "crème brûlée 🍮 ");
        assert!(t.decode(&[60_000]).is_err());
    }

    #[test]
    fn user_text_never_becomes_a_control_token() {
        let t = tok();
        for text in ["<|endoftext|>", "a <end_of_text> b", "<|startoftext|> x"] {
            let ids = t.encode(text).unwrap().ids;
            let inner = &ids[1..ids.len() - 1];
            assert!(
                !inner.contains(&t.eot()) && !inner.contains(&t.sot()),
                "{text}: {ids:?}"
            );
        }
    }

    #[test]
    fn cleaning_matches_open_clip() {
        // Expected values printed by open_clip's `_clean_lower` (ftfy 6.3).
        let cases = [
            ("Tom &amp;amp; Jerry", "tom & jerry"),
            ("P&EACUTE;REZ", "pérez"),
            (
                "ﬁsh “quoted” ＬＯＵＤ\u{3000}ｶﾀｶﾅ",
                "fish \"quoted\" loud カタカナ",
            ),
            ("a\u{92}s \u{1b}[31mred\u{1b}[0m", "a's red"),
            ("  A\t\tB\nC  ", "a b c"),
            ("a < b &amp;amp; c", "a < b & c"),
            ("&#59;x", ";x"),
            ("ΣΑΣ ΟΔΟΣ", "σας οδος"),
            ("cafe\u{301}", "café"),
        ];
        for (input, want) in cases {
            assert_eq!(clean_text(input), want, "{input:?}");
        }
    }

    #[test]
    fn html_unescape_matches_python() {
        // Expected values printed by Python 3.11's `html.unescape`.
        let cases = [
            ("&ampfoo", "&foo"),
            ("&copy2024", "©2024"),
            ("&#x41;&#65", "AA"),
            ("&#128;", "€"),
            ("&#0;", "\u{FFFD}"),
            ("&#x110000;", "\u{FFFD}"),
            ("&notit;", "¬it;"),
            ("&bogus;", "&bogus;"),
            ("&#9999999999;", "\u{FFFD}"),
            ("no entity", "no entity"),
        ];
        for (input, want) in cases {
            assert_eq!(html_unescape(input), want, "{input:?}");
        }
        let long = format!("&{}", "a".repeat(40));
        assert_eq!(html_unescape(&long), long);
    }

    #[test]
    fn entity_table_is_complete() {
        let t = entity_tables();
        // Python 3.11 html.entities.html5 has 2231 names; ftfy adds 1376 upper-case aliases.
        assert_eq!(t.html5.len(), 2231);
        assert_eq!(t.ftfy_upper.len(), 1376);
        assert_eq!(t.html5.get("amp;").map(String::as_str), Some("&"));
        assert_eq!(t.ftfy_upper.get("EACUTE;").map(String::as_str), Some("É"));
    }

    #[test]
    fn rejects_non_clip_files() {
        assert!(ClipTokenizer::from_json_bytes(b"not json").is_err());
        let wordlevel = br#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
            "normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,
            "model":{"type":"WordLevel","vocab":{"a":0},"unk_token":"a"}}"#;
        let err = ClipTokenizer::from_json_bytes(wordlevel)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a BPE model"), "{err}");
    }

    #[test]
    fn byte_table_round_trips() {
        let enc = byte_encoder();
        let dec = byte_decoder();
        assert_eq!(dec.len(), 256);
        for (b, c) in enc.iter().enumerate() {
            assert_eq!(dec[c] as usize, b);
        }
        assert_eq!(enc[b'a' as usize], 'a');
        assert_eq!(enc[b' ' as usize], '\u{120}');
    }
}
