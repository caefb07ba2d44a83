//! lowbit: post-training quantization of LLM checkpoints on the CPU.
//!
//! Library layout: `config` + `arch` describe a model family, `weights` memory-maps checkpoints,
//! `model` runs the forward pass one decoder layer at a time, `eval` scores perplexity,
//! `quant/` holds one file per method, `pack/` one file per packed layout.

pub mod quant;
pub mod st_write;
