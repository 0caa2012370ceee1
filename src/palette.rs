//! Label colours. The colours themselves are the model crate's ([`clipdino::overlay::color`]:
//! its fixed palette, then golden-angle hues), so the page, the K-Means view and the CLI's
//! overlays agree. What is app-specific lives here: the grey of the background label and CSS
//! strings. A label keeps its colour slot for its lifetime (see `state::Label::slot`), so
//! editing or removing one label never recolours the others.

use clipdino::overlay;

/// Colour of the background label: a neutral dark grey that reads as "nothing" (no slot of
/// the palette is grey).
pub const BACKGROUND: [u8; 3] = [64, 64, 64];

/// Colour for slot `slot` (a label's slot, or a K-Means cluster number).
pub fn colour(slot: usize) -> [u8; 3] {
    overlay::color(u32::try_from(slot).unwrap_or(u32::MAX))
}

/// `#rrggbb` for CSS.
pub fn css(c: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_256_colours_are_pairwise_distinct() {
        let cs: Vec<[u8; 3]> = (0..256).map(colour).collect();
        for i in 0..cs.len() {
            assert_ne!(cs[i], BACKGROUND);
            for j in 0..i {
                assert_ne!(cs[i], cs[j], "slots {i} and {j}");
            }
        }
        assert_eq!(css([255, 0, 16]), "#ff0010");
    }

    #[test]
    fn slots_use_the_model_crate_colours() {
        assert_eq!(colour(0), overlay::PALETTE[0]);
        assert_eq!(colour(0), [230, 25, 75]);
        for slot in [1, 4, 31, 32, 33, 200] {
            assert_eq!(colour(slot), overlay::color(slot as u32), "slot {slot}");
            assert_eq!(css(colour(slot)), overlay::color_hex(slot as u32));
        }
        // The K-Means view's cluster 4 is the CLI's (pure blue in the crate's palette).
        assert_eq!(colour(4), [0, 0, 255]);
    }
}
