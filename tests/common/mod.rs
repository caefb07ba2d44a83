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

/// Run the lowbit binary in `cwd` with extra environment variables: exit code (-1 when killed by
/// a signal), stdout, stderr.
pub fn lowbit_env(cwd: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let mut c = std::process::Command::new(lowbit_bin());
    c.current_dir(cwd).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

/// A writable copy of the plain files of `src` in `dst`.
pub fn copy_dir(src: &std::path::Path, dst: &std::path::Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            let to = dst.join(e.file_name());
            std::fs::write(&to, std::fs::read(e.path()).unwrap()).unwrap();
        }
    }
}

/// Every entry under `dir` (hidden ones included) with its contents (`None` for directories,
/// the target for symbolic links): to show a refused command changed nothing.
pub fn snapshot(dir: &std::path::Path) -> std::collections::BTreeMap<std::path::PathBuf, Option<Vec<u8>>> {
    let mut m = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.file_type().is_symlink() {
                m.insert(p.clone(), Some(std::fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes()));
            } else if md.is_dir() {
                m.insert(p.clone(), None);
                stack.push(p);
            } else {
                m.insert(p.clone(), Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    m
}

/// Overwrite element `index` of F32 tensor `name` in a safetensors file with `value`.
pub fn poke_f32(file: &std::path::Path, name: &str, index: usize, value: f32) {
    let mut bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let t = &header[name];
    assert_eq!(t["dtype"], "F32", "{name}");
    let start = 8 + n + t["data_offsets"][0].as_u64().unwrap() as usize + 4 * index;
    assert!(start + 4 <= 8 + n + t["data_offsets"][1].as_u64().unwrap() as usize);
    bytes[start..start + 4].copy_from_slice(&value.to_le_bytes());
    std::fs::write(file, bytes).unwrap();
}

/// Names in `dir` that lowbit uses for its temporary directories and locks.
pub fn lowbit_litter(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".lowbit-") || n.contains("partial"))
        .collect()
}
