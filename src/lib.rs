//! lowbit: post-training quantization of LLM checkpoints on the CPU.
//!
//! Library layout: `config` + `arch` describe a model family, `weights` memory-maps checkpoints,
//! `model` runs the forward pass one decoder layer at a time, `eval` scores perplexity,
//! `quant/` holds one file per method, `pack/` one file per packed layout.

pub mod arch;
pub mod attention;
pub mod calib;
pub mod checkpoint;
pub mod cli;
pub mod codes;
pub mod config;
pub mod cuda;
pub mod escape;
pub mod eval;
pub mod fuzz;
pub mod gguf;
pub mod linalg;
pub mod mem;
pub mod model;
pub mod named;
pub mod outdir;
pub mod pack;
pub mod plot;
pub mod qmodel;
pub mod quant;
pub mod quantize;
pub mod rope;
pub mod st_write;
pub mod stats;
pub mod sweep;
pub mod tokenizer;
pub mod verify;
pub mod weights;
