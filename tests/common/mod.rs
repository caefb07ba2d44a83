#![allow(dead_code)]
use std::path::PathBuf;

/// A path in ../shared (the test models and texts beside the checkout). A missing one stops the
/// test with one line saying what is missing and where it was looked for.
pub fn shared(rel: &str) -> PathBuf {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/")).join(rel);
    if !p.exists() {
        panic!("missing test data {}: the tests need ../shared (models and texts) beside the checkout; see README.md", p.display());
    }
    p
}
pub fn stories() -> PathBuf {
    shared("models/stories260K")
}
pub fn tinystories_text() -> PathBuf {
    shared("data/tinystories/TinyStories-valid.partial.txt")
}
pub fn lowbit_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lowbit"))
}
/// Run the lowbit binary: exit code (-1 when killed), stdout, stderr.
pub fn lowbit(args: &[&str]) -> (i32, String, String) {
    let o = std::process::Command::new(lowbit_bin()).args(args).output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

/// Deterministic pseudo-random numbers for test data (xorshift64).
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Uniform in [-1, 1) with 24 random bits.
    pub fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    /// `n` values on the grid -1, -0.999, ..., 1.
    pub fn f32s(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| (self.next() % 2001) as f32 / 1000.0 - 1.0).collect()
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A plain progress line (stderr is not a terminal here), e.g. `quantizing: 2/5 (0 s)`.
pub fn is_progress(l: &str) -> bool {
    l.split_once(": ").is_some_and(|(what, rest)| {
        what.chars().all(|c| c.is_ascii_lowercase() || c == ' ')
            && rest.ends_with(" s)")
            && rest.split_once(' ').is_some_and(|(n, _)| n.split('/').all(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())))
    })
}
