//! Calibration mixes and recipes: window counts in proportion, every window drawn from its own
//! text, seeded; recipes from calib/ resolve against --data-dir; bad recipes are refused by name.
mod common;
use common::*;
use lowbit::calib::{allocate, load_recipe, sample_calib, sample_tokens, Calib, Part};
use lowbit::events::{Collect, Quiet};
use lowbit::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn allocation_is_proportional_and_complete() {
    assert_eq!(allocate(&[2.0, 1.0, 1.0], 128), vec![64, 32, 32]);
    // 10/3 each: the remainder goes to the earliest parts.
    assert_eq!(allocate(&[1.0, 1.0, 1.0], 10), vec![4, 3, 3]);
    // 0.75·7 = 5.25, 0.25·7 = 1.75: the larger remainder wins the last window.
    assert_eq!(allocate(&[3.0, 1.0], 7), vec![5, 2]);
    assert_eq!(allocate(&[1.0], 5), vec![5]);
}

/// Whether `w` is a contiguous run of `ids`.
fn contains(ids: &[u32], w: &[u32]) -> bool {
    ids.windows(w.len()).any(|x| x == w)
}

#[test]
fn a_mix_draws_each_share_from_its_own_text() {
    let tok = Tokenizer::from_dir(&stories()).unwrap();
    let (a, b) = (shared("data/tinyshakespeare/input.txt"), shared("data/ptb/ptb.valid.txt"));
    let ids = |p: &Path| tok.encode(&lowbit::calib::read_text(p).unwrap(), true).unwrap();
    let (ia, ib) = (ids(&a), ids(&b));
    let c = Calib { parts: vec![Part { path: a.clone(), weight: 3.0 }, Part { path: b.clone(), weight: 1.0 }], recipe: None };
    let seq = 64;
    let t = sample_calib(&tok, &c, 12, seq, 7, &mut Quiet).unwrap();
    assert_eq!(t.len(), 12 * seq);
    let (mut na, mut nb) = (0, 0);
    for w in t.chunks(seq) {
        match (contains(&ia, w), contains(&ib, w)) {
            (true, false) => na += 1,
            (false, true) => nb += 1,
            x => panic!("window found in (shakespeare, ptb) = {x:?}"),
        }
    }
    assert_eq!((na, nb), (9, 3));
    // The texts are interleaved, not one block after the other.
    let first: Vec<bool> = t.chunks(seq).map(|w| contains(&ia, w)).collect();
    assert!(first.windows(2).filter(|p| p[0] != p[1]).count() > 1, "{first:?}");
    // Seeded: the same seed gives the same tokens, another seed others.
    assert_eq!(t, sample_calib(&tok, &c, 12, seq, 7, &mut Quiet).unwrap());
    assert_ne!(t, sample_calib(&tok, &c, 12, seq, 8, &mut Quiet).unwrap());
    // One file is the plain sampler.
    assert_eq!(
        sample_calib(&tok, &Calib::file(&a), 5, seq, 3, &mut Quiet).unwrap(),
        sample_tokens(&tok, &a, 5, seq, 3, &mut Quiet).unwrap()
    );
}

#[test]
fn recipes_in_calib_resolve_against_the_data_dir() {
    let data = shared("data");
    let (c, s) = load_recipe(&repo("calib/general.toml"), &data).unwrap();
    assert_eq!((s.samples, s.seqlen), (Some(128), Some(512)));
    let got: Vec<(PathBuf, f64)> = c.parts.iter().map(|p| (p.path.clone(), p.weight)).collect();
    assert_eq!(
        got,
        vec![
            (data.join("ptb/ptb.valid.txt"), 2.0),
            (data.join("tinystories/TinyStories-valid.partial.txt"), 1.0),
            (data.join("tinyshakespeare/input.txt"), 1.0)
        ]
    );
    let (c, _) = load_recipe(&repo("calib/ptb.toml"), &data).unwrap();
    assert_eq!(c.parts, vec![Part { path: data.join("ptb/ptb.valid.txt"), weight: 1.0 }]);
}

#[test]
fn bad_recipes_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let data = shared("data");
    let write = |name: &str, body: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let cases = [
        ("unknown.toml", "samples = 4\nsampels = 8\n[[text]]\npath = \"ptb/ptb.valid.txt\"\n", "unknown field `sampels`"),
        ("unknown_text_key.toml", "[[text]]\npath = \"ptb/ptb.valid.txt\"\nweight = 2\n", "unknown field `weight`"),
        ("missing.toml", "[[text]]\npath = \"nowhere/none.txt\"\n", "does not exist"),
        ("no_text.toml", "samples = 4\n", "missing field `text`"),
        ("zero.toml", "[[text]]\npath = \"ptb/ptb.valid.txt\"\nproportion = 0\n", "\"proportion\" must be a positive number"),
    ];
    for (name, body, want) in cases {
        let p = write(name, body);
        let e = format!("{:#}", load_recipe(&p, &data).unwrap_err());
        assert!(e.contains(want) && e.contains(name), "{name}: {e}");
    }
    // The command line: one line, exit 2, no output.
    let p = write("cli.toml", "seqlen = 64\nsampels = 8\n[[text]]\npath = \"ptb/ptb.valid.txt\"\n");
    let out = tmp.path().join("o");
    let m = stories();
    let (code, _, err) = lowbit(&[
        "quantize",
        "--model",
        m.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--method",
        "gptq",
        "--calib",
        p.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown field `sampels`") && err.trim().lines().count() == 1, "{err}");
    assert!(!out.exists());
}

#[test]
fn quantize_with_a_recipe_and_a_mix() {
    let tmp = tempfile::tempdir().unwrap();
    let data = shared("data");
    let recipe = tmp.path().join("r.toml");
    std::fs::write(&recipe, "samples = 6\nseqlen = 64\n[[text]]\npath = \"ptb/ptb.valid.txt\"\n[[text]]\npath = \"tinyshakespeare/input.txt\"\nproportion = 2\n").unwrap();
    let m = stories();
    let run = |out: &Path, calib: &[&str]| {
        let mut args = vec![
            "quantize",
            "--model",
            m.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--method",
            "gptq",
            "--group-size",
            "32",
            "--json",
        ];
        args.extend(calib);
        let (code, o, err) = lowbit(&args);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(o.trim()).unwrap()
    };
    let (ptb, sh) = (data.join("ptb/ptb.valid.txt"), data.join("tinyshakespeare/input.txt"));
    let s = run(&tmp.path().join("a"), &["--calib", recipe.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
    // The recipe's samples × seqlen.
    assert_eq!(s["calib_tokens"], 6 * 64);
    // The same mix by hand gives the same model.
    let s2 = run(
        &tmp.path().join("b"),
        &[
            "--calib",
            ptb.to_str().unwrap(),
            "--calib",
            sh.to_str().unwrap(),
            "--calib-mix",
            "1,2",
            "--calib-samples",
            "6",
            "--calib-seqlen",
            "64",
        ],
    );
    assert_eq!(s2["calib_tokens"], 6 * 64);
    let read = |d: &str| std::fs::read(tmp.path().join(d).join("model.safetensors")).unwrap();
    assert_eq!(read("a"), read("b"));
    // The command line overrides the recipe's samples.
    let s3 =
        run(&tmp.path().join("c"), &["--calib", recipe.to_str().unwrap(), "--data-dir", data.to_str().unwrap(), "--calib-samples", "3"]);
    assert_eq!(s3["calib_tokens"], 3 * 64);
}

/// The sampler reports through the caller's events (the library prints nothing): a text shorter
/// than the windows asked for, and a mix part too small to get a window, are warnings there.
#[test]
fn sampler_warnings_go_to_the_events() {
    let tok = Tokenizer::from_dir(&stories()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "Once upon a time there was a little cat who liked to play in the sun.\n").unwrap();
    let mut ev = Collect::default();
    let t = sample_tokens(&tok, &short, 50, 8, 0, &mut ev).unwrap();
    assert_eq!(t.len(), 50 * 8);
    assert_eq!(ev.warnings.len(), 1, "{:?}", ev.warnings);
    assert!(ev.warnings[0].ends_with("× --calib-seqlen 8; the 50 windows will overlap"), "{:?}", ev.warnings);
    assert!(ev.notes.is_empty());

    let big = shared("data/tinyshakespeare/input.txt");
    let c = Calib { parts: vec![Part { path: big, weight: 1000.0 }, Part { path: short.clone(), weight: 1.0 }], recipe: None };
    let mut ev = Collect::default();
    sample_calib(&tok, &c, 4, 64, 0, &mut ev).unwrap();
    assert_eq!(ev.warnings, vec![format!("{}: gets no window of the 4 (proportion 1)", short.display())]);
}
