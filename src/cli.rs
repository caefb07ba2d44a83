//! Command-line front end: argument parsing and printing only; the work is in the library.

use crate::eval::{self, Convention};
use crate::mem::fmt_bytes;
use crate::tokenizer::Tokenizer;
use anyhow::{anyhow, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "lowbit", version, about = "Post-training quantization of LLM checkpoints on the CPU", long_about = None)]
pub struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Perplexity of a checkpoint (plain or quantized) on a text file.
    ///
    /// Example: lowbit eval --model ../shared/models/stories260K --text ../shared/data/tinystories/TinyStories-valid.partial.txt --ctx 256
    Eval(EvalArgs),
    /// Architecture, parameter count, tensors by dtype and bits per weight.
    Inspect(InspectArgs),
    /// Convert a llama.cpp GGUF file (F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors) to an HF checkpoint.
    ///
    /// Example: lowbit import-gguf SmolLM2-135M-Instruct.Q4_1.gguf --out smollm2 --tokenizer tokenizer.json --config config.json
    ImportGguf(ImportArgs),
}

#[derive(Args)]
pub struct ImportArgs {
    /// The .gguf file.
    pub gguf: PathBuf,
    /// Output checkpoint directory (created; must not exist unless --force).
    #[arg(long)]
    pub out: PathBuf,
    /// tokenizer.json to copy into the output (tokenizer_config.json beside it is copied too).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// config.json to use instead of one built from the GGUF's llama.* metadata.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Float type of the written tensors.
    #[arg(long, value_enum, default_value_t = FloatType::F32)]
    pub dtype: FloatType,
    /// Replace the output directory if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FloatType {
    F32,
    F16,
    Bf16,
}

impl FloatType {
    pub fn dtype(self) -> safetensors::Dtype {
        match self {
            FloatType::F32 => safetensors::Dtype::F32,
            FloatType::F16 => safetensors::Dtype::F16,
            FloatType::Bf16 => safetensors::Dtype::BF16,
        }
    }
}

#[derive(Args)]
pub struct EvalArgs {
    /// Checkpoint directory (config.json, tokenizer.json, *.safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// Text file to score (plain UTF-8).
    #[arg(long)]
    pub text: PathBuf,
    /// Tokens per window.
    #[arg(long, default_value_t = 2048)]
    pub ctx: usize,
    /// windows: score every prediction of non-overlapping windows (GPTQ/AWQ papers);
    /// llamacpp: llama-perplexity's (BOS-first windows, second half scored).
    #[arg(long, value_enum, default_value_t = Convention::Windows)]
    pub convention: Convention,
    /// Score at most this many windows from the start.
    #[arg(long)]
    pub max_windows: Option<usize>,
    /// Print one JSON object on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct InspectArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub json: bool,
}

pub fn progress(len: u64, msg: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stderr());
    pb.set_style(ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}").unwrap().progress_chars("=> "));
    pb.set_message(msg.to_string());
    pb
}

/// Read a UTF-8 text file with universal newlines (`\r\n` and lone `\r` become `\n`), as
/// Python's `open().read()` does: reference perplexities are computed on that string.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let s = String::from_utf8(bytes).map_err(|e| anyhow!("{}: not valid UTF-8 (byte {})", path.display(), e.utf8_error().valid_up_to()))?;
    Ok(if s.contains('\r') { s.replace("\r\n", "\n").replace('\r', "\n") } else { s })
}

pub fn run(cli: Cli) -> Result<()> {
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build_global().ok();
    }
    match cli.cmd {
        Cmd::Eval(a) => cmd_eval(a),
        Cmd::Inspect(a) => cmd_inspect(a),
        Cmd::ImportGguf(a) => {
            let opts = crate::gguf::ImportOptions { tokenizer: a.tokenizer, config: a.config, dtype: a.dtype.dtype(), force: a.force };
            let rep = crate::gguf::import_gguf(&a.gguf, &a.out, &opts)?;
            println!("{rep}");
            Ok(())
        }
    }
}

fn cmd_eval(a: EvalArgs) -> Result<()> {
    let model = crate::qmodel::open(&a.model)?;
    let tok = Tokenizer::from_dir(&a.model)?;
    let text = read_text(&a.text)?;
    let w = eval::make_windows(&tok, &text, &a.text.display().to_string(), a.ctx, a.convention, a.max_windows)?;
    let pb = progress(w.windows.len() as u64, "eval");
    let r = eval::perplexity(&model, &w, &mut |i| pb.set_position(i as u64))?;
    pb.finish_and_clear();
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["model"] = a.model.display().to_string().into();
        v["text"] = a.text.display().to_string().into();
        v["convention"] = serde_json::to_value(a.convention)?;
        println!("{v}");
    } else {
        println!("ppl            {:.4}", r.ppl);
        println!("mean NLL       {:.6}", r.mean_nll);
        println!("tokens scored  {} ({} windows of {}, {:?})", r.tokens_scored, r.windows, r.ctx, a.convention);
        println!("speed          {:.1} tokens/s ({:.1} s)", r.tokens_per_s, r.seconds);
        if let Some(p) = r.peak_rss_bytes {
            println!("peak memory    {}", fmt_bytes(p));
        }
    }
    Ok(())
}

fn cmd_inspect(a: InspectArgs) -> Result<()> {
    let rep = crate::qmodel::inspect(&a.model)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        print!("{}", rep.to_text());
    }
    Ok(())
}
