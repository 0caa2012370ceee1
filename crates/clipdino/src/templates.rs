//! Prompt templates for label embeddings (METHOD.md §5) and the benchmark class-name lists.
//!
//! The templates are open_clip's `open_clip/zero_shot_metadata.py`: the 80
//! `OPENAI_IMAGENET_TEMPLATES` of the CLIP paper and its 7-prompt subset
//! `SIMPLE_IMAGENET_TEMPLATES`, copied verbatim with the label slot written as `{}`.
//! The class-name lists are the `CLASSES` of the datasets the CLIP-DINOiser evaluation uses
//! (its `segmentation/datasets/*.py` and mmsegmentation's ADE20K / Cityscapes), one name per
//! line in `assets/classes/`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Which prompt templates to average per label. Serialised (JSON, clap) as `full` / `fast`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum TemplateSet {
    /// The 80 ImageNet templates of the CLIP paper (`OPENAI_IMAGENET_TEMPLATES`).
    #[default]
    Full,
    /// The 7-template subset (`SIMPLE_IMAGENET_TEMPLATES`), about 11× cheaper.
    Fast,
}

/// The slot a label is written into.
pub const LABEL_SLOT: &str = "{}";

/// open_clip `OPENAI_IMAGENET_TEMPLATES`, in upstream order.
pub const OPENAI_IMAGENET_TEMPLATES: [&str; 80] = [
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
];

/// open_clip `SIMPLE_IMAGENET_TEMPLATES`, in upstream order.
pub const SIMPLE_IMAGENET_TEMPLATES: [&str; 7] = [
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
];

impl TemplateSet {
    pub const ALL: [TemplateSet; 2] = [TemplateSet::Full, TemplateSet::Fast];

    /// The templates, each with one `{}` slot.
    pub fn templates(&self) -> &'static [&'static str] {
        match self {
            TemplateSet::Full => &OPENAI_IMAGENET_TEMPLATES,
            TemplateSet::Fast => &SIMPLE_IMAGENET_TEMPLATES,
        }
    }

    /// Every template with `label` written into its slot (Python's `template.format(label)`).
    pub fn apply(&self, label: &str) -> Vec<String> {
        self.templates()
            .iter()
            .map(|t| t.replacen(LABEL_SLOT, label, 1))
            .collect()
    }

    /// `"full"` or `"fast"` (what `FromStr` accepts).
    pub fn name(&self) -> &'static str {
        match self {
            TemplateSet::Full => "full",
            TemplateSet::Fast => "fast",
        }
    }

    pub fn len(&self) -> usize {
        self.templates().len()
    }

    pub fn is_empty(&self) -> bool {
        self.templates().is_empty()
    }
}

impl fmt::Display for TemplateSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TemplateSet {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "full" | "80" => Ok(TemplateSet::Full),
            "fast" | "7" => Ok(TemplateSet::Fast),
            other => Err(Error::invalid(
                "templates",
                format!("{other:?} is not a template set (use \"full\" or \"fast\")"),
            )),
        }
    }
}

/// A benchmark's class-name list (`assets/classes/<id>.txt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClassList {
    /// File stem and CLI name, e.g. `"voc21"`.
    pub id: &'static str,
    /// Human-readable name.
    pub title: &'static str,
    /// Whether the first class is `background` (the DINOiser background rule applies to
    /// VOC21 and COCO-Object only, METHOD.md §6).
    pub has_background: bool,
    text: &'static str,
}

impl ClassList {
    /// The class names, in label-index order.
    pub fn names(&self) -> Vec<&'static str> {
        self.text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.names().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Looks a list up by id (`voc21`, `context60`, `coco_object`, `coco_stuff`, `ade20k`,
    /// `cityscapes`).
    pub fn by_id(id: &str) -> Option<ClassList> {
        CLASS_LISTS
            .iter()
            .copied()
            .find(|c| c.id.eq_ignore_ascii_case(id.trim()))
    }
}

/// Every shipped class-name list.
pub const CLASS_LISTS: [ClassList; 6] = [
    ClassList {
        id: "voc21",
        title: "PASCAL VOC (20 classes + background)",
        has_background: true,
        text: include_str!("../assets/classes/voc21.txt"),
    },
    ClassList {
        id: "context60",
        title: "PASCAL Context (59 classes + background)",
        has_background: true,
        text: include_str!("../assets/classes/context60.txt"),
    },
    ClassList {
        id: "coco_object",
        title: "COCO-Object (80 things + background)",
        has_background: true,
        text: include_str!("../assets/classes/coco_object.txt"),
    },
    ClassList {
        id: "coco_stuff",
        title: "COCO-Stuff (171 classes)",
        has_background: false,
        text: include_str!("../assets/classes/coco_stuff.txt"),
    },
    ClassList {
        id: "ade20k",
        title: "ADE20K (150 classes)",
        has_background: false,
        text: include_str!("../assets/classes/ade20k.txt"),
    },
    ClassList {
        id: "cityscapes",
        title: "Cityscapes (19 classes)",
        has_background: false,
        text: include_str!("../assets/classes/cityscapes.txt"),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_counts_and_slots() {
        assert_eq!(TemplateSet::Full.len(), 80);
        assert_eq!(TemplateSet::Fast.len(), 7);
        for set in TemplateSet::ALL {
            for t in set.templates() {
                assert_eq!(t.matches(LABEL_SLOT).count(), 1, "{t}");
            }
        }
        // The fast set is a subset of the full one.
        for t in TemplateSet::Fast.templates() {
            assert!(OPENAI_IMAGENET_TEMPLATES.contains(t), "{t}");
        }
    }

    #[test]
    fn apply_and_parse() {
        let p = TemplateSet::Fast.apply("cat");
        assert_eq!(p[0], "itap of a cat.");
        assert_eq!(p[4], "a cat in a video game.");
        assert_eq!(TemplateSet::Full.apply("dog")[0], "a bad photo of a dog.");
        // A label holding "{}" is inserted literally, as Python's str.format does.
        assert_eq!(TemplateSet::Fast.apply("{}")[0], "itap of a {}.");
        assert_eq!("full".parse::<TemplateSet>().unwrap(), TemplateSet::Full);
        assert_eq!(" Fast ".parse::<TemplateSet>().unwrap(), TemplateSet::Fast);
        assert!("medium".parse::<TemplateSet>().is_err());
        for set in TemplateSet::ALL {
            assert_eq!(set.name().parse::<TemplateSet>().unwrap(), set);
            assert_eq!(set.to_string(), set.name());
        }
    }

    #[test]
    fn class_lists() {
        let expect = [
            ("voc21", 21),
            ("context60", 60),
            ("coco_object", 81),
            ("coco_stuff", 171),
            ("ade20k", 150),
            ("cityscapes", 19),
        ];
        for (id, n) in expect {
            let list = ClassList::by_id(id).unwrap();
            let names = list.names();
            assert_eq!(names.len(), n, "{id}");
            assert_eq!(names[0] == "background", list.has_background, "{id}");
            let mut unique = names.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), n, "{id} has duplicate names");
        }
        assert!(ClassList::by_id("nope").is_none());
        assert_eq!(ClassList::by_id("VOC21").unwrap().names()[20], "tvmonitor");
    }
}
