//! GGUF blocks inside lowbit's layer pipeline: one linear's blocks travel as a U8 tensor
//! `{prefix}.ggml_{type}` `[out, row_bytes]` (rows in HF order, not yet permuted), through the
//! layer checkpoints of `--resume`, to the GGUF writer ([`crate::gguf::export`]). The bytes are
//! exactly the GGUF tensor's data (docs/formats.md, "GGUF block types").
//!
//! [`to_groupq`] re-expresses the symmetric 32-blocks (Q8_0, Q5_0, Q4_0) as a [`GroupQ`] on the
//! affine grid (`w = (q − z)·s`, `z` the type's offset, `s = d`), which decodes to the same f32
//! values: `--format lowbit --gguf-type q4_0` writes the same codes in lowbit's layout.

use crate::codes::BlockQ;
use crate::codes::{Grid, GroupQ};
use crate::gguf::blocks::{self, Kind};
use crate::gguf::GgmlType;
use crate::st_write::OutTensor;
use anyhow::{bail, Result};

const TAG: &str = ".ggml_";

/// The pipeline tensor of one linear's blocks.
pub fn to_tensor(q: &BlockQ, prefix: &str) -> OutTensor {
    OutTensor::u8(format!("{prefix}{TAG}{}", q.ty.name().to_ascii_lowercase()), vec![q.rows, q.row_bytes()], q.data.clone())
}

/// `(prefix, blocks)` when `t` is such a tensor; its shape is checked against the type.
pub fn from_tensor(t: &OutTensor) -> Result<Option<(String, BlockQ)>> {
    let Some((prefix, ty)) = t.name.rsplit_once(TAG) else { return Ok(None) };
    let Some(ty) = GgmlType::parse(ty).filter(|t| Kind::of(*t).is_some()) else { bail!("{}: unknown block type", t.name) };
    let kind = Kind::of(ty).expect("checked");
    let [rows, rb] = t.shape[..] else { bail!("{}: shape {:?} is not 2-D", t.name, t.shape) };
    if !rb.is_multiple_of(kind.bytes) || t.data.len() != rows * rb {
        bail!("{}: {} bytes do not hold {rows} rows of {rb} bytes of {ty} blocks", t.name, t.data.len());
    }
    let cols = rb / kind.bytes * kind.block;
    Ok(Some((prefix.to_string(), BlockQ { ty, rows, cols, data: t.data.clone() })))
}

/// The same codes as an affine [`GroupQ`] (group 32, zero point = the type's offset), for the
/// symmetric 32-blocks; `None` for the others (their decode adds a min, or has sub-scales).
pub fn to_groupq(q: &BlockQ) -> Option<GroupQ> {
    let kind = q.kind();
    if kind.is_k() || kind.has_min {
        return None;
    }
    let nb = q.cols / kind.block;
    let mut g = GroupQ::new(q.rows, q.cols, kind.bits, kind.block, Grid::Affine, nb);
    g.zeros.fill(kind.off);
    for (i, b) in q.data.chunks_exact(kind.bytes).enumerate() {
        let blk = blocks::decode(&kind, b);
        g.scales[i] = blk.sub_affine(&kind, 0).0;
        g.codes[i * kind.block..(i + 1) * kind.block].copy_from_slice(&blk.q);
    }
    Some(g)
}
