//! Label colours. A label keeps its colour slot for its lifetime (see `state::Label::slot`), so
//! editing or removing one label never recolours the others.

/// Sasha Trubetskoy's "20 simple, distinct colours" without white, black and grey.
const DISTINCT: [[u8; 3]; 19] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [250, 190, 212],
    [0, 128, 128],
    [220, 190, 255],
    [170, 110, 40],
    [255, 250, 200],
    [128, 0, 0],
    [170, 255, 195],
    [128, 128, 0],
    [255, 215, 180],
    [0, 0, 128],
];

/// Colour of the background label: a neutral dark grey that reads as "nothing".
pub const BACKGROUND: [u8; 3] = [64, 64, 64];

/// Colour for slot `slot`: the distinct list first, then golden-angle hues with alternating
/// saturation / value so that neighbours stay apart.
pub fn colour(slot: usize) -> [u8; 3] {
    if let Some(c) = DISTINCT.get(slot) {
        return *c;
    }
    let i = slot - DISTINCT.len();
    let hue = (i as f32 * 137.507_77 + 17.0) % 360.0;
    let (s, v) = match i % 3 {
        0 => (0.85, 0.95),
        1 => (0.55, 0.80),
        _ => (0.95, 0.60),
    };
    hsv_to_rgb(hue, s, v)
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> [u8; 3] {
    let c = v * s;
    let hp = h / 60.0;
    let x = c * (1.0 - (hp % 2.0 - 1.0).abs());
    let (r, g, b) = match hp as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    let q = |u: f32| ((u + m) * 255.0).round().clamp(0.0, 255.0) as u8;
    [q(r), q(g), q(b)]
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
}
