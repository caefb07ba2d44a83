#![allow(dead_code)]
use std::path::PathBuf;

pub fn shared(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/")).join(rel)
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
