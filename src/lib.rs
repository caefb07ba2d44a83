//! lowbit: post-training quantization of LLM checkpoints on the CPU.
//!
//! Module map:
//! * Models: `config` (a checkpoint's config.json) + `arch` (model families as tables of their
//!   linears and scale groups), `weights` (memory-mapped safetensors checkpoints), `tokenizer`,
//!   `model` (the forward pass one decoder layer at a time) with `attention`, `rope` and `linalg`
//!   (its kernels), `qmodel` (opening possibly quantized checkpoints, `inspect`), `gguf/`
//!   (llama.cpp files: reader, block types, import, export).
//! * Quantization: `quant/` (one file per method with its recipe, the grid trait in
//!   `quant/grid.rs`, the method registry in `quant/methods.rs`), `codes` (the code types methods
//!   produce and layouts store), `pack/` (one file per packed layout; which layout reads a
//!   checkpoint),
//!   `stats` (calibration statistics), `calib` (calibration windows), `quantize` + `quantize/`
//!   (the method registry and the pipeline: options, plan, layer loop, resume, output, budget
//!   planner, sweep's driver), `checkpoint` (crash-safe per-layer progress), `outdir` (the atomic,
//!   locked output directory), `st_write` (safetensors writing).
//! * Evaluation: `eval` (perplexity, KL divergence), `sweep` (every method × bits, scored and
//!   reported), `plot` (the sweep's SVG), `cuda/` + `verify` (GPU kernels checked against the CPU
//!   reference).
//! * Support: `events` (how the library reports progress and warnings: only the binary prints),
//!   `named` (the names enums take on the command line), `escape` (untrusted text in messages), `mem` (memory statistics), `fuzz` (fuzz harnesses),
//!   `cli` (the command line: argument parsing and printing).

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
pub mod events;
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
