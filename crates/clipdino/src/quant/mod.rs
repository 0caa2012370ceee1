//! Storage formats of a GGUF bundle's tensors and the **recipes** that choose one per tensor.
//!
//! A recipe is a base format for the large matrices plus overrides for groups of tensors, e.g.
//! `q4_k,vision.first=q8_0,text=q6_k,dinoiser=f16`: every matrix is Q4_K, except those of the
//! first vision block (Q8_0) and of the text tower (Q6_K); the CLIP-DINOiser head is stored f16.
//! Later rules win. A selector is a `.`-joined conjunction of the atoms of [`Atom`], all of which
//! must hold for the tensor. Named recipes ([`Recipe::NAMED`]) give the measured choices a name
//! (QUANTIZATION.md).
//!
//! Row-length fallbacks: GGML's K-quants pack blocks of 256 values along a row, the other
//! integer formats blocks of 32. A tensor whose rows do not split into whole blocks is stored in
//! the next format that does, never in a smaller one: Q6_K → Q8_0, Q5_K → Q5_1, Q4_K → Q5_0
//! (llama.cpp's choices), and any 32-block format → F16. (OpenCLIP ViT-B/16's matrices all have
//! rows of 768, 512, 3072 or 2048 values, so the fallbacks only apply to small test models.)
//!
//! Matrices are the ones listed by [`is_matrix`]; everything else (LayerNorms, biases, class and
//! positional embeddings) stays f32, or f16 when the base format is f16.

pub mod calib;
pub mod rows;

use candle_core::quantized::GgmlDType;

use crate::error::{Error, Result};

/// Storage format of one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Quant {
    F32,
    #[default]
    F16,
    Q8_0,
    Q6K,
    Q5K,
    Q4K,
    Q5_1,
    Q5_0,
    Q4_0,
}

impl Quant {
    pub const ALL: [Quant; 9] = [
        Quant::F32,
        Quant::F16,
        Quant::Q8_0,
        Quant::Q6K,
        Quant::Q5K,
        Quant::Q4K,
        Quant::Q5_1,
        Quant::Q5_0,
        Quant::Q4_0,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Quant::F32 => "f32",
            Quant::F16 => "f16",
            Quant::Q8_0 => "q8_0",
            Quant::Q6K => "q6_k",
            Quant::Q5K => "q5_k",
            Quant::Q4K => "q4_k",
            Quant::Q5_1 => "q5_1",
            Quant::Q5_0 => "q5_0",
            Quant::Q4_0 => "q4_0",
        }
    }

    pub fn dtype(self) -> GgmlDType {
        match self {
            Quant::F32 => GgmlDType::F32,
            Quant::F16 => GgmlDType::F16,
            Quant::Q8_0 => GgmlDType::Q8_0,
            Quant::Q6K => GgmlDType::Q6K,
            Quant::Q5K => GgmlDType::Q5K,
            Quant::Q4K => GgmlDType::Q4K,
            Quant::Q5_1 => GgmlDType::Q5_1,
            Quant::Q5_0 => GgmlDType::Q5_0,
            Quant::Q4_0 => GgmlDType::Q4_0,
        }
    }

    /// Values per block along a row.
    pub fn block_size(self) -> usize {
        self.dtype().block_size()
    }

    /// Stored bits per value (block scales included).
    pub fn bits_per_value(self) -> f64 {
        let d = self.dtype();
        8.0 * d.type_size() as f64 / d.block_size() as f64
    }

    /// Whether the quantizer can weigh its rounding errors by activation statistics
    /// ([`calib::ActivationStats`]; candle implements it for the K-quants).
    pub fn takes_importance(self) -> bool {
        matches!(self, Quant::Q6K | Quant::Q5K | Quant::Q4K)
    }

    /// The format actually used for rows of `row_len` values (see the module doc).
    pub fn for_row_len(self, row_len: usize) -> Quant {
        let mut q = self;
        loop {
            if row_len.is_multiple_of(q.block_size()) {
                return q;
            }
            q = match q {
                Quant::Q6K => Quant::Q8_0,
                Quant::Q5K => Quant::Q5_1,
                Quant::Q4K => Quant::Q5_0,
                _ => Quant::F16,
            };
        }
    }

    /// Storage of the tensors that are not matrices when this is the base format.
    fn other(self) -> Quant {
        match self {
            Quant::F16 => Quant::F16,
            _ => Quant::F32,
        }
    }

    /// The format of a GGML dtype, if it is one of ours.
    pub fn from_dtype(d: GgmlDType) -> Option<Quant> {
        Quant::ALL.into_iter().find(|q| q.dtype() == d)
    }
}

impl std::fmt::Display for Quant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Quant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Quant::ALL
            .into_iter()
            .find(|q| q.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                let all: Vec<&str> = Quant::ALL.iter().map(|q| q.as_str()).collect();
                Error::invalid("quant", format!("`{s}` is not one of {}", all.join(", ")))
            })
    }
}

/// Upstream matrices used as `x @ W` (`[in, out]`): a bundle stores them transposed as
/// `<name>_t` (see [`crate::weights`]).
pub const RIGHT_MULTIPLIED: [&str; 2] = ["visual.proj", "text_projection"];

/// The tensors a recipe stores in its base format: attention and MLP matrices, the patch and
/// token embeddings and the two projections. (The CLIP-DINOiser head is stored like the other
/// tensors, f32 or f16, unless a `dinoiser` rule says otherwise.)
pub fn is_matrix(name: &str) -> bool {
    const SUFFIXES: [&str; 4] = [
        ".attn.in_proj_weight",
        ".attn.out_proj.weight",
        ".mlp.c_fc.weight",
        ".mlp.c_proj.weight",
    ];
    const NAMES: [&str; 6] = [
        "visual.conv1.weight",
        "token_embedding.weight",
        "visual.proj",
        "text_projection",
        "visual.proj_t",
        "text_projection_t",
    ];
    !name.starts_with("dinoiser.")
        && (SUFFIXES.iter().any(|s| name.ends_with(s)) || NAMES.contains(&name))
}

/// The two weights of the CLIP-DINOiser head that a `dinoiser` rule may store in another format
/// (`obj_proj.weight` is then flattened to `[proj, in·3·3]`).
pub fn is_head_weight(name: &str) -> bool {
    matches!(
        name,
        "dinoiser.obj_proj.weight" | "dinoiser.bkg_decoder.weight"
    )
}

/// Block counts the group atoms need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub vision_layers: usize,
    pub text_layers: usize,
    /// The vision block whose `ln_2` output feeds the CLIP-DINOiser head (L−3).
    pub head_layer: usize,
}

/// One condition of a selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Atom {
    /// `vision` / `text`: the tower.
    Vision,
    Text,
    /// `first` / `last`: the tower's first / last block; `blockN`: block N.
    First,
    Last,
    Block(usize),
    /// `head_block`: the vision block whose `ln_2` feeds the head (its attention and MLP; the
    /// head reads this block's `ln_2` output, which its attention matrices shape).
    HeadBlock,
    /// `value_path`: the last vision block, whose value projection, `out_proj` and MLP make the
    /// MaskCLIP features (q, k and v share one `in_proj_weight` tensor).
    ValuePath,
    /// `attn` (in_proj + out_proj), `mlp` (c_fc + c_proj), or one of them.
    Attn,
    Mlp,
    InProj,
    OutProj,
    CFc,
    CProj,
    /// `blocks`: any block matrix.
    Blocks,
    /// `embed`: token embedding and patch embedding (`conv1`); or one of them.
    Embed,
    TokenEmbedding,
    PatchEmbedding,
    /// `projection`: `visual.proj` and `text_projection`.
    Projection,
    /// `dinoiser`: the CLIP-DINOiser head's two convolution weights.
    Dinoiser,
}

impl Atom {
    const NAMES: [(&'static str, Atom); 18] = [
        ("vision", Atom::Vision),
        ("text", Atom::Text),
        ("first", Atom::First),
        ("last", Atom::Last),
        ("head_block", Atom::HeadBlock),
        ("value_path", Atom::ValuePath),
        ("attn", Atom::Attn),
        ("mlp", Atom::Mlp),
        ("in_proj", Atom::InProj),
        ("out_proj", Atom::OutProj),
        ("c_fc", Atom::CFc),
        ("c_proj", Atom::CProj),
        ("blocks", Atom::Blocks),
        ("embed", Atom::Embed),
        ("token_embedding", Atom::TokenEmbedding),
        ("patch_embedding", Atom::PatchEmbedding),
        ("projection", Atom::Projection),
        ("dinoiser", Atom::Dinoiser),
    ];

    fn parse(s: &str) -> Result<Atom> {
        if let Some(n) = s.strip_prefix("block") {
            if let Ok(i) = n.parse::<usize>() {
                return Ok(Atom::Block(i));
            }
        }
        Atom::NAMES
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, a)| *a)
            .ok_or_else(|| {
                let all: Vec<&str> = Atom::NAMES.iter().map(|(n, _)| *n).collect();
                Error::invalid(
                    "recipe",
                    format!("`{s}` is not a tensor group ({}, blockN)", all.join(", ")),
                )
            })
    }

    fn name(self) -> String {
        match self {
            Atom::Block(i) => format!("block{i}"),
            a => Atom::NAMES
                .iter()
                .find(|(_, b)| *b == a)
                .map(|(n, _)| n.to_string())
                .unwrap_or_default(),
        }
    }
}

/// What a tensor name says about the tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TensorInfo {
    vision: bool,
    text: bool,
    block: Option<usize>,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    InProj,
    OutProj,
    CFc,
    CProj,
    Token,
    Patch,
    Projection,
    Dinoiser,
    Other,
}

fn info(name: &str) -> TensorInfo {
    let dinoiser = name.starts_with("dinoiser.");
    let vision = name.starts_with("visual.");
    let block = name
        .split_once("resblocks.")
        .and_then(|(_, rest)| rest.split('.').next())
        .and_then(|i| i.parse().ok());
    let kind = if dinoiser {
        Kind::Dinoiser
    } else if name.ends_with("in_proj_weight") {
        Kind::InProj
    } else if name.ends_with("out_proj.weight") {
        Kind::OutProj
    } else if name.ends_with("c_fc.weight") {
        Kind::CFc
    } else if name.ends_with("c_proj.weight") {
        Kind::CProj
    } else if name == "token_embedding.weight" {
        Kind::Token
    } else if name == "visual.conv1.weight" {
        Kind::Patch
    } else if name.starts_with("visual.proj") || name.starts_with("text_projection") {
        Kind::Projection
    } else {
        Kind::Other
    };
    TensorInfo {
        vision,
        text: !vision && !dinoiser,
        block,
        kind,
    }
}

/// A conjunction of atoms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector(Vec<Atom>);

impl Selector {
    fn matches(&self, t: &TensorInfo, l: &Layout) -> bool {
        self.0.iter().all(|a| {
            let layers = if t.vision {
                l.vision_layers
            } else {
                l.text_layers
            };
            let in_block = |b: usize| t.block == Some(b);
            match *a {
                Atom::Vision => t.vision,
                Atom::Text => t.text,
                Atom::First => in_block(0),
                Atom::Last => layers > 0 && in_block(layers - 1),
                Atom::Block(i) => in_block(i),
                Atom::HeadBlock => t.vision && in_block(l.head_layer),
                Atom::ValuePath => t.vision && layers > 0 && in_block(layers - 1),
                Atom::Attn => matches!(t.kind, Kind::InProj | Kind::OutProj),
                Atom::Mlp => matches!(t.kind, Kind::CFc | Kind::CProj),
                Atom::InProj => t.kind == Kind::InProj,
                Atom::OutProj => t.kind == Kind::OutProj,
                Atom::CFc => t.kind == Kind::CFc,
                Atom::CProj => t.kind == Kind::CProj,
                Atom::Blocks => t.block.is_some(),
                Atom::Embed => matches!(t.kind, Kind::Token | Kind::Patch),
                Atom::TokenEmbedding => t.kind == Kind::Token,
                Atom::PatchEmbedding => t.kind == Kind::Patch,
                Atom::Projection => t.kind == Kind::Projection,
                Atom::Dinoiser => t.kind == Kind::Dinoiser,
            }
        })
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|a| a.name()).collect();
        f.write_str(&parts.join("."))
    }
}

/// A base format plus per-group overrides (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    pub base: Quant,
    pub rules: Vec<(Selector, Quant)>,
}

impl Recipe {
    /// Named recipes, measured in QUANTIZATION.md. `default` is what the published bundle uses:
    /// on the full-size model with realistic statistics no smaller recipe measured kept the
    /// label maps within a point of Q8_0's and the text embeddings at cosine ≥ 0.999.
    pub const NAMED: [(&'static str, &'static str); 1] = [("default", "q8_0")];

    /// Every matrix in `q` (the bundle of `clipdino convert --quant q` before recipes existed).
    pub fn uniform(q: Quant) -> Self {
        Self {
            base: q,
            rules: vec![],
        }
    }

    /// The named recipe `name`, if any.
    pub fn named(name: &str) -> Option<Recipe> {
        Self::NAMED
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| r.parse().expect("named recipes parse"))
    }

    /// The format of tensor `name` (a bundle name: `visual.proj_t`, flattened conv1, …) whose
    /// rows hold `row_len` values, after the row-length fallbacks.
    pub fn format_for(&self, name: &str, row_len: usize, layout: &Layout) -> Quant {
        let t = info(name);
        let chosen = if is_matrix(name) || is_head_weight(name) {
            let mut q = if is_matrix(name) {
                self.base
            } else {
                self.base.other()
            };
            for (sel, f) in &self.rules {
                if sel.matches(&t, layout) {
                    q = *f;
                }
            }
            q
        } else {
            self.base.other()
        };
        chosen.for_row_len(row_len)
    }

    /// Whether any rule touches the head weights (then `obj_proj` is stored flattened).
    pub fn stores_head(&self) -> bool {
        self.rules
            .iter()
            .any(|(s, q)| s.0.contains(&Atom::Dinoiser) && *q != Quant::F32)
    }
}

impl std::fmt::Display for Recipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.base)?;
        for (s, q) in &self.rules {
            write!(f, ",{s}={q}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Recipe {
    type Err = Error;
    /// `base[,selector=format]*`, or a name of [`Recipe::NAMED`].
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if let Some((_, r)) = Self::NAMED.iter().find(|(n, _)| n.eq_ignore_ascii_case(s)) {
            return r.parse();
        }
        let mut parts = s.split(',').map(str::trim);
        let base: Quant = parts
            .next()
            .unwrap_or_default()
            .parse()
            .map_err(|e| match e {
                Error::InvalidInput { detail, .. } => Error::invalid(
                    "recipe",
                    format!(
                        "{detail}, nor a named recipe ({})",
                        Self::NAMED.map(|(n, _)| n).join(", ")
                    ),
                ),
                e => e,
            })?;
        let mut rules = Vec::new();
        for p in parts {
            let (sel, q) = p.split_once('=').ok_or_else(|| {
                Error::invalid(
                    "recipe",
                    format!("`{p}` is not `group=format` (e.g. `attn=q6_k`)"),
                )
            })?;
            let atoms = sel
                .trim()
                .split('.')
                .map(|a| Atom::parse(a.trim()))
                .collect::<Result<Vec<_>>>()?;
            rules.push((Selector(atoms), q.trim().parse()?));
        }
        Ok(Recipe { base, rules })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIT_B: Layout = Layout {
        vision_layers: 12,
        text_layers: 12,
        head_layer: 9,
    };

    fn fmt(r: &Recipe, name: &str) -> Quant {
        r.format_for(name, 768, &VIT_B)
    }

    #[test]
    fn rules_select_groups_and_later_rules_win() {
        let r: Recipe =
            "q4_k,attn=q5_k,vision.first=q8_0,text.mlp=q6_k,dinoiser=f16,value_path.c_proj=f16"
                .parse()
                .unwrap();
        let v = |b: usize, t: &str| format!("visual.transformer.resblocks.{b}.{t}");
        assert_eq!(fmt(&r, &v(3, "mlp.c_fc.weight")), Quant::Q4K);
        assert_eq!(fmt(&r, &v(3, "attn.in_proj_weight")), Quant::Q5K);
        assert_eq!(fmt(&r, &v(0, "attn.out_proj.weight")), Quant::Q8_0);
        assert_eq!(fmt(&r, &v(0, "mlp.c_fc.weight")), Quant::Q8_0);
        assert_eq!(fmt(&r, &v(11, "mlp.c_proj.weight")), Quant::F16);
        assert_eq!(fmt(&r, &v(11, "mlp.c_fc.weight")), Quant::Q4K);
        assert_eq!(
            fmt(&r, "transformer.resblocks.0.mlp.c_fc.weight"),
            Quant::Q6K
        );
        assert_eq!(
            fmt(&r, "transformer.resblocks.0.attn.in_proj_weight"),
            Quant::Q5K
        );
        assert_eq!(fmt(&r, "token_embedding.weight"), Quant::Q4K);
        assert_eq!(fmt(&r, "dinoiser.obj_proj.weight"), Quant::F16);
        // not matrices: f32 whatever the rules
        assert_eq!(fmt(&r, &v(0, "ln_1.weight")), Quant::F32);
        assert_eq!(fmt(&r, "visual.positional_embedding"), Quant::F32);
        assert_eq!(fmt(&r, "dinoiser.obj_proj.bias"), Quant::F32);
        assert!(r.stores_head());
        // display round-trips
        assert_eq!(r.to_string().parse::<Recipe>().unwrap(), r);
    }

    #[test]
    fn head_block_and_value_path_are_vision_only() {
        let r: Recipe = "q4_0,head_block=q8_0,value_path=q6_k".parse().unwrap();
        assert_eq!(
            fmt(&r, "visual.transformer.resblocks.9.attn.in_proj_weight"),
            Quant::Q8_0
        );
        assert_eq!(
            fmt(&r, "transformer.resblocks.9.attn.in_proj_weight"),
            Quant::Q4_0
        );
        assert_eq!(
            fmt(&r, "visual.transformer.resblocks.11.mlp.c_fc.weight"),
            Quant::Q6K
        );
        assert_eq!(
            fmt(&r, "transformer.resblocks.11.mlp.c_fc.weight"),
            Quant::Q4_0
        );
        assert_eq!(fmt(&r, "dinoiser.obj_proj.weight"), Quant::F32);
        assert!(!r.stores_head());
    }

    #[test]
    fn rows_that_do_not_split_into_blocks_fall_back_to_a_larger_format() {
        let cases = [
            (Quant::Q6K, 64, Quant::Q8_0),
            (Quant::Q5K, 64, Quant::Q5_1),
            (Quant::Q4K, 64, Quant::Q5_0),
            (Quant::Q4K, 48, Quant::F16),
            (Quant::Q4K, 512, Quant::Q4K),
            (Quant::Q8_0, 48, Quant::F16),
            (Quant::F32, 3, Quant::F32),
        ];
        for (q, n, want) in cases {
            assert_eq!(q.for_row_len(n), want, "{q} with rows of {n}");
            assert!(want.bits_per_value() >= q.bits_per_value() - 1e-9);
        }
    }

    #[test]
    fn named_recipes_parse_and_bad_ones_name_the_fault() {
        for (n, _) in Recipe::NAMED {
            assert!(Recipe::named(n).is_some());
            assert_eq!(n.parse::<Recipe>().unwrap(), Recipe::named(n).unwrap());
        }
        assert_eq!(
            "q4_0".parse::<Recipe>().unwrap(),
            Recipe::uniform(Quant::Q4_0)
        );
        for (bad, word) in [
            ("q3_k", "q3_k"),
            ("q4_k,attn", "attn"),
            ("q4_k,vison=q8_0", "vison"),
            ("q4_k,attn=q9", "q9"),
        ] {
            let e = bad.parse::<Recipe>().unwrap_err().to_string();
            assert!(e.contains(word), "{bad}: {e}");
        }
    }
}
