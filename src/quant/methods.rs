//! The method registry: every `--method` name, one line each, bound to its recipe (defined in the
//! method's own file, or composed from two: `awq::then`, `gptq::on`). The order is `--help`'s.

use super::recipe::Recipe;
use super::{awq, gptq, rtn, shift, statsq, vptq};
use crate::named::Named;

macro_rules! methods {
    ($($v:ident => $recipe:expr,)*) => {
        /// A registered method (its name, help and parts: [`Method::recipe`]).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
        pub enum Method {
            $($v,)*
        }

        impl Method {
            pub fn recipe(self) -> &'static Recipe {
                match self {
                    $(Method::$v => {
                        const R: Recipe = $recipe;
                        &R
                    })*
                }
            }
        }

        impl Named for Method {
            const ALL: &'static [Method] = &[$(Method::$v,)*];
            fn name(self) -> &'static str {
                self.recipe().name
            }
            fn help(self) -> &'static str {
                self.recipe().help
            }
        }
    };
}

methods! {
    Rtn => rtn::RTN,
    Awq => awq::AWQ,
    Statsq => statsq::STATSQ,
    StatsqAware => statsq::STATSQ_AWARE,
    AwqStatsq => awq::then(statsq::STATSQ_AWARE, "awq+statsq", "AWQ's scale search in front of statsq-aware"),
    GptqStatsq => gptq::on(statsq::STATSQ, "gptq+statsq", "GPTQ's error feedback on the StatsQ grid (scales from the diag(H)-weighted search)"),
    Shift => shift::SHIFT,
    ShiftAware => shift::SHIFT_AWARE,
    AwqShift => awq::then(shift::SHIFT_AWARE, "awq+shift", "AWQ's scale search in front of shift-aware"),
    GptqShift => gptq::on(shift::SHIFT, "gptq+shift", "GPTQ's error feedback on the shift grid (scales from the diag(H)-weighted search)"),
    Gptq => gptq::GPTQ,
    AwqGptq => awq::then(gptq::GPTQ, "awq+gptq", "AWQ's scale and clip transform of the layer, then GPTQ on the transformed weights (the Hessian of the scaled inputs)"),
    Vptq => vptq::VPTQ,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
