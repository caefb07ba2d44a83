//! Quantization methods. Each method lives in its own file and turns an f32 weight matrix
//! `[out_features, in_features]` (row-major, as stored in HF checkpoints) into a [`QTensor`].

pub mod awq;
pub mod gguf;
pub mod gptq;
pub mod grid;
pub mod hessian;
pub mod kmeans;
pub mod methods;
pub mod recipe;
pub mod rtn;
pub mod shift;
pub mod statsq;
pub mod vptq;

pub use crate::codes::{grid_value, BlockQ, Grid, GroupQ, QTensor, VqQ};
