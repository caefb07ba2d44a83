//! The forward pass against transformers' fp32 logits and perplexity on stories260K.
mod common;
use common::*;
use lowbit::eval::{make_windows, perplexity, Convention};
use lowbit::tokenizer::Tokenizer;

#[test]
fn logits_match_transformers() {
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(shared("testdata/stories260K-logits.json")).unwrap()).unwrap();
    let ids: Vec<u32> = j["token_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let want: Vec<Vec<f64>> =
        j["logits"].as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()).collect();
    let model = lowbit::qmodel::open(&stories()).unwrap();
    let h = model.hidden(&ids, ids.len()).unwrap();
    let logits = model.logits(&h, ids.len()).unwrap();
    let vocab = model.cfg.vocab_size;
    assert_eq!(want.len(), ids.len());
    let mut max_err = 0f64;
    for (t, row) in want.iter().enumerate() {
        assert_eq!(row.len(), vocab);
        for (v, &w) in row.iter().enumerate() {
            max_err = max_err.max((logits[t * vocab + v] as f64 - w).abs());
        }
    }
    eprintln!("max abs logit error vs transformers: {max_err:.3e}");
    assert!(max_err <= 1e-4, "max abs error {max_err}");
}

#[test]
fn tinystories_ppl_matches_transformers() {
    let model = lowbit::qmodel::open(&stories()).unwrap();
    let tok = Tokenizer::from_dir(&stories()).unwrap();
    let text = lowbit::calib::read_text(&tinystories_text()).unwrap();
    let w = make_windows(&tok, &text, "tinystories", 256, Convention::Windows, None).unwrap();
    let r = perplexity(&model, &w, &mut |_, _| {}).unwrap();
    eprintln!("ppl {}", r.ppl);
    assert!((r.ppl / 5.7351 - 1.0).abs() <= 1e-3, "ppl {} vs transformers 5.7351", r.ppl);
}

/// `Model::attention_output` and `Model::mlp_output` (the blocks AWQ's scale search scores),
/// chained with the norms and residual adds, give transformers' logits on a GQA fixture.
#[test]
fn attention_and_mlp_blocks_rebuild_transformers_logits() {
    let dir = shared("testdata/arch/llama-headdim");
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ids: Vec<u32> =
        st.tensor("token_ids").unwrap().data().chunks(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect();
    let want: Vec<f32> = st.tensor("logits").unwrap().data().chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    let model = lowbit::model::Model::open_dense(&dir).unwrap();
    let c = &model.cfg;
    assert_ne!(c.num_heads, c.num_kv_heads);
    let n = ids.len();
    let mut h = model.embed(&ids).unwrap();
    for i in 0..c.num_layers {
        let lw = model.load_layer(i).unwrap();
        let a = model.attention_output(&lw, &lowbit::linalg::rms_norm(&h, &lw.input_norm, c.rms_norm_eps), n);
        h.iter_mut().zip(&a).for_each(|(h, a)| *h += a);
        let m = model.mlp_output(&lw, &lowbit::linalg::rms_norm(&h, &lw.post_norm, c.rms_norm_eps));
        h.iter_mut().zip(&m).for_each(|(h, m)| *h += m);
    }
    let logits = model.logits(&h, n).unwrap();
    assert_eq!(logits.len(), want.len());
    let max_err = logits.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("max abs logit error vs transformers: {max_err:.3e}");
    assert!(max_err <= 1e-4, "max abs error {max_err}");
}
