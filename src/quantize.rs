//! `lowbit quantize`: stream calibration activations through the model one decoder layer at a
//! time, quantize every linear of the layer with the chosen method, pack, and write an HF-style
//! directory (atomically: everything goes to a temporary directory renamed at the end).
//!
//! This file holds the methods and how a layer's linears are quantized with them; the pipeline
//! is in the submodules: [`options`] (settings, `--override`, checks), [`plan`] (every linear's
//! plan and the tables), [`layers`] (the layer loop), [`resume`] (fingerprint and checkpoint
//! choice), [`output`] (the written files), [`pipeline`] (the driver), [`combos`] (`lowbit
//! sweep`'s driver: several option sets from one calibration pass), [`budget`] (`--target-bpw`),
//! [`gguf`] (GGUF block types), `sequential` (`--true-sequential`).

pub mod budget;
mod combos;
mod compose;
pub mod gguf;
mod layers;
mod options;
mod output;
mod pipeline;
mod plan;
mod resume;
mod sequential;

pub use crate::quant::methods::Method;
pub(crate) use combos::{quantize_combos, Combo};
use compose::{pack, quantize_layer};

pub use gguf::{parse_block_type, parse_tensor_type, DEFAULT_GGUF_TYPE};
pub(crate) use layers::{calibrate_layer, check_finite_layer, check_finite_tail, layer_out};
pub use options::{validate, Options, Override};
pub use output::module_meta;
pub use pipeline::{quantize, Summary};
pub use plan::{plan_tables, TABLES};

use crate::gguf::GgmlType;
use crate::pack::Want;
use crate::quant::recipe::Core;

impl LinearPlan {
    /// What this plan asks of the output layout (the codes' width, group size and grid, a
    /// g_idx for GPTQ's act-order, vector quantization).
    pub fn want(&self, o: &Options) -> Want {
        let r = self.method.recipe();
        // Every GPTQ core writes a g_idx under --act-order, awq+gptq's included.
        let gptq = matches!(r.core, Core::Gptq(_));
        Want { bits: self.bits, group_size: self.group_size, grid: r.grid(), g_idx: gptq && o.act_order && !o.static_groups, vq: r.is_vq() }
    }
}

/// How one linear is quantized: method, bits and group size (after `--override`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearPlan {
    pub method: Method,
    pub bits: u8,
    pub group_size: usize,
    /// A llama.cpp block type: the codes live on its grid (`bits` / `group_size` unused).
    pub ty: Option<GgmlType>,
}

/// `--format`: the packed layout of the output (one type with [`crate::pack::Layout`], which
/// owns each layout's rules, tensors and sizes).
pub use crate::pack::Layout as Format;

pub use crate::quant::recipe::AwareWeight;
