//! File input and output for the CLI: reading inputs with clear errors, label-map PNGs, and
//! writes that never leave half-written files. Photos are read by `crate::photo`.

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::photo;

/// Read a whole input file; a missing, unreadable or empty file is an error naming it.
pub fn read_input(path: &Path, what: &str) -> Result<Vec<u8>> {
    let meta = fs::metadata(path)
        .map_err(|e| anyhow!("cannot read {what} {}: {}", path.display(), io_words(&e)))?;
    if meta.is_dir() {
        bail!("{what} {} is a directory, not a file", path.display());
    }
    let bytes = fs::read(path)
        .map_err(|e| anyhow!("cannot read {what} {}: {}", path.display(), io_words(&e)))?;
    if bytes.is_empty() {
        bail!("{what} {} is empty (0 bytes)", path.display());
    }
    Ok(bytes)
}

/// `std::io::Error` text without the trailing "(os error N)".
pub fn io_words(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

// --- label maps ------------------------------------------------------------------------

/// A label image: one class index per pixel, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMap {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u32>,
}

/// Read a PNG label image: indexed (palette indices are the labels) or greyscale (grey values are
/// the labels), 1–16 bits. RGB masks are refused: their colours would need a palette to decode.
pub fn read_label_png(path: &Path) -> Result<LabelMap> {
    let bytes = read_input(path, "label image")?;
    let name = path.display().to_string();
    let mut dec = png::Decoder::new(Cursor::new(&bytes[..]));
    dec.set_transformations(png::Transformations::IDENTITY);
    let mut reader = dec
        .read_info()
        .map_err(|e| anyhow!("{name} is not a PNG label image: {e}"))?;
    let (w, h) = (reader.info().width, reader.info().height);
    photo::check_size(w as u64, h as u64, &name)?;
    let (color, depth) = reader.output_color_type();
    if !matches!(color, png::ColorType::Indexed | png::ColorType::Grayscale) {
        bail!(
            "{name} is a {color:?} PNG; label images must be indexed (palette) or greyscale, one class index per pixel"
        );
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| anyhow!("{name}: image too large"))?;
    let mut buf = vec![0u8; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| anyhow!("{name} is not a valid PNG: {e}"))?;
    let (w, h) = (w as usize, h as usize);
    let bits = depth as usize;
    let mut data = Vec::with_capacity(w * h);
    for y in 0..h {
        let row = &buf[y * info.line_size..(y + 1) * info.line_size];
        for x in 0..w {
            let v = match bits {
                16 => u16::from_be_bytes([row[2 * x], row[2 * x + 1]]) as u32,
                8 => row[x] as u32,
                // Sub-byte depths pack pixels from the most significant bit.
                b => {
                    let per = 8 / b;
                    let byte = row[x / per];
                    let shift = 8 - b * (x % per + 1);
                    ((byte >> shift) & ((1u8 << b) - 1)) as u32
                }
            };
            data.push(v);
        }
    }
    Ok(LabelMap {
        width: w,
        height: h,
        data,
    })
}

/// Encode a label map as PNG: 8-bit indexed with `palette` (RGB triples) when every label fits
/// in a byte, otherwise 16-bit greyscale.
pub fn encode_label_png(map: &LabelMap, palette: &[[u8; 3]]) -> Result<Vec<u8>> {
    let max = map.data.iter().copied().max().unwrap_or(0);
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, map.width as u32, map.height as u32);
        let data: Vec<u8> = if max < 256 {
            enc.set_color(png::ColorType::Indexed);
            enc.set_depth(png::BitDepth::Eight);
            let n = (max as usize + 1).max(1);
            let mut pal = Vec::with_capacity(3 * n);
            for i in 0..n {
                let c = palette
                    .get(i % palette.len().max(1))
                    .copied()
                    .unwrap_or([0; 3]);
                pal.extend_from_slice(&c);
            }
            enc.set_palette(pal);
            map.data.iter().map(|&v| v as u8).collect()
        } else {
            enc.set_color(png::ColorType::Grayscale);
            enc.set_depth(png::BitDepth::Sixteen);
            map.data
                .iter()
                .flat_map(|&v| (v.min(u16::MAX as u32) as u16).to_be_bytes())
                .collect()
        };
        let mut writer = enc.write_header().context("encoding PNG")?;
        writer.write_image_data(&data).context("encoding PNG")?;
        writer.finish().context("encoding PNG")?;
    }
    Ok(out)
}

// --- outputs ---------------------------------------------------------------------------

fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.part{}", std::process::id()))
}

/// Check, before any expensive work, that `path` can be written: its directory exists and
/// accepts a new file. Nothing is left behind.
pub fn check_writable_file(path: &Path, what: &str) -> Result<()> {
    if path.is_dir() {
        bail!("{what} {} is a directory; give a file name", path.display());
    }
    let tmp = temp_name(path);
    fs::write(&tmp, b"")
        .map_err(|e| anyhow!("cannot write {what} {}: {}", path.display(), io_words(&e)))?;
    let _ = fs::remove_file(&tmp);
    Ok(())
}

/// Write `bytes` to a temporary file next to `path`, then rename it over `path`, so `path` is
/// never seen half-written.
pub fn write_atomic(path: &Path, bytes: &[u8], what: &str) -> Result<()> {
    let tmp = temp_name(path);
    let res = fs::write(&tmp, bytes).and_then(|_| fs::rename(&tmp, path));
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        bail!("cannot write {what} {}: {}", path.display(), io_words(&e));
    }
    Ok(())
}

/// An output directory holding several files (`--dump`, `random-weights --out`). Created and
/// probed for writability up front; files are all staged under temporary names and renamed only
/// when every one was written, and a directory created by us is removed again on failure.
pub struct OutputDir {
    dir: PathBuf,
    created: bool,
    what: &'static str,
}

impl OutputDir {
    pub fn prepare(dir: &Path, what: &'static str) -> Result<Self> {
        if dir.exists() && !dir.is_dir() {
            bail!("{what} {} exists and is not a directory", dir.display());
        }
        let created = !dir.exists();
        if created {
            fs::create_dir_all(dir)
                .map_err(|e| anyhow!("cannot create {what} {}: {}", dir.display(), io_words(&e)))?;
        }
        let out = Self {
            dir: dir.to_path_buf(),
            created,
            what,
        };
        let probe = dir.join(format!(".probe{}", std::process::id()));
        if let Err(e) = fs::write(&probe, b"") {
            out.abandon();
            bail!(
                "cannot write into {what} {}: {}",
                dir.display(),
                io_words(&e)
            );
        }
        let _ = fs::remove_file(&probe);
        Ok(out)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Remove the directory again if we created it (it holds nothing of ours).
    pub fn abandon(&self) {
        if self.created {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    /// Write every file, or none.
    pub fn commit(self, files: &[(&str, Vec<u8>)]) -> Result<()> {
        let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
        let cleanup = |staged: &[(PathBuf, PathBuf)]| {
            for (tmp, _) in staged {
                let _ = fs::remove_file(tmp);
            }
        };
        for (name, bytes) in files {
            let target = self.dir.join(name);
            let tmp = temp_name(&target);
            if let Err(e) = fs::write(&tmp, bytes) {
                let _ = fs::remove_file(&tmp);
                cleanup(&staged);
                self.abandon();
                bail!(
                    "cannot write {} in {} {}: {}",
                    name,
                    self.what,
                    self.dir.display(),
                    io_words(&e)
                );
            }
            staged.push((tmp, target));
        }
        for (tmp, target) in &staged {
            if let Err(e) = fs::rename(tmp, target) {
                cleanup(&staged);
                self.abandon();
                bail!("cannot write {}: {}", target.display(), io_words(&e));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("clipdino-files-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn label_png_round_trip_indexed_and_16_bit() {
        let d = tmpdir("png");
        let pal = [[0, 0, 0], [128, 0, 0], [0, 128, 0]];
        for max in [2u32, 299] {
            let map = LabelMap {
                width: 3,
                height: 2,
                data: vec![0, 1, 2, max, 1, 0],
            };
            let p = d.join(format!("m{max}.png"));
            fs::write(&p, encode_label_png(&map, &pal).unwrap()).unwrap();
            assert_eq!(read_label_png(&p).unwrap(), map);
        }
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn sub_byte_grey_png_is_unpacked() {
        let d = tmpdir("grey2");
        let p = d.join("g.png");
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, 5, 1);
            enc.set_color(png::ColorType::Grayscale);
            enc.set_depth(png::BitDepth::Two);
            let mut w = enc.write_header().unwrap();
            // pixels 0 1 2 3 | 1 → 0b00_01_10_11, 0b01_000000
            w.write_image_data(&[0b0001_1011, 0b0100_0000]).unwrap();
        }
        fs::write(&p, out).unwrap();
        assert_eq!(read_label_png(&p).unwrap().data, vec![0, 1, 2, 3, 1]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn output_dir_commits_all_or_removes_itself() {
        let d = tmpdir("outdir");
        let sub = d.join("new");
        let out = OutputDir::prepare(&sub, "dump directory").unwrap();
        out.commit(&[("a.npy", vec![1]), ("b.npy", vec![2])])
            .unwrap();
        let mut names: Vec<_> = fs::read_dir(&sub)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["a.npy", "b.npy"]);
        // A file name that cannot be created: nothing is left, and the new dir is removed.
        let sub2 = d.join("new2");
        let out = OutputDir::prepare(&sub2, "dump directory").unwrap();
        assert!(out
            .commit(&[("ok.npy", vec![1]), ("no/such/x.npy", vec![2])])
            .is_err());
        assert!(!sub2.exists());
        fs::remove_dir_all(&d).unwrap();
    }
}
