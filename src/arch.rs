//! Model families as tables of their decoder-layer linears and AWQ scale groups.
//!
//! A scale group is a set of linears that read the same input, together with the operation that
//! produces that input (a norm or another linear). AWQ scales the input channels of the group and
//! folds the inverse scale into that producer; GPTQ/VPTQ share one Hessian per input.

use anyhow::{bail, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

pub const SUPPORTED: &[&str] = &["llama", "mistral", "qwen2", "qwen3"];

/// The inputs a decoder-layer linear can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    /// input_layernorm(h): read by q, k, v.
    AttnIn,
    /// attention output before o_proj.
    AttnOut,
    /// post_attention_layernorm(h): read by gate, up.
    MlpIn,
    /// silu(gate) * up: read by down.
    MlpAct,
}

/// What produces a scale group's input, i.e. where AWQ folds 1/s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Producer {
    /// A norm weight of the layer (name relative to the layer prefix).
    Norm(&'static str),
    /// A linear of the layer whose output rows feed the group.
    Linear(&'static str),
}

#[derive(Clone, Copy, Debug)]
pub struct LinearSpec {
    /// Name relative to `model.layers.N.`, without `.weight`. Whether it has a bias is the config's
    /// business ([`crate::config::ModelConfig::has_bias`]).
    pub name: &'static str,
    pub input: Input,
}

/// The module whose output AWQ's scale search scores a group's candidates by (AutoAWQ's
/// `module2inspect`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inspect {
    /// The group's own linears.
    Linears,
    /// The whole self-attention block, through o_proj.
    Attention,
    /// The whole MLP, through down_proj.
    Mlp,
}

#[derive(Clone, Copy, Debug)]
pub struct ScaleGroup {
    pub input: Input,
    pub producer: Producer,
    pub linears: &'static [&'static str],
    pub inspect: Inspect,
}

const LLAMA_LINEARS: &[LinearSpec] = &[
    LinearSpec { name: "self_attn.q_proj", input: Input::AttnIn },
    LinearSpec { name: "self_attn.k_proj", input: Input::AttnIn },
    LinearSpec { name: "self_attn.v_proj", input: Input::AttnIn },
    LinearSpec { name: "self_attn.o_proj", input: Input::AttnOut },
    LinearSpec { name: "mlp.gate_proj", input: Input::MlpIn },
    LinearSpec { name: "mlp.up_proj", input: Input::MlpIn },
    LinearSpec { name: "mlp.down_proj", input: Input::MlpAct },
];

/// AutoAWQ's groups for Llama-like layers. v→o is only valid when v and o have the same width
/// (no GQA); see [`Family::scale_groups`].
const LLAMA_GROUPS: &[ScaleGroup] = &[
    ScaleGroup {
        input: Input::AttnIn,
        producer: Producer::Norm("input_layernorm"),
        linears: &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        inspect: Inspect::Attention,
    },
    ScaleGroup {
        input: Input::AttnOut,
        producer: Producer::Linear("self_attn.v_proj"),
        linears: &["self_attn.o_proj"],
        inspect: Inspect::Linears,
    },
    ScaleGroup {
        input: Input::MlpIn,
        producer: Producer::Norm("post_attention_layernorm"),
        linears: &["mlp.gate_proj", "mlp.up_proj"],
        inspect: Inspect::Mlp,
    },
    ScaleGroup { input: Input::MlpAct, producer: Producer::Linear("mlp.up_proj"), linears: &["mlp.down_proj"], inspect: Inspect::Linears },
];

impl Family {
    pub fn from_model_type(t: &str) -> Result<Self> {
        Ok(match t {
            "llama" => Family::Llama,
            "mistral" => Family::Mistral,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            _ => bail!("unsupported model_type \"{t}\" (supported: {})", SUPPORTED.join(", ")),
        })
    }

    /// The `model_type` of this family.
    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
        }
    }

    /// The decoder-layer linears. All four families share Llama's seven; they differ in biases,
    /// q/k norms and attention windows, which the config carries.
    pub fn linears(self) -> &'static [LinearSpec] {
        LLAMA_LINEARS
    }

    /// Scale groups of this family (AutoAWQ's llama/mistral/qwen2/qwen3 tables are the same four;
    /// qwen3's q_norm/k_norm act on q/k's outputs, so scaling their shared input is exact). With grouped-query attention the v→o fold is not a per-channel
    /// rescale of o's input (v's rows are shared by several heads), so AutoAWQ skips it; so do we.
    pub fn scale_groups(self, gqa: bool) -> Vec<ScaleGroup> {
        LLAMA_GROUPS.iter().copied().filter(|g| !(gqa && g.input == Input::AttnOut)).collect()
    }
}
