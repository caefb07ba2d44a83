//! AWQ's clip search on a GQA model: o_proj, which no scale group covers under GQA, is clipped
//! like every linear but q/k (AutoAWQ's `_search_best_clip`), and the clip search weighs every
//! calibration window, not only the first ones.
//!
//! The fixture (llama-headdim: 4 query heads on 2 KV heads) is edited so that one attention-output
//! channel of layer 0 is zero on every token but one token id `T`: v_proj's row `c` reads only
//! hidden dimension `j`, and `j` of the embedding is zero for every token but `T`. An outlier is
//! planted in o_proj's columns that read that channel. Where the channel is zero on every sampled
//! token, clipping the outlier costs nothing and shrinks the grid of the other weights, so the
//! clip search must cut it; where the channel carries `T`'s large values on some sampled tokens,
//! cutting the outlier costs far more than it saves, so the clip search must keep it.

mod common;
use common::{lowbit, shared};
use lowbit::st_write::{write_safetensors, OutTensor};
use lowbit::weights::Checkpoint;
use std::path::Path;

const FIXTURE: &str = "testdata/arch/llama-headdim";
const SEQLEN: usize = 64;
const SAMPLES: usize = 16;
/// Hidden dimension `j` and v_proj row `c` of the planted channel.
const J: usize = 5;
const C: usize = 7;
const OUTLIER: f32 = 4.0;

fn calib_text() -> std::path::PathBuf {
    shared("data/tinystories/TinyStories-valid.partial.txt")
}

/// The calibration windows lowbit will draw (its own sampler, seed 0): the input of the test.
fn windows() -> Vec<Vec<u32>> {
    let tok = lowbit::tokenizer::Tokenizer::from_dir(&shared(FIXTURE)).unwrap();
    let ids = lowbit::calib::sample_tokens(&tok, &calib_text(), SAMPLES, SEQLEN, 0, &mut lowbit::events::Quiet).unwrap();
    ids.chunks(SEQLEN).map(|w| w.to_vec()).collect()
}

/// o_proj input columns fed by v_proj row `c`: one per query head of that KV head.
fn planted_columns() -> Vec<usize> {
    let (heads, kv_heads, hd) = (4, 2, 32);
    let kvh = C / hd;
    (0..heads).filter(|h| h / (heads / kv_heads) == kvh).map(|h| h * hd + C % hd).collect()
}

/// The edited fixture in `dir`, with channel `c` live only on token `t`.
fn planted_model(dir: &Path, t: u32) {
    let src = shared(FIXTURE);
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let ck = Checkpoint::open(&src).unwrap();
    let mut out = Vec::new();
    for name in ck.names() {
        let (shape, mut v) = ck.f32(name).unwrap();
        match name {
            "model.embed_tokens.weight" => {
                let d = shape[1];
                for (tok, row) in v.chunks_mut(d).enumerate() {
                    row[J] = if tok == t as usize { 8.0 } else { 0.0 };
                }
            }
            "model.layers.0.self_attn.v_proj.weight" => {
                let d = shape[1];
                let row = &mut v[C * d..(C + 1) * d];
                row.iter_mut().for_each(|w| *w = 0.0);
                row[J] = 5.0;
            }
            "model.layers.0.self_attn.o_proj.weight" => {
                let inn = shape[1];
                for r in v.chunks_mut(inn) {
                    for c in planted_columns() {
                        r[c] = OUTLIER;
                    }
                }
            }
            _ => {}
        }
        out.push(OutTensor::f32(name, shape, &v));
    }
    write_safetensors(&dir.join("model.safetensors"), &out, None).unwrap();
}

/// AWQ 4-bit g32 of the planted model; layer 0's o_proj as stored (dequantized), `[out][in]`.
fn quantized_o_proj(tmp: &Path, t: u32) -> (Vec<f32>, usize) {
    let m = tmp.join("model");
    let q = tmp.join("q");
    std::fs::create_dir_all(&m).unwrap();
    planted_model(&m, t);
    let (samples, seqlen) = (SAMPLES.to_string(), SEQLEN.to_string());
    let (code, _, err) = lowbit(&[
        "quantize",
        "--model",
        m.to_str().unwrap(),
        "--out",
        q.to_str().unwrap(),
        "--method",
        "awq",
        "--bits",
        "4",
        "--group-size",
        "32",
        "--float-dtype",
        "f32",
        "--calib",
        calib_text().to_str().unwrap(),
        "--calib-samples",
        &samples,
        "--calib-seqlen",
        &seqlen,
    ]);
    assert_eq!(code, 0, "{err}");
    let model = lowbit::qmodel::open(&q).unwrap();
    let lw = model.load_layer(0).unwrap();
    let o = lw.get("self_attn.o_proj");
    (o.w.clone(), o.inn)
}

/// Share of o_proj's rows whose planted outlier is stored below `frac`·OUTLIER.
fn share_cut(w: &[f32], inn: usize, frac: f32) -> f64 {
    let cols = planted_columns();
    let cut = w.chunks(inn).flat_map(|r| cols.iter().map(move |&c| r[c])).filter(|&v| v < frac * OUTLIER).count();
    cut as f64 / (w.len() / inn * cols.len()) as f64
}

#[test]
fn o_proj_is_clipped_under_gqa() {
    // A token id in no calibration window: the planted channel is zero on every calibration token.
    let wins = windows();
    let t = (0..512u32).rev().find(|t| wins.iter().all(|w| !w.contains(t))).expect("an unused token id");
    let tmp = tempfile::tempdir().unwrap();
    let (w, inn) = quantized_o_proj(tmp.path(), t);
    // Unclipped, the asymmetric 4-bit grid stores the group maximum within half a step (about
    // 0.15 here); the clip search's largest cut leaves 0.55·OUTLIER.
    let share = share_cut(&w, inn, 0.8);
    assert!(share > 0.9, "o_proj's outlier is cut in only {:.0}% of the rows: o_proj is not clipped", share * 100.0);
}

#[test]
fn clip_sample_spans_every_calibration_window() {
    // A token id absent from the first half of the windows and present in the second: the planted
    // channel is live only in windows 8..16, which a clip sample of the first 512 rows (windows
    // 0..8 at 64 tokens each) never sees.
    let wins = windows();
    let (first, second) = wins.split_at(SAMPLES / 2);
    let count = |t: u32| second.iter().map(|w| w.iter().filter(|&&x| x == t).count()).sum::<usize>();
    let t = (3..512u32)
        .filter(|t| first.iter().all(|w| !w.contains(t)))
        .max_by_key(|&t| count(t))
        .filter(|&t| count(t) >= 3)
        .expect("a token id only in the second half of the windows");
    let tmp = tempfile::tempdir().unwrap();
    let (w, inn) = quantized_o_proj(tmp.path(), t);
    let share = share_cut(&w, inn, 0.9);
    assert!(share < 0.05, "o_proj's outlier is cut in {:.0}% of the rows although its input is live in windows 8..16", share * 100.0);
}
