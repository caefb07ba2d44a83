//! Dequantization of a GGUF tensor's bytes to f32, block by block, in parallel.

use super::{blocks, GgmlType};
use anyhow::{bail, Result};
use rayon::prelude::*;

fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Decode one block of `ty` (bytes `b`) into `out` (one block of elements).
fn decode_block(ty: GgmlType, b: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => out[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => out[0] = f16_at(b, 0),
        GgmlType::BF16 => out[0] = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16),
        _ => {
            let kind = blocks::Kind::of(ty).expect("decode_block called for a dequantizable type");
            blocks::decode(&kind, b).dequantize_into(&kind, out);
        }
    }
}

/// Dequantize `n` elements of type `ty` from `bytes` (which must hold exactly `n` elements).
/// Errors (without file context) for types that cannot be decoded or a size mismatch.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    if !ty.dequantizable() {
        bail!("type {ty} is not supported (supported: F32, F16, BF16, Q8_0, Q6_K, Q5_K, Q5_1, Q5_0, Q4_K, Q4_1, Q4_0, Q3_K, Q2_K)");
    }
    let (blk, blk_bytes) = ty.block().expect("dequantizable types have traits");
    if !n.is_multiple_of(blk) || bytes.len() != n / blk * blk_bytes {
        bail!("{n} elements of {ty} need {} bytes, got {}", n.div_ceil(blk) * blk_bytes, bytes.len());
    }
    let mut out = vec![0f32; n];
    // Chunks of many blocks keep rayon overhead negligible.
    const BLOCKS_PER_TASK: usize = 4096;
    out.par_chunks_mut(blk * BLOCKS_PER_TASK).zip(bytes.par_chunks(blk_bytes * BLOCKS_PER_TASK)).for_each(|(o, b)| {
        for (ob, bb) in o.chunks_exact_mut(blk).zip(b.chunks_exact(blk_bytes)) {
            decode_block(ty, bb, ob);
        }
    });
    Ok(out)
}
