//! The sample photos shipped in `www/samples/` (sources and licences in `LICENSES.md` there).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Short id used in share links (`sample=chelsea`).
    pub id: &'static str,
    pub title: &'static str,
    /// Credit line shown under the photo.
    pub credit: &'static str,
    /// Labels that make a good first try.
    pub suggested: &'static str,
}

impl Sample {
    /// Site-relative URL of the photo.
    pub fn url(&self) -> String {
        format!("samples/{}.jpg", self.id)
    }

    pub fn thumb_url(&self) -> String {
        format!("samples/{}-thumb.jpg", self.id)
    }

    pub fn by_id(id: &str) -> Option<&'static Sample> {
        SAMPLES.iter().find(|s| s.id == id)
    }
}

pub const SAMPLES: [Sample; 6] = [
    Sample {
        id: "chelsea",
        title: "Chelsea the cat",
        credit: "Stefan van der Walt, CC0 (scikit-image)",
        suggested: "cat, wall, floor",
    },
    Sample {
        id: "coffee",
        title: "Coffee cup",
        credit: "Rachel Michetti, CC0 (scikit-image)",
        suggested: "coffee cup, saucer, spoon, table",
    },
    Sample {
        id: "astronaut",
        title: "Astronaut Eileen Collins",
        credit: "NASA, public domain (scikit-image)",
        suggested: "person, flag, rocket, background",
    },
    Sample {
        id: "rocket",
        title: "DSCOVR launch",
        credit: "SpaceX, public domain (scikit-image)",
        suggested: "rocket, smoke, sky, trees",
    },
    Sample {
        id: "china",
        title: "Summer Palace, Beijing",
        credit: "danielbuechele, CC BY 2.0 (scikit-learn)",
        suggested: "temple, tree, sky, lamp",
    },
    Sample {
        id: "flower",
        title: "Flower",
        credit: "vultilion, CC BY 2.0 (scikit-learn)",
        suggested: "flower, leaves, background",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_file_exists_and_is_small() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/www/");
        for s in SAMPLES {
            for rel in [s.url(), s.thumb_url()] {
                let meta = std::fs::metadata(format!("{root}{rel}"))
                    .unwrap_or_else(|e| panic!("{rel}: {e}"));
                assert!(meta.len() <= 200 * 1024, "{rel} is {} bytes", meta.len());
            }
            assert_eq!(Sample::by_id(s.id), Some(&s));
        }
        let licences = std::fs::read_to_string(format!("{root}samples/LICENSES.md")).unwrap();
        for s in SAMPLES {
            assert!(
                licences.contains(&format!("`{}.jpg`", s.id)),
                "{} has no licence entry",
                s.id
            );
        }
    }
}
