//! Helpers shared by the CLI's process tests: the binary, scratch folders, fixtures, the tiny
//! random model, and the one-line-error check. Not every test file uses every helper.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub const BIN: &str = env!("CARGO_BIN_EXE_clipdino");

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn fixture(p: &str) -> PathBuf {
    repo().join("tests/fixtures").join(p)
}

pub fn voc_image() -> PathBuf {
    fixture("voc/images/voc_sample.jpg")
}

/// `clipdino eval` of `model` (its weight flags) on the VOC-layout fixture (short side 64, fast
/// templates), then `extra`.
pub fn voc_eval_args(model: &[String], extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec!["eval".into()];
    a.extend(model.iter().cloned());
    for (flag, dir) in [
        ("--images", "voc/images"),
        ("--masks", "voc/masks"),
        ("--classes", "voc/classes.txt"),
    ] {
        a.extend([flag.to_string(), fixture(dir).display().to_string()]);
    }
    a.extend(["--short-side", "64", "--templates", "fast"].map(String::from));
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// A fresh scratch folder, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("clipdino-cli-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
    pub fn path(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
    pub fn s(&self, p: &str) -> String {
        self.path(p).display().to_string()
    }
    /// Every file below the folder, relative, sorted.
    pub fn files(&self) -> Vec<String> {
        fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
            for e in fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(base, &p, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap().display().to_string());
                }
            }
        }
        let mut v = Vec::new();
        walk(&self.0, &self.0, &mut v);
        v.sort();
        v
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(BIN).args(args).output().expect("run clipdino")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// A failed run with exactly one stderr line `error: …` containing every word of `words`.
#[track_caller]
pub fn one_line_error(o: &Output, words: &[&str]) -> String {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success\nstdout:\n{}\nstderr:\n{err}",
        stdout(o)
    );
    assert_ne!(o.status.code(), Some(0));
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr, got:\n{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for w in words {
        assert!(lines[0].contains(w), "error line lacks {w:?}: {}", lines[0]);
    }
    lines[0].to_string()
}

/// The tiny random model in the upstream formats, written once per test run (to a fixed place,
/// so runs do not pile up copies).
pub fn tiny() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("clipdino-cli-tiny-seed7");
        let _ = fs::remove_dir_all(&d);
        ok(&run(&[
            "random-weights",
            "--arch",
            "tiny",
            "--seed",
            "7",
            "--out",
            &d.display().to_string(),
        ]));
        d
    })
}
