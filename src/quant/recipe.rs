//! What a method is, as data: the statistics it needs, the grid its codes live on, the quantizer
//! at its end, whether AWQ's search runs in front, whether later layers see its quantized
//! outputs, and its CLI name and help. Every method file defines its recipe(s); combinations
//! (`awq+X`, `gptq+X`) are built from the parts ([`super::awq::then`], [`super::gptq::on`]), and
//! [`super::methods`] registers each under one line. The quantize hub asks the recipe.

use crate::codes::Grid;
use crate::named::Named;
use crate::stats::Needs;

/// The quantizer at the end of a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Core {
    /// Round every group to the nearest code of `grid` ([`super::grid::quantize`]); `aware`:
    /// the grid's fit weighted by the inputs' importance (`--aware-weight`).
    Round { grid: Grid, aware: bool },
    /// GPTQ's error feedback on `grid`'s codes ([`super::gptq::gptq_with`]).
    Gptq(Grid),
    /// VPTQ's vector quantization (no scalar grid).
    Vptq,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recipe {
    /// The `--method` name.
    pub name: &'static str,
    /// One line for `--help`.
    pub help: &'static str,
    /// AWQ's scale search runs in front of the core (and its clip search, on the affine grid).
    pub awq: bool,
    pub core: Core,
    /// Later layers should see this method's quantized outputs (GPTQ's sequential scheme).
    pub propagates: bool,
}

/// The per-input-channel importance that weights the aware quantizers' scale search.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum AwareWeight {
    /// diag(H) = E[x²]: the diagonal of the layer's output error (the default: better on
    /// stories260K and SmolLM2, docs/statsq-shift.md).
    MeanSq,
    /// E[|x|], AWQ's activation statistic.
    MeanAbs,
}

impl Named for AwareWeight {
    const ALL: &'static [Self] = &[AwareWeight::MeanSq, AwareWeight::MeanAbs];
    fn name(self) -> &'static str {
        match self {
            AwareWeight::MeanSq => "mean-sq",
            AwareWeight::MeanAbs => "mean-abs",
        }
    }
    fn help(self) -> &'static str {
        match self {
            AwareWeight::MeanSq => {
                "diag(H) = E[x²]: the diagonal of the layer's output error (the default: better on stories260K and SmolLM2, docs/statsq-shift.md)"
            }
            AwareWeight::MeanAbs => "E[|x|], AWQ's activation statistic",
        }
    }
}

impl Recipe {
    /// A method that rounds to `grid` (plain or aware), without AWQ and not propagating.
    pub const fn round(name: &'static str, help: &'static str, grid: Grid, aware: bool) -> Recipe {
        Recipe { name, help, awq: false, core: Core::Round { grid, aware }, propagates: false }
    }

    /// The scalar grid the codes live on (VPTQ, which has none, reports `Affine`).
    pub const fn grid(&self) -> Grid {
        match self.core {
            Core::Round { grid, .. } | Core::Gptq(grid) => grid,
            Core::Vptq => Grid::Affine,
        }
    }

    /// The grid's fit is weighted by the inputs' importance.
    pub const fn aware(&self) -> bool {
        matches!(self.core, Core::Round { aware: true, .. })
    }

    /// AWQ's clip search runs after its scale search (it scores RTN's affine grid).
    pub fn clip(&self) -> bool {
        self.awq && self.core != Core::Vptq && self.grid() == Grid::Affine
    }

    /// Vector quantization (stored in the VQ layout, lowbit format only).
    pub const fn is_vq(&self) -> bool {
        matches!(self.core, Core::Vptq)
    }

    /// Statistics the method reads from the calibration pass: AWQ's (`search_tokens` of whole
    /// windows, the clip sample), the aware fit's importance, GPTQ's / VPTQ's Hessian; on GGUF
    /// block grids (`gguf`) the block fit after AWQ's scaling is weighted by E[x²].
    pub fn needs(&self, aw: AwareWeight, gguf: bool, search_tokens: usize) -> Needs {
        let mut n = Needs::default();
        if self.awq {
            n = n.union(Needs { mean_abs: true, window_tokens: search_tokens, ..Needs::default() });
            if self.clip() {
                n.strided_rows = super::awq::CLIP_TOKENS;
            }
            if gguf && matches!(self.core, Core::Round { grid: Grid::Affine, .. }) {
                n.mean_sq = true;
            }
        }
        match self.core {
            Core::Round { aware: true, .. } => match aw {
                AwareWeight::MeanSq => n.mean_sq = true,
                AwareWeight::MeanAbs => n.mean_abs = true,
            },
            Core::Round { .. } => {}
            Core::Gptq(_) | Core::Vptq => n.hessian = true,
        }
        n
    }
}
