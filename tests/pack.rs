//! Packed layouts against hand-derived words, exact round trips, the reference matmul and
//! the refusals.

mod common;
use common::Rng;
use lowbit::pack::{bits_per_weight, AwqPacked, GptqPacked, HfQuantMeta, Layout, LowbitModuleMeta, LowbitPacked, Packed, PackedLayout};
use lowbit::quant::{Grid, GroupQ};
use lowbit::st_write::OutTensor;
use safetensors::tensor::Dtype;

fn groupq(
    out: usize,
    inf: usize,
    bits: u8,
    g: usize,
    grid: Grid,
    code: impl Fn(usize, usize) -> u8,
    zero: impl Fn(usize, usize) -> u8,
) -> GroupQ {
    let ng = inf.div_ceil(g);
    GroupQ {
        out_features: out,
        in_features: inf,
        bits,
        group_size: g,
        grid,
        codes: (0..out * inf).map(|k| code(k / inf, k % inf)).collect(),
        scales: (0..out * ng).map(|k| 0.25 * (k + 1) as f32).collect(),
        zeros: (0..out * ng).map(|k| zero(k / ng, k % ng)).collect(),
        g_idx: None,
    }
}

fn tensor<'a>(t: &'a [OutTensor], name: &str) -> &'a OutTensor {
    t.iter().find(|x| x.name == name).unwrap_or_else(|| panic!("{name} not written"))
}

fn i32s(t: &OutTensor) -> Vec<u32> {
    assert_eq!(t.dtype, Dtype::I32);
    t.data.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn f16s(t: &OutTensor) -> Vec<f32> {
    assert_eq!(t.dtype, Dtype::F16);
    t.data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
}

// ---------------------------------------------------------------------------------------------
// Hand-derived layouts

/// AutoAWQ GEMM, out=8, in=16, g=8, q[o][i] = (o+i) % 16.
/// `qweight[i][0]` nibble p (bits 4p..4p+4) holds channel AWQ_ORDER[p] = [0,2,4,6,1,3,5,7][p].
/// i=0: nibbles p=0..7 = 0,2,4,6,1,3,5,7; written high nibble first: 0x75316420.
/// Every next input adds 1 to each nibble mod 16: i=1 0x86427531, ..., i=8 nibbles
/// 8,A,C,E,9,B,D,F -> 0xFDB9ECA8, i=9 nibble p=7 is (7+9)%16 = 0 -> 0x0ECAFDB9, ...
#[test]
fn awq_hand_derived() {
    let q = groupq(8, 16, 4, 8, Grid::Affine, |o, i| ((o + i) % 16) as u8, |o, g| if g == 0 { o as u8 } else { 15 - o as u8 });
    let p = AwqPacked::pack(&q).unwrap();
    let t = p.to_tensors("m");
    let qw = tensor(&t, "m.qweight");
    assert_eq!(qw.shape, vec![16, 1]);
    let expect: [u32; 16] = [
        0x75316420, 0x86427531, 0x97538642, 0xA8649753, 0xB975A864, 0xCA86B975, 0xDB97CA86, 0xECA8DB97, 0xFDB9ECA8, 0x0ECAFDB9, 0x1FDB0ECA,
        0x20EC1FDB, 0x31FD20EC, 0x420E31FD, 0x531F420E, 0x6420531F,
    ];
    assert_eq!(i32s(qw), expect);
    // Zeros stored as is. Group 0: z[o] = o -> same as qweight row 0 = 0x75316420.
    // Group 1: z[o] = 15-o, nibble p = 15 - AWQ_ORDER[p] = F,D,B,9,E,C,A,8 -> 0x8ACE9BDF.
    let qz = tensor(&t, "m.qzeros");
    assert_eq!(qz.shape, vec![2, 1]);
    assert_eq!(i32s(qz), [0x75316420, 0x8ACE9BDF]);
    // scales [in/g, out]: scales[g][o] = q.scales[o*2 + g] = 0.25*(2o+g+1).
    let sc = tensor(&t, "m.scales");
    assert_eq!(sc.shape, vec![2, 8]);
    let want: Vec<f32> = (0..16).map(|k| 0.25 * (2 * (k % 8) + k / 8 + 1) as f32).collect();
    assert_eq!(f16s(sc), want);
    // 16*1 + 2*1 int32 words + 2*8 f16 = 512 + 64 + 256 bits.
    assert_eq!(p.storage_bits(), 832);
    assert_eq!(bits_per_weight(p.storage_bits(), 8, 16), 6.5);
    assert_eq!(p.unpack().unwrap(), q);
}

/// GPTQ 4-bit, out=32, in=32, g=16, q[o][i] = (i+o) % 16. qweight [in*4/32 = 4, 32]:
/// word [k][o] packs q[o][8k..8k+8], input 8k+j in bits 4j..4j+4.
/// o=0: k=0 nibbles 0..7 -> 0x76543210, k=1 8..F -> 0xFEDCBA98, k=2, k=3 repeat.
/// o=1: k=0 1..8 -> 0x87654321, k=1 9..F,0 -> 0x0FEDCBA9. o=9: k=0 9..F,0 -> 0x0FEDCBA9.
#[test]
fn gptq4_hand_derived() {
    let q = groupq(32, 32, 4, 16, Grid::Affine, |o, i| ((i + o) % 16) as u8, |o, g| if g == 0 { (o % 8) as u8 + 1 } else { 8 });
    let p = GptqPacked::pack(&q).unwrap();
    let t = p.to_tensors("m");
    let qw = tensor(&t, "m.qweight");
    assert_eq!(qw.shape, vec![4, 32]);
    let w = i32s(qw);
    let col = |o: usize| (0..4).map(|k| w[k * 32 + o]).collect::<Vec<_>>();
    assert_eq!(col(0), [0x76543210, 0xFEDCBA98, 0x76543210, 0xFEDCBA98]);
    assert_eq!(col(1), [0x87654321, 0x0FEDCBA9, 0x87654321, 0x0FEDCBA9]);
    assert_eq!(col(9), [0x0FEDCBA9, 0x87654321, 0x0FEDCBA9, 0x87654321]);
    // qzeros [2, 32*4/32 = 4] store zero-1. Group 0: z-1 = o%8 -> nibbles 0..7 = 0x76543210
    // in every word; group 1: z-1 = 7 everywhere -> 0x77777777.
    let qz = tensor(&t, "m.qzeros");
    assert_eq!(qz.shape, vec![2, 4]);
    assert_eq!(i32s(qz), [0x76543210, 0x76543210, 0x76543210, 0x76543210, 0x77777777, 0x77777777, 0x77777777, 0x77777777]);
    let gi = tensor(&t, "m.g_idx");
    assert_eq!(i32s(gi), (0..32).map(|i| i / 16).collect::<Vec<u32>>());
    assert_eq!(tensor(&t, "m.scales").shape, vec![2, 32]);
    // qweight 4*32 + qzeros 2*4 + g_idx 32 int32 words, scales 2*32 f16.
    assert_eq!(p.storage_bits(), 32 * (128 + 8 + 32) + 16 * 64);
    assert_eq!(p.unpack().unwrap(), q);
}

/// GPTQ 3-bit, out=32, in=32, one group, q[o][i] = (i+o) % 8: 32 codes fill 3 words as one
/// 96-bit little-endian stream. Eight codes 0..7 make the 24-bit chunk 0o76543210 = 0xFAC688,
/// so column 0's stream is FAC688 repeated 4 times = 0xFAC688FAC688FAC688FAC688, cut into
/// words from the low end: 0x88FAC688, 0xC688FAC6, 0xFAC688FA. (Code 10 = 2 straddles: its low
/// two bits 0b10 are word0 bits 30..31, its top bit 0 is word1 bit 0.) Column 1 (codes 1..7,0):
/// chunk 0o07654321 = 0x1F58D1 -> 0xD11F58D1, 0x58D11F58, 0x1F58D11F.
/// Zeros 4 store 3: chunk 0o33333333 = 0x6DB6DB -> 0xDB6DB6DB, 0xB6DB6DB6, 0x6DB6DB6D.
#[test]
fn gptq3_hand_derived() {
    let q = groupq(32, 32, 3, 32, Grid::Affine, |o, i| ((i + o) % 8) as u8, |_, _| 4);
    let p = GptqPacked::pack(&q).unwrap();
    let t = p.to_tensors("m");
    let qw = tensor(&t, "m.qweight");
    assert_eq!(qw.shape, vec![3, 32]);
    let w = i32s(qw);
    let col = |o: usize| (0..3).map(|k| w[k * 32 + o]).collect::<Vec<_>>();
    assert_eq!(col(0), [0x88FAC688, 0xC688FAC6, 0xFAC688FA]);
    assert_eq!(col(1), [0xD11F58D1, 0x58D11F58, 0x1F58D11F]);
    assert_eq!(col(8), col(0));
    let qz = tensor(&t, "m.qzeros");
    assert_eq!(qz.shape, vec![1, 3]);
    assert_eq!(i32s(qz), [0xDB6DB6DB, 0xB6DB6DB6, 0x6DB6DB6D]);
    assert_eq!(p.unpack().unwrap(), q);
}

/// lowbit 4-bit, out=2, in=20, g=8 (groups of 8, 8, 4). row_bytes = ceil(80/8) = 10 -> 12.
/// Byte k holds code 2k in its low nibble, 2k+1 in its high nibble.
/// Row 0 codes c%16: 10 32 54 76 98 BA DC FE, codes 16..19 = 0,1,2,3 -> 10 32, pad 00 00.
/// Row 1 codes 15-c%16: EF CD AB 89 67 45 23 01, EF CD, pad 00 00.
#[test]
fn lowbit4_hand_derived() {
    let q = groupq(2, 20, 4, 8, Grid::Affine, |o, c| if o == 0 { (c % 16) as u8 } else { 15 - (c % 16) as u8 }, |o, g| (3 * o + g) as u8);
    let p = LowbitPacked::pack(&q).unwrap();
    let t = p.to_tensors("m");
    let qw = tensor(&t, "m.qweight");
    assert_eq!((qw.dtype, qw.shape.clone()), (Dtype::U8, vec![2, 12]));
    #[rustfmt::skip]
    let expect = [
        0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE, 0x10, 0x32, 0x00, 0x00,
        0xEF, 0xCD, 0xAB, 0x89, 0x67, 0x45, 0x23, 0x01, 0xEF, 0xCD, 0x00, 0x00,
    ];
    assert_eq!(qw.data, expect);
    let qz = tensor(&t, "m.qzeros");
    assert_eq!((qz.dtype, qz.shape.clone(), qz.data.clone()), (Dtype::U8, vec![2, 3], vec![0, 1, 2, 3, 4, 5]));
    let sc = tensor(&t, "m.scales");
    assert_eq!(sc.shape, vec![2, 3]);
    assert_eq!(f16s(sc), [0.25, 0.5, 0.75, 1.0, 1.25, 1.5]);
    assert!(t.iter().all(|x| x.name != "m.g_idx"));
    // 2*12 bytes + 2*3 f16 scales + 2*3 u8 zeros.
    assert_eq!(p.storage_bits(), 192 + 96 + 48);
    assert_eq!(p.unpack().unwrap(), q);
}

/// lowbit 3-bit, out=2, in=20, g=8. row_bytes = ceil(60/8) = 8 (already a multiple of 4).
/// Row 0 codes c%8: each 8 codes form 0o76543210 = 0xFAC688 = bytes 88 C6 FA; codes 16..19 =
/// 0,1,2,3 form 0o3210 = 0x688 = bytes 88 06 (bits 60..63 are padding, zero).
/// Row 1 codes 7-c%8: 0o01234567 = 0x053977 = bytes 77 39 05; 7,6,5,4 -> 0o4567 = 0x977 -> 77 09.
#[test]
fn lowbit3_hand_derived() {
    let q = groupq(2, 20, 3, 8, Grid::HalfInt, |o, c| if o == 0 { (c % 8) as u8 } else { 7 - (c % 8) as u8 }, |_, _| 0);
    let p = LowbitPacked::pack(&q).unwrap();
    let t = p.to_tensors("m");
    let qw = tensor(&t, "m.qweight");
    assert_eq!(qw.shape, vec![2, 8]);
    assert_eq!(qw.data, [0x88, 0xC6, 0xFA, 0x88, 0xC6, 0xFA, 0x88, 0x06, 0x77, 0x39, 0x05, 0x77, 0x39, 0x05, 0x77, 0x09]);
    // Half-integer grid: no zero points stored.
    assert!(t.iter().all(|x| x.name != "m.qzeros"));
    assert_eq!(p.storage_bits(), 128 + 96);
    assert_eq!(p.unpack().unwrap(), q);
}

// ---------------------------------------------------------------------------------------------
// Random round trips

/// A random GroupQ with f16-exact scales; `permute` draws an act-order style g_idx.
fn random_q(rng: &mut Rng, (out, inf, g): (usize, usize, usize), bits: u8, grid: Grid, zero_range: (u64, u64), permute: bool) -> GroupQ {
    let ng = inf.div_ceil(g);
    let g_idx = permute.then(|| {
        let mut perm: Vec<usize> = (0..inf).collect();
        for i in (1..inf).rev() {
            perm.swap(i, rng.below(i as u64 + 1) as usize);
        }
        perm.iter().map(|&p| (p / g) as u32).collect()
    });
    GroupQ {
        out_features: out,
        in_features: inf,
        bits,
        group_size: g,
        grid,
        codes: (0..out * inf).map(|_| rng.below(1 << bits) as u8).collect(),
        scales: (0..out * ng).map(|_| half::f16::from_f32(0.01 + rng.f32().abs()).to_f32()).collect(),
        zeros: (0..out * ng)
            .map(|_| if grid == Grid::Affine { (zero_range.0 + rng.below(zero_range.1 - zero_range.0 + 1)) as u8 } else { 0 })
            .collect(),
        g_idx,
    }
}

/// y = x·Wᵀ from the dequantized weight, naive triple loop in f64; also Σ|x||w| per output.
fn naive(q: &GroupQ, x: &[f32], rows: usize) -> (Vec<f64>, Vec<f64>) {
    let w = q.dequantize();
    let (o, i) = (q.out_features, q.in_features);
    let (mut y, mut mag) = (vec![0f64; rows * o], vec![0f64; rows * o]);
    for r in 0..rows {
        for c in 0..o {
            for k in 0..i {
                let p = x[r * i + k] as f64 * w[c * i + k] as f64;
                y[r * o + c] += p;
                mag[r * o + c] += p.abs();
            }
        }
    }
    (y, mag)
}

/// Pack, check the exact round trip through tensors and back, and the reference matmul.
fn check_layout<P: PackedLayout + PartialEq + std::fmt::Debug>(q: &GroupQ, meta: &P::Meta, rng: &mut Rng) {
    let p = P::pack(q).unwrap();
    let mut want = q.clone();
    if let Some(g) = &q.g_idx {
        // A default g_idx means the same as none; GPTQ always stores one and reads it back as None.
        if g.iter().enumerate().all(|(i, &x)| x as usize == i / q.group_size) {
            want.g_idx = p.unpack().unwrap().g_idx;
        }
    }
    assert_eq!(p.unpack().unwrap(), want);
    let t = p.to_tensors("a.b");
    let back = P::from_tensors(&t, "a.b", meta).unwrap();
    assert_eq!(back, p);
    let rows = 3;
    let x: Vec<f32> = (0..rows * q.in_features).map(|_| rng.f32()).collect();
    let y = back.dequant_matmul(&x, rows);
    let (yr, mag) = naive(q, &x, rows);
    for k in 0..y.len() {
        assert!((y[k] as f64 - yr[k]).abs() <= 1e-5 * mag[k] + 1e-30, "y[{k}] = {} vs {}", y[k], yr[k]);
    }
}

#[test]
fn lowbit_round_trips() {
    let mut rng = Rng(0x9E3779B97F4A7C15);
    for bits in 2..=8u8 {
        for grid in [Grid::Affine, Grid::HalfInt, Grid::Shift] {
            for (out, inf, g) in [(5, 37, 8), (8, 64, 64), (3, 20, 128), (4, 1, 1)] {
                for permute in [false, true] {
                    let q = random_q(&mut rng, (out, inf, g), bits, grid, (0, (1 << bits) - 1), permute);
                    let meta = LowbitModuleMeta { bits, group_size: g, grid, method: "test".into(), in_features: inf, out_features: out };
                    check_layout::<LowbitPacked>(&q, &meta, &mut rng);
                }
            }
        }
    }
}

#[test]
fn gptq_round_trips() {
    let mut rng = Rng(12345);
    for bits in [2u8, 3, 4, 8] {
        // g=40 leaves a short last group of 16; g=96 is one group per row.
        for (out, inf, g) in [(64, 96, 32), (32, 96, 40), (32, 64, 64)] {
            for permute in [false, true] {
                let q = random_q(&mut rng, (out, inf, g), bits, Grid::Affine, (1, (1u64 << bits) - 1), permute);
                check_layout::<GptqPacked>(&q, &HfQuantMeta { bits, group_size: g as i64 }, &mut rng);
            }
        }
    }
    // group_size -1 in the config means one group per row.
    let q = random_q(&mut rng, (32, 64, 64), 4, Grid::Affine, (1, 15), false);
    check_layout::<GptqPacked>(&q, &HfQuantMeta { bits: 4, group_size: -1 }, &mut rng);
}

/// A qzeros field as GPTQModel's `_correct_gptq_v1_qzeros` and AutoGPTQ's torch dequant read it:
/// the `bits`-wide field `o` of row `g` (the stream of `out` fields), plus one, modulo `2^bits`.
fn gptq_loader_zero(qz: &[u32], zw: usize, bits: usize, g: usize, o: usize) -> u32 {
    let bit = o * bits;
    let (lo, hi) = (qz[g * zw + bit / 32] as u64, qz.get(g * zw + bit / 32 + 1).copied().unwrap_or(0) as u64);
    let field = ((lo | hi << 32) >> (bit % 32)) & ((1 << bits) - 1);
    ((field + 1) & ((1 << bits) - 1)) as u32
}

/// Zero point 0 (a group of non-negative weights) in the GPTQ v1 layout: where the group leaves
/// its top code unused it is stored as the equivalent zero point 1 with every code one higher
/// (no all-ones field, which a word-wide v1→v2 conversion would carry out of); otherwise as the
/// all-ones field, which the loaders' per-field `(field + 1) mod 2^bits` reads back as 0.
/// Either way the loaders' weights equal the quantized ones.
#[test]
fn gptq_zero_point_zero() {
    let mut rng = Rng(2024);
    for bits in [2u8, 3, 4, 8] {
        let maxq = (1u32 << bits) - 1;
        // Group 0 of every row: zero 0, codes below maxq (movable); group 1: zero 0 with code maxq
        // at column 32 + (o % 32) (kept as the all-ones field); group 2: zero 1 + o % maxq.
        let q = groupq(
            32,
            96,
            bits,
            32,
            Grid::Affine,
            |o, i| match i / 32 {
                0 => ((o + i) as u32 % maxq) as u8,
                1 if i - 32 == o % 32 => maxq as u8,
                _ => ((o * 7 + i) as u32 % (maxq + 1)) as u8,
            },
            |o, g| if g < 2 { 0 } else { (1 + o as u32 % maxq) as u8 },
        );
        let p = GptqPacked::pack(&q).unwrap();
        assert_eq!(p.wrapped_zeros(), 32, "{bits}-bit: only group 1 keeps zero point 0");
        let t = p.to_tensors("m");
        let qz = i32s(tensor(&t, "m.qzeros"));
        let zw = 32 * bits as usize / 32;
        for o in 0..32 {
            assert_eq!(gptq_loader_zero(&qz, zw, bits as usize, 0, o), 1, "{bits}-bit group 0 moved to zero point 1");
            assert_eq!(gptq_loader_zero(&qz, zw, bits as usize, 1, o), 0, "{bits}-bit group 1 reads back as 0");
            assert_eq!(gptq_loader_zero(&qz, zw, bits as usize, 2, o), 1 + o as u32 % maxq);
        }
        let back = GptqPacked::from_tensors(&t, "m", &HfQuantMeta { bits, group_size: 32 }).unwrap().unpack().unwrap();
        assert_eq!(back.dequantize(), q.dequantize(), "{bits}-bit: the stored weights are the quantized ones");
        let x: Vec<f32> = (0..2 * 96).map(|_| rng.f32()).collect();
        let (y, yr) = (p.dequant_matmul(&x, 2), naive(&q, &x, 2).0);
        for k in 0..y.len() {
            assert!((y[k] as f64 - yr[k]).abs() <= 1e-4 * yr[k].abs().max(1.0), "{bits}-bit y[{k}]");
        }
    }
}

#[test]
fn awq_round_trips() {
    let mut rng = Rng(777);
    for (out, inf, g) in [(16, 64, 16), (8, 16, 8), (24, 128, 128)] {
        let q = random_q(&mut rng, (out, inf, g), 4, Grid::Affine, (0, 15), false);
        check_layout::<AwqPacked>(&q, &HfQuantMeta { bits: 4, group_size: g as i64 }, &mut rng);
    }
}

/// Through a real safetensors file and `SafeTensors` as the tensor source, via the `Packed` enum.
#[test]
fn safetensors_file_round_trip() {
    let mut rng = Rng(99);
    let dir = tempfile::tempdir().unwrap();
    let q = random_q(&mut rng, (32, 64, 16), 4, Grid::Affine, (1, 15), false);
    let meta = LowbitModuleMeta { bits: 4, group_size: 16, grid: Grid::Affine, method: "rtn".into(), in_features: 64, out_features: 32 };
    let mut all = Vec::new();
    for (layout, prefix) in [(Layout::Awq, "awq"), (Layout::Gptq, "gptq"), (Layout::Lowbit, "lb")] {
        all.extend(Packed::pack(layout, &q).unwrap().to_tensors(prefix));
    }
    let path = dir.path().join("m.safetensors");
    lowbit::st_write::write_safetensors(&path, &all, None).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let hf = HfQuantMeta { bits: 4, group_size: 16 };
    assert_eq!(AwqPacked::from_tensors(&st, "awq", &hf).unwrap().unpack().unwrap(), q);
    assert_eq!(GptqPacked::from_tensors(&st, "gptq", &hf).unwrap().unpack().unwrap(), q);
    assert_eq!(LowbitPacked::from_tensors(&st, "lb", &meta).unwrap().unpack().unwrap(), q);
}

#[test]
fn meta_json() {
    let meta =
        LowbitModuleMeta { bits: 3, group_size: 128, grid: Grid::HalfInt, method: "statsq".into(), in_features: 20, out_features: 2 };
    let v = serde_json::to_value(&meta).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "bits": 3, "group_size": 128, "grid": "halfint", "method": "statsq", "in_features": 20, "out_features": 2
        })
    );
    assert_eq!(serde_json::from_value::<LowbitModuleMeta>(v).unwrap(), meta);
    let bad = serde_json::json!({
        "bits": 3, "group_size": 128, "grid": "nf4", "method": "x", "in_features": 1, "out_features": 1
    });
    assert!(serde_json::from_value::<LowbitModuleMeta>(bad).is_err());
}

// ---------------------------------------------------------------------------------------------
// Refusals

fn err<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.unwrap_err())
}

#[test]
fn refusals() {
    let affine = |out, inf, bits, g| groupq(out, inf, bits, g, Grid::Affine, |_, _| 1, |_, _| 2);
    assert!(err(AwqPacked::pack(&affine(8, 16, 3, 8))).contains("4-bit"));
    assert!(err(AwqPacked::pack(&affine(8, 20, 4, 8))).contains("divisible by group_size"));
    assert!(err(AwqPacked::pack(&affine(12, 16, 4, 8))).contains("divisible by 8"));
    assert!(err(AwqPacked::pack(&groupq(8, 16, 4, 8, Grid::HalfInt, |_, _| 1, |_, _| 0))).contains("affine"));
    let mut perm = affine(8, 16, 4, 8);
    perm.g_idx = Some((0..16).map(|i| (i % 2) as u32).collect());
    assert!(err(AwqPacked::pack(&perm)).contains("g_idx"));
    assert!(err(AwqPacked::pack(&groupq(8, 16, 4, 8, Grid::Affine, |_, _| 1, |_, _| 16))).contains("zero"));

    assert!(err(GptqPacked::pack(&affine(32, 32, 5, 32))).contains("2, 3, 4 or 8"));
    assert!(err(GptqPacked::pack(&affine(32, 20, 4, 4))).contains("multiples of 32"));
    assert!(err(GptqPacked::pack(&affine(24, 32, 4, 32))).contains("multiples of 32"));
    assert!(err(GptqPacked::pack(&groupq(32, 32, 4, 32, Grid::Affine, |_, _| 1, |_, _| 16))).contains("4-bit zero points"));
    assert!(err(GptqPacked::pack(&groupq(32, 32, 4, 32, Grid::Shift, |_, _| 1, |_, _| 0))).contains("affine"));

    assert!(err(LowbitPacked::pack(&affine(2, 20, 1, 8))).contains("2..=8"));
    let mut bad = affine(2, 20, 3, 8);
    bad.codes[5] = 8;
    assert!(err(LowbitPacked::pack(&bad)).contains("does not fit in 3 bits"));
    let mut huge = affine(2, 20, 4, 8);
    huge.scales[0] = 1e6;
    assert!(err(LowbitPacked::pack(&huge)).contains("f16"));
}

#[test]
fn read_errors_name_the_tensor() {
    let q = groupq(2, 20, 4, 8, Grid::Affine, |_, _| 1, |_, _| 2);
    let meta = LowbitModuleMeta { bits: 4, group_size: 8, grid: Grid::Affine, method: "rtn".into(), in_features: 20, out_features: 2 };
    let mut t = LowbitPacked::pack(&q).unwrap().to_tensors("x.y");
    t.retain(|x| x.name != "x.y.qzeros");
    assert_eq!(err(LowbitPacked::from_tensors(&t, "x.y", &meta)), "x.y.qzeros: tensor missing");
    let wrong = LowbitModuleMeta { bits: 3, ..meta.clone() };
    assert!(err(LowbitPacked::from_tensors(&t, "x.y", &wrong)).starts_with("x.y.qweight: shape"));

    let mut t = AwqPacked::pack(&groupq(8, 16, 4, 8, Grid::Affine, |_, _| 1, |_, _| 2)).unwrap().to_tensors("m");
    t.iter_mut().find(|x| x.name == "m.scales").unwrap().dtype = Dtype::BF16;
    assert!(err(AwqPacked::from_tensors(&t, "m", &HfQuantMeta { bits: 4, group_size: 8 })).starts_with("m.scales: dtype BF16"));

    // A GPTQ g_idx pointing past the stored groups.
    let mut t = GptqPacked::pack(&groupq(32, 32, 4, 16, Grid::Affine, |_, _| 1, |_, _| 2)).unwrap().to_tensors("m");
    let gi = t.iter_mut().find(|x| x.name == "m.g_idx").unwrap();
    gi.data[..4].copy_from_slice(&7i32.to_le_bytes());
    assert!(err(GptqPacked::from_tensors(&t, "m", &HfQuantMeta { bits: 4, group_size: 16 })).contains("m.g_idx: group index 7"));
}

/// Runs `f` on another thread and fails if it panics or takes longer than 10 s (a regression
/// of the size checks below would loop for ~2^62 iterations rather than fail).
fn within_10s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()).unwrap());
    rx.recv_timeout(std::time::Duration::from_secs(10)).expect("panicked or did not return within 10 s")
}

fn raw(name: &str, dtype: Dtype, shape: &[usize], data: Vec<u8>) -> OutTensor {
    OutTensor { name: name.into(), dtype, shape: shape.to_vec(), data }
}

/// Sizes declared by a file with an empty dimension (so no bytes back them) or whose products
/// overflow: a clean error, not a 2^62-iteration loop, a huge allocation or a panic.
/// Found by `cargo fuzz run packed`.
#[test]
fn empty_or_overflowing_declared_sizes_are_refused() {
    // AWQ qweight [0, 2^60]: out = 8 * 2^60 = 2^63 output channels with no bytes at all.
    let msg = within_10s(|| {
        let big = 1usize << 60;
        let t = vec![
            raw("m.qweight", Dtype::I32, &[0, big], vec![]),
            raw("m.qzeros", Dtype::I32, &[0, big], vec![]),
            raw("m.scales", Dtype::F16, &[0, big * 8], vec![]),
        ];
        err(AwqPacked::from_tensors(&t, "m", &HfQuantMeta { bits: 4, group_size: 128 }))
    });
    assert!(msg.contains("m.qweight: empty shape"), "{msg}");
    // GPTQ qweight [0, 2^62]: 0 inputs, 2^62 outputs; out * bits overflows for the qzeros shape.
    let msg = within_10s(|| {
        let big = 1usize << 62;
        let t = vec![
            raw("m.qweight", Dtype::I32, &[0, big], vec![]),
            raw("m.qzeros", Dtype::I32, &[0, 0], vec![]),
            raw("m.scales", Dtype::F16, &[0, big], vec![]),
        ];
        err(GptqPacked::from_tensors(&t, "m", &HfQuantMeta { bits: 4, group_size: 128 }))
    });
    assert!(msg.contains("m.qweight: empty shape"), "{msg}");
    // lowbit: 2^62 x 0 weight declared in config.json, zero-byte tensors to match.
    let msg = within_10s(|| {
        let big = 1usize << 62;
        let meta =
            LowbitModuleMeta { bits: 4, group_size: 32, grid: Grid::Affine, method: "rtn".into(), in_features: 0, out_features: big };
        let t = vec![
            raw("m.qweight", Dtype::U8, &[big, 0], vec![]),
            raw("m.scales", Dtype::F16, &[big, 0], vec![]),
            raw("m.qzeros", Dtype::U8, &[big, 0], vec![]),
        ];
        err(LowbitPacked::from_tensors(&t, "m", &meta))
    });
    assert!(msg.contains("m: empty 4611686018427387904x0 weight"), "{msg}");
    // lowbit: in_features * bits overflows (the row length would wrap to 0 bytes).
    let meta =
        LowbitModuleMeta { bits: 8, group_size: 32, grid: Grid::Affine, method: "rtn".into(), in_features: 1 << 61, out_features: 1 };
    let msg = err(LowbitPacked::from_tensors(&Vec::<OutTensor>::new(), "m", &meta));
    assert!(msg.contains("overflows"), "{msg}");
}

/// VQ: out_features 2^63 with 4 centroids made the packed row length (2^63 vectors × 2 bits)
/// wrap to 0 bytes, which an empty index tensor then matched; checking the indices read past
/// the row and panicked. Found by reading the code while adding `cargo fuzz run packed`.
#[test]
fn vq_row_length_overflow_is_refused() {
    use lowbit::pack::vq::{VqModuleMeta, VqPacked};
    let msg = within_10s(|| {
        let meta = VqModuleMeta {
            layout: "vq".into(),
            method: "vptq".into(),
            in_features: 1,
            out_features: 1 << 63,
            vector_len: 1,
            n_centroids: 4,
            n_res_centroids: 0,
            n_outlier_centroids: 0,
            n_outlier_cols: 0,
            col_norm: false,
        };
        let t = vec![raw("m.vq_indices", Dtype::U8, &[1, 0], vec![]), raw("m.centroids", Dtype::F16, &[4, 1], vec![0; 8])];
        err(VqPacked::from_tensors(&t, "m", &meta))
    });
    assert!(msg.contains("m.vq_indices") && msg.contains("overflows"), "{msg}");
    // Zero output features: no index bytes, but in_features rows to loop over.
    let msg = within_10s(|| {
        let meta = VqModuleMeta {
            layout: "vq".into(),
            method: "vptq".into(),
            in_features: 1 << 62,
            out_features: 0,
            vector_len: 1,
            n_centroids: 1,
            n_res_centroids: 0,
            n_outlier_centroids: 0,
            n_outlier_cols: 0,
            col_norm: false,
        };
        let t = vec![raw("m.vq_indices", Dtype::U8, &[1 << 62, 0], vec![]), raw("m.centroids", Dtype::F16, &[1, 1], vec![0; 2])];
        err(VqPacked::from_tensors(&t, "m", &meta))
    });
    assert!(msg.contains("empty 0x4611686018427387904 weight"), "{msg}");
}

/// `"bits": 260` was truncated to 4 (`as u8`) and accepted.
#[test]
fn out_of_range_bits_in_config_are_refused() {
    let cfg = serde_json::json!({"quantization_config": {"quant_method": "gptq", "bits": 260, "group_size": 128}});
    let msg = err(lowbit::qmodel::QuantScheme::from_config(std::path::Path::new("m"), &cfg));
    assert!(msg.contains("m/config.json") && msg.contains("bits 260 out of range"), "{msg}");
}
