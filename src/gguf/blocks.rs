//! ggml's quantized block types, one place: how a block's bytes hold its fields, and the value
//! every code decodes to. Layouts follow ggml-common.h / ggml-quants.c (learned from there, not
//! copied); docs/formats.md ("GGUF block types") has them with a worked byte example per type.
//!
//! A block is decoded into a [`Block`] of plain integer fields (f16 bits of `d` / `dmin`,
//! sub-block scale and min integers, and one unsigned code per element), and encoded back from
//! one; [`Block::value`] is the decode formula of the type, evaluated in f32 in the same order as
//! ggml's `dequantize_row_*` (e.g. Q4_K: `(d·sc)·q − dmin·m`), so codes chosen against it are
//! codes on exactly the grid llama.cpp decodes.
//!
//! Codes are unsigned: a type whose decode is signed (`q − 8` for Q4_0, `q − 32` for Q6_K, ...)
//! stores `q` and [`Kind::off`] is the offset.

use super::GgmlType;
use half::f16;

/// The block types lowbit writes (and decodes), in the order of `--gguf-type`'s help.
pub const WRITABLE: [GgmlType; 10] = [
    GgmlType::Q8_0,
    GgmlType::Q6_K,
    GgmlType::Q5_K,
    GgmlType::Q5_1,
    GgmlType::Q5_0,
    GgmlType::Q4_K,
    GgmlType::Q4_1,
    GgmlType::Q4_0,
    GgmlType::Q3_K,
    GgmlType::Q2_K,
];

/// Elements of a k-quant super-block.
pub const QK_K: usize = 256;

/// Static facts of one block type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind {
    pub ty: GgmlType,
    /// Elements per block (32, or 256 for the k-quants).
    pub block: usize,
    /// Elements per sub-block sharing one scale (and min): the block itself for the 32-blocks.
    pub sub: usize,
    /// Bytes per block.
    pub bytes: usize,
    /// Bits per code.
    pub bits: u8,
    /// Code offset: the decode uses `q − off`.
    pub off: u8,
    /// The decode adds a per-(sub-)block term (`+ m` for Q4_1/Q5_1, `− dmin·m` for k-quants).
    pub has_min: bool,
    /// Range of the integer sub-block scale (k-quants; `(0, 0)` for the 32-blocks, whose scale
    /// is `d` itself). Q6_K and Q3_K scales are signed.
    pub sc_range: (i32, i32),
}

impl Kind {
    pub fn of(ty: GgmlType) -> Option<Kind> {
        let k = |block, sub, bytes, bits, off, has_min, sc_range| Kind { ty, block, sub, bytes, bits, off, has_min, sc_range };
        Some(match ty {
            GgmlType::Q8_0 => k(32, 32, 34, 8, 128, false, (0, 0)),
            GgmlType::Q4_0 => k(32, 32, 18, 4, 8, false, (0, 0)),
            GgmlType::Q4_1 => k(32, 32, 20, 4, 0, true, (0, 0)),
            GgmlType::Q5_0 => k(32, 32, 22, 5, 16, false, (0, 0)),
            GgmlType::Q5_1 => k(32, 32, 24, 5, 0, true, (0, 0)),
            GgmlType::Q2_K => k(QK_K, 16, 84, 2, 0, true, (0, 15)),
            GgmlType::Q3_K => k(QK_K, 16, 110, 3, 4, false, (-32, 31)),
            GgmlType::Q4_K => k(QK_K, 32, 144, 4, 0, true, (0, 63)),
            GgmlType::Q5_K => k(QK_K, 32, 176, 5, 0, true, (0, 63)),
            GgmlType::Q6_K => k(QK_K, 16, 210, 6, 32, false, (-128, 127)),
            _ => return None,
        })
    }

    pub fn is_k(&self) -> bool {
        self.block == QK_K
    }
    pub fn n_sub(&self) -> usize {
        self.block / self.sub
    }
    pub fn max_code(&self) -> u8 {
        ((1u16 << self.bits) - 1) as u8
    }
    /// Range of the integer sub-block min (k-quants with mins).
    pub fn min_range(&self) -> (i32, i32) {
        match self.ty {
            GgmlType::Q2_K => (0, 15),
            GgmlType::Q4_K | GgmlType::Q5_K => (0, 63),
            _ => (0, 0),
        }
    }
    /// Bytes of a row of `n` elements (`n` a multiple of [`Kind::block`]).
    pub fn row_bytes(&self, n: usize) -> usize {
        n / self.block * self.bytes
    }
}

/// One decoded block: the fields as integers, exactly as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub ty: GgmlType,
    /// f16 bits of `d` (the block scale, or the super-block scale of the sub-block scales).
    pub d: u16,
    /// f16 bits of `m` (Q4_1/Q5_1: the block min) or `dmin` (Q2_K/Q4_K/Q5_K); 0 otherwise.
    pub dmin: u16,
    /// Integer sub-block scales (k-quants): Q2_K 0..=15, Q4_K/Q5_K 0..=63, Q3_K −32..=31,
    /// Q6_K −128..=127.
    pub sc: [i16; 16],
    /// Integer sub-block mins (Q2_K 0..=15, Q4_K/Q5_K 0..=63).
    pub mn: [u8; 16],
    /// Unsigned codes, `block` of them (`< 2^bits`).
    pub q: Vec<u8>,
}

#[inline]
fn h2f(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

impl Block {
    /// All-zero block of a type.
    pub fn zero(kind: &Kind) -> Block {
        Block { ty: kind.ty, d: 0, dmin: 0, sc: [0; 16], mn: [0; 16], q: vec![0; kind.block] }
    }

    /// The decode of sub-block `s` as `(a, b)`: element value `a · (q − off) + b`, with `a` and
    /// `b` computed as ggml computes them (`b` is `−dmin·m` for the k-quants, `m` for Q4_1/Q5_1,
    /// 0 for the symmetric types).
    #[inline]
    pub fn sub_affine(&self, kind: &Kind, s: usize) -> (f32, f32) {
        let d = h2f(self.d);
        if !kind.is_k() {
            return (d, if kind.has_min { h2f(self.dmin) } else { 0.0 });
        }
        let a = d * self.sc[s] as f32;
        let b = if kind.has_min { -(h2f(self.dmin) * self.mn[s] as f32) } else { 0.0 };
        (a, b)
    }

    /// The value of element `i` as llama.cpp decodes it.
    #[inline]
    pub fn value(&self, kind: &Kind, i: usize) -> f32 {
        let (a, b) = self.sub_affine(kind, i / kind.sub);
        code_value(kind, a, b, self.q[i])
    }

    /// Decode the whole block into `out` (`block` values).
    pub fn dequantize_into(&self, kind: &Kind, out: &mut [f32]) {
        for (s, chunk) in out.chunks_mut(kind.sub).enumerate() {
            let (a, b) = self.sub_affine(kind, s);
            for (o, &q) in chunk.iter_mut().zip(&self.q[s * kind.sub..]) {
                *o = code_value(kind, a, b, q);
            }
        }
    }
}

/// `a · (q − off) + b` in ggml's evaluation order (no `+ b` for the symmetric types, so a
/// negative zero stays negative as in ggml).
#[inline]
pub fn code_value(kind: &Kind, a: f32, b: f32, q: u8) -> f32 {
    let v = a * (q as i32 - kind.off as i32) as f32;
    if kind.has_min {
        v + b
    } else {
        v
    }
}

// ---------------------------------------------------------------------------------------------
// Byte layouts

/// Where the 6-bit scale `j` and min `j` (j < 8) of Q4_K/Q5_K live in their 12 scale bytes:
/// j < 4: low 6 bits of bytes j and j+4; j ≥ 4: low nibble / high nibble of byte j+4 with the
/// top two bits in the top two bits of bytes j−4 (scale) and j (min).
fn k4_scales_get(b: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (b[j] & 63, b[j + 4] & 63)
    } else {
        ((b[j + 4] & 0xF) | ((b[j - 4] >> 6) << 4), (b[j + 4] >> 4) | ((b[j] >> 6) << 4))
    }
}

fn k4_scales_set(b: &mut [u8], sc: &[i16; 16], mn: &[u8; 16]) {
    b[..12].fill(0);
    for j in 0..8 {
        let (s, m) = (sc[j] as u8 & 63, mn[j] & 63);
        if j < 4 {
            b[j] |= s;
            b[j + 4] |= m;
        } else {
            b[j + 4] = (s & 0xF) | ((m & 0xF) << 4);
            b[j - 4] |= (s >> 4) << 6;
            b[j] |= (m >> 4) << 6;
        }
    }
}

/// Q3_K's 16 6-bit scales (stored as `sc + 32`) in 12 bytes: low nibble of scale `s` in byte
/// `s % 8` (low nibble for s < 8, high for s ≥ 8), its top 2 bits in byte `8 + s % 4` at bit
/// `2·(s / 4)`.
fn q3_scale_get(b: &[u8], s: usize) -> i16 {
    let lo = (b[s % 8] >> (4 * (s / 8))) & 0xF;
    let hi = (b[8 + s % 4] >> (2 * (s / 4))) & 3;
    (lo | (hi << 4)) as i16 - 32
}

fn q3_scales_set(b: &mut [u8], sc: &[i16; 16]) {
    b[..12].fill(0);
    for (s, &v) in sc.iter().enumerate() {
        let u = (v + 32) as u8 & 63;
        b[s % 8] |= (u & 0xF) << (4 * (s / 8));
        b[8 + s % 4] |= (u >> 4) << (2 * (s / 4));
    }
}

fn f16_le(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

/// Decode one block's bytes (exactly `kind.bytes` of them).
pub fn decode(kind: &Kind, b: &[u8]) -> Block {
    debug_assert_eq!(b.len(), kind.bytes);
    let mut blk = Block::zero(kind);
    let q = &mut blk.q;
    match kind.ty {
        GgmlType::Q8_0 => {
            blk.d = f16_le(b, 0);
            for (q, &x) in q.iter_mut().zip(&b[2..34]) {
                *q = x.wrapping_add(128); // i8 + 128
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            blk.d = f16_le(b, 0);
            let qs = if kind.ty == GgmlType::Q4_1 {
                blk.dmin = f16_le(b, 2);
                &b[4..20]
            } else {
                &b[2..18]
            };
            for j in 0..16 {
                q[j] = qs[j] & 0xF;
                q[j + 16] = qs[j] >> 4;
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            blk.d = f16_le(b, 0);
            let p = if kind.ty == GgmlType::Q5_1 {
                blk.dmin = f16_le(b, 2);
                4
            } else {
                2
            };
            let qh = u32::from_le_bytes([b[p], b[p + 1], b[p + 2], b[p + 3]]);
            let qs = &b[p + 4..p + 20];
            for j in 0..16 {
                q[j] = (qs[j] & 0xF) | (((qh >> j) & 1) << 4) as u8;
                q[j + 16] = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4) as u8;
            }
        }
        GgmlType::Q2_K => {
            // scales[16] | qs[64] | d | dmin
            for (s, &x) in b[..16].iter().enumerate() {
                blk.sc[s] = (x & 0xF) as i16;
                blk.mn[s] = x >> 4;
            }
            let qs = &b[16..80];
            blk.d = f16_le(b, 80);
            blk.dmin = f16_le(b, 82);
            for (e, q) in q.iter_mut().enumerate() {
                *q = (qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
            }
        }
        GgmlType::Q3_K => {
            // hmask[32] | qs[64] | scales[12] | d
            let (hm, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
            for s in 0..16 {
                blk.sc[s] = q3_scale_get(sc, s);
            }
            blk.d = f16_le(b, 108);
            for (e, q) in q.iter_mut().enumerate() {
                let lo = (qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
                let hi = (hm[e % 32] >> (e / 32)) & 1;
                *q = lo | (hi << 2);
            }
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            // d | dmin | scales[12] | (Q5_K: qh[32]) | qs[128]
            blk.d = f16_le(b, 0);
            blk.dmin = f16_le(b, 2);
            for j in 0..8 {
                let (s, m) = k4_scales_get(&b[4..16], j);
                blk.sc[j] = s as i16;
                blk.mn[j] = m;
            }
            let five = kind.ty == GgmlType::Q5_K;
            let (qh, qs) = if five { (&b[16..48], &b[48..176]) } else { (&b[0..0], &b[16..144]) };
            for (e, q) in q.iter_mut().enumerate() {
                let byte = qs[32 * (e / 64) + e % 32];
                let lo = if (e / 32) % 2 == 0 { byte & 0xF } else { byte >> 4 };
                let hi = if five { (qh[e % 32] >> (e / 32)) & 1 } else { 0 };
                *q = lo | (hi << 4);
            }
        }
        GgmlType::Q6_K => {
            // ql[128] | qh[64] | scales[16] (i8) | d
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            for (d, &x) in blk.sc.iter_mut().zip(sc) {
                *d = x as i8 as i16;
            }
            blk.d = f16_le(b, 208);
            for (e, q) in q.iter_mut().enumerate() {
                let (h, part, l) = (e / 128, (e % 128) / 32, e % 32);
                let byte = ql[64 * h + 32 * (part % 2) + l];
                let lo = if part < 2 { byte & 0xF } else { byte >> 4 };
                let hi = (qh[32 * h + l] >> (2 * part)) & 3;
                *q = lo | (hi << 4);
            }
        }
        t => unreachable!("blocks::decode called for {t}"),
    }
    blk
}

/// Encode a block into `out` (exactly `kind.bytes` bytes).
pub fn encode(kind: &Kind, blk: &Block, out: &mut [u8]) {
    debug_assert_eq!(out.len(), kind.bytes);
    debug_assert!(blk.q.iter().all(|&q| q <= kind.max_code()));
    out.fill(0);
    let q = &blk.q;
    let put16 = |out: &mut [u8], i: usize, v: u16| out[i..i + 2].copy_from_slice(&v.to_le_bytes());
    match kind.ty {
        GgmlType::Q8_0 => {
            put16(out, 0, blk.d);
            for (o, &q) in out[2..34].iter_mut().zip(q) {
                *o = q.wrapping_sub(128);
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            put16(out, 0, blk.d);
            let p = if kind.ty == GgmlType::Q4_1 {
                put16(out, 2, blk.dmin);
                4
            } else {
                2
            };
            for j in 0..16 {
                out[p + j] = q[j] | (q[j + 16] << 4);
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            put16(out, 0, blk.d);
            let p = if kind.ty == GgmlType::Q5_1 {
                put16(out, 2, blk.dmin);
                4
            } else {
                2
            };
            let mut qh = 0u32;
            for j in 0..16 {
                qh |= u32::from(q[j] >> 4) << j;
                qh |= u32::from(q[j + 16] >> 4) << (j + 16);
                out[p + 4 + j] = (q[j] & 0xF) | ((q[j + 16] & 0xF) << 4);
            }
            out[p..p + 4].copy_from_slice(&qh.to_le_bytes());
        }
        GgmlType::Q2_K => {
            for ((o, &sc), &mn) in out[..16].iter_mut().zip(&blk.sc).zip(&blk.mn) {
                *o = (sc as u8 & 0xF) | (mn << 4);
            }
            for (e, &q) in q.iter().enumerate() {
                out[16 + 32 * (e / 128) + e % 32] |= q << (2 * ((e % 128) / 32));
            }
            put16(out, 80, blk.d);
            put16(out, 82, blk.dmin);
        }
        GgmlType::Q3_K => {
            for (e, &q) in q.iter().enumerate() {
                out[32 + 32 * (e / 128) + e % 32] |= (q & 3) << (2 * ((e % 128) / 32));
                out[e % 32] |= (q >> 2) << (e / 32);
            }
            q3_scales_set(&mut out[96..108], &blk.sc);
            put16(out, 108, blk.d);
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            put16(out, 0, blk.d);
            put16(out, 2, blk.dmin);
            k4_scales_set(&mut out[4..16], &blk.sc, &blk.mn);
            let five = kind.ty == GgmlType::Q5_K;
            let qs0 = if five { 48 } else { 16 };
            for (e, &q) in q.iter().enumerate() {
                let nib = if (e / 32) % 2 == 0 { q & 0xF } else { (q & 0xF) << 4 };
                out[qs0 + 32 * (e / 64) + e % 32] |= nib;
                if five {
                    out[16 + e % 32] |= (q >> 4) << (e / 32);
                }
            }
        }
        GgmlType::Q6_K => {
            for (e, &q) in q.iter().enumerate() {
                let (h, part, l) = (e / 128, (e % 128) / 32, e % 32);
                let lo = q & 0xF;
                out[64 * h + 32 * (part % 2) + l] |= if part < 2 { lo } else { lo << 4 };
                out[128 + 32 * h + l] |= (q >> 4) << (2 * part);
            }
            for s in 0..16 {
                out[192 + s] = blk.sc[s] as i8 as u8;
            }
            put16(out, 208, blk.d);
        }
        t => unreachable!("blocks::encode called for {t}"),
    }
}

/// Dequantize a row (or any run of whole blocks) of type `kind` into `out`.
pub fn dequantize_row(kind: &Kind, bytes: &[u8], out: &mut [f32]) {
    for (b, o) in bytes.chunks_exact(kind.bytes).zip(out.chunks_exact_mut(kind.block)) {
        decode(kind, b).dequantize_into(kind, o);
    }
}

/// The type a tensor of `cols` columns is stored in when `ty` is asked for, as llama.cpp's
/// quantizer decides: `ty` itself when its blocks divide the rows, else Q4_K → Q5_0,
/// Q5_K → Q5_1, Q6_K → Q8_0, Q2_K / Q3_K → Q4_0 (llama.cpp picks IQ4_NL, which lowbit does not
/// write; Q4_0 has its size), and `None` (F16 in llama.cpp) when no 32-block divides the rows.
pub fn fallback(ty: GgmlType, cols: usize) -> Option<GgmlType> {
    let fits = |t: GgmlType| Kind::of(t).is_some_and(|k| cols.is_multiple_of(k.block));
    if fits(ty) {
        return Some(ty);
    }
    let next = match ty {
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        GgmlType::Q2_K | GgmlType::Q3_K => GgmlType::Q4_0,
        _ => return None,
    };
    fits(next).then_some(next)
}
