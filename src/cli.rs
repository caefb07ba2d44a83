//! Command-line front end: argument parsing and printing only; the work is in the library.

mod commands;
mod progress;

pub use commands::run;
pub use progress::StderrEvents;

use crate::named;
use crate::quantize::{AwareWeight, Format, Method};
use anyhow::{anyhow, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

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
    /// Quantize every decoder-layer linear of a checkpoint and write a packed checkpoint.
    ///
    /// Calibration text is tokenized, `--calib-samples` windows of `--calib-seqlen` tokens are
    /// drawn (seeded), and streamed through the model one layer at a time.
    ///
    /// Example: lowbit quantize --model smollm2 --out smollm2-awq-w4 --method awq --bits 4 --calib ptb.valid.txt
    Quantize(QuantizeArgs),
    /// Quantize with every method × bit width from one calibration pass, score each against the
    /// float model (ppl, KL divergence, top-1 agreement), and write results.json, results.md and
    /// plot.svg.
    ///
    /// Statistics are gathered once per layer on the float model's activations and shared by
    /// every combination. Example: lowbit sweep --model smollm2 --methods rtn,awq,gptq --bits 3,4
    /// --calib ptb.valid.txt --eval-text wikitext2-test.txt --max-windows 16 --out sweep
    Sweep(SweepArgs),
    /// Check every packed layer's CUDA kernel (VQ included) against the CPU reference and time it.
    ///
    /// Needs an NVIDIA GPU (libcuda loaded at run time); without one it says so and exits with
    /// code 3. Exits 1 when a result differs from the reference or is not finite, 2 on bad input
    /// (no layer selected, bad batch size), checked before the GPU. Example: lowbit verify --model smollm2-awq-w4 --layers 'layers\.0\.' --batch 1,8,64
    Verify(VerifyArgs),
    /// Convert a llama.cpp GGUF file (F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors) to an HF checkpoint.
    ///
    /// Example: lowbit import-gguf SmolLM2-135M-Instruct.Q4_1.gguf --out smollm2 --tokenizer tokenizer.json --config config.json
    ImportGguf(ImportArgs),
}

/// A whole number of at least `MIN` (the error says so in words, not as a range to u64::MAX).
fn at_least<const MIN: usize>(s: &str) -> std::result::Result<usize, String> {
    let v: usize = s.parse().map_err(|_| "expected a whole number".to_string())?;
    if v < MIN {
        return Err(format!("must be at least {MIN}"));
    }
    Ok(v)
}

/// A size in bytes: a number with an optional unit, decimal (kB, MB, GB) or binary (KiB, MiB, GiB).
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.trim().parse().map_err(|_| format!("{s:?}: expected a size such as 60MB, 57.2MiB or 60000000"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        u => return Err(format!("{s:?}: unknown unit {u:?} (B, kB, MB, GB, KiB, MiB, GiB)")),
    };
    let b = v * mult;
    if !(b >= 1.0 && b.is_finite()) {
        return Err(format!("{s:?}: must be at least one byte"));
    }
    Ok(b.floor() as u64)
}

/// Settings shared by `quantize` and `sweep`.
#[derive(Args)]
pub struct QuantSettings {
    /// Checkpoint directory to quantize (config.json, tokenizer.json, *.safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// Input channels per quantization group (the last group of a row may be shorter).
    #[arg(help_heading = "Grid", long, default_value_t = 128, value_parser = at_least::<1>)]
    pub group_size: usize,
    /// Symmetric grid (no zero point search; z = 2^(bits-1)).
    #[arg(help_heading = "Grid", long)]
    pub sym: bool,
    /// Calibration text: plain UTF-8, or JSONL with a "text" field (.jsonl). Never the eval text.
    /// Repeat it to mix several texts (windows shared by --calib-mix, equal by default), or give
    /// one recipe (a .toml file, e.g. calib/general.toml: texts, proportions, samples, seqlen;
    /// docs/calibration.md).
    #[arg(help_heading = "Calibration", long, value_name = "FILE|RECIPE.toml")]
    pub calib: Vec<PathBuf>,
    /// Proportions of the --calib texts, comma-separated, one per text (e.g. 3,1).
    #[arg(help_heading = "Calibration", long, value_delimiter = ',')]
    pub calib_mix: Vec<f64>,
    /// Root of a recipe's relative text paths.
    #[arg(help_heading = "Calibration", long, default_value = "../shared/data")]
    pub data_dir: PathBuf,
    /// Number of calibration windows [default: the recipe's, else 128].
    #[arg(help_heading = "Calibration", long, value_parser = at_least::<1>)]
    pub calib_samples: Option<usize>,
    /// Tokens per calibration window [default: the recipe's, else 512].
    #[arg(help_heading = "Calibration", long, value_parser = at_least::<2>)]
    pub calib_seqlen: Option<usize>,
    /// Seed of the calibration sampling (and of VPTQ's k-means) [default: the recipe's, else 0].
    #[arg(help_heading = "Calibration", long)]
    pub seed: Option<u64>,
    /// Float type of embeddings, norms and lm_head.
    #[arg(help_heading = "Output", long, value_enum, default_value_t = FloatType::F16)]
    pub float_dtype: FloatType,
    /// Calibration tokens kept for AWQ's scale search, as whole windows evenly spaced over the
    /// calibration windows (rounded up to whole windows; the attention block is run on them).
    #[arg(help_heading = "AWQ", long, default_value_t = 2048)]
    pub search_tokens: usize,
    /// AWQ: the span of each group's asymmetric grid (search, clip and stored codes).
    #[arg(help_heading = "AWQ", long, value_parser = named::parser::<crate::quant::rtn::Range>(), default_value = "with-zero")]
    pub awq_range: crate::quant::rtn::Range,
    /// AWQ: AutoAWQ's symmetric clip search (one shrink for both ends of a group's range) instead
    /// of shrinking the two ends separately.
    #[arg(help_heading = "AWQ", long)]
    pub awq_symmetric_clip: bool,
    /// Mixed precision: linears whose full name (e.g. model.layers.3.mlp.down_proj) matches REGEX
    /// get METHOD:BITS[:GROUP] instead, METHOD:TYPE with a GGUF block type, or 'vptq' (sized by
    /// --vector-len / --centroids) (repeatable; the last match wins; a pattern that matches no
    /// linear is an error). E.g. 'down_proj=rtn:8', 'mlp.down_proj=gptq:q6_k'.
    #[arg(help_heading = "Mixed precision", long = "override", value_name = "REGEX=METHOD:BITS[:GROUP]|REGEX=METHOD:TYPE")]
    pub overrides: Vec<String>,
    /// GGUF block type of the linears: q8_0, q6_k, q5_k, q5_1, q5_0, q4_k, q4_1, q4_0, q3_k, q2_k
    /// (--format gguf: default q4_k; rows a type cannot take fall back as in llama.cpp). With
    /// --format lowbit, q8_0 / q5_0 / q4_0 codes are written in lowbit's layout.
    #[arg(long, value_parser = parse_block_type_arg)]
    pub gguf_type: Option<crate::gguf::GgmlType>,
    /// GGUF: type of token_embd (a block type, f32, f16 or bf16; llama-quantize's
    /// --token-embedding-type). Default: the linears' type; with tied embeddings the output's.
    #[arg(long, value_parser = parse_tensor_type_arg)]
    pub token_embedding_type: Option<crate::gguf::GgmlType>,
    /// GGUF: type of the output tensor (llama-quantize's --output-tensor-type; default q6_k).
    #[arg(long, value_parser = parse_tensor_type_arg)]
    pub output_tensor_type: Option<crate::gguf::GgmlType>,
    /// Keep linears whose full name matches REGEX in float (repeatable).
    #[arg(help_heading = "Mixed precision", long, value_name = "REGEX")]
    pub skip: Vec<String>,
    /// An --override or --skip pattern that matches no linear is a warning instead of an error.
    #[arg(help_heading = "Mixed precision", long)]
    pub allow_unmatched: bool,
    /// GPTQ: process columns in order of decreasing Hessian diagonal (desc_act).
    #[arg(help_heading = "GPTQ", long)]
    pub act_order: bool,
    /// GPTQ with --act-order: fix group parameters on the natural column groups (no g_idx).
    #[arg(help_heading = "GPTQ", long)]
    pub static_groups: bool,
    /// GPTQ: within each layer, quantize q/k/v, then o, then gate/up, then down, collecting each
    /// one's Hessian on the outputs of the linears already quantized (the reference's
    /// --true-sequential; three more layer forwards per layer).
    #[arg(help_heading = "GPTQ", long)]
    pub true_sequential: bool,
    /// VPTQ: vector length along the output dimension (sweep: chosen from --bits).
    #[arg(help_heading = "VPTQ", long, default_value_t = 4)]
    pub vector_len: usize,
    /// VPTQ: centroids of the main codebook (index bits = log2; sweep: chosen from --bits).
    #[arg(help_heading = "VPTQ", long, default_value_t = 256)]
    pub centroids: usize,
    /// VPTQ: centroids of the residual codebook (0 = none).
    #[arg(help_heading = "VPTQ", long, default_value_t = 0)]
    pub res_centroids: usize,
    /// VPTQ: percent of input columns (by diag(H)·|W|²) kept with their own codebook.
    #[arg(help_heading = "VPTQ", long, default_value_t = 0.0)]
    pub outlier_pct: f64,
    /// VPTQ: k-means iterations (fixed, seeded by --seed).
    #[arg(help_heading = "VPTQ", long, default_value_t = 10)]
    pub kmeans_iters: usize,
    /// VPTQ: per-input-channel normalisation before clustering.
    #[arg(help_heading = "VPTQ", long)]
    pub vq_normalize: bool,
    /// statsq-aware/shift-aware: the per-input-channel importance that weights the scale search.
    #[arg(help_heading = "StatsQ / shift", long, value_parser = named::parser::<AwareWeight>(), default_value = "mean-sq")]
    pub aware_weight: AwareWeight,
    /// Replace an existing output directory, only one lowbit wrote (its lowbit-output.json lists
    /// every file) and that holds nothing else; anything else is refused (docs/outputs.md).
    #[arg(help_heading = "Output", long)]
    pub force: bool,
}

impl QuantSettings {
    /// Library options for one method and bit width.
    fn options(&self, method: Method, bits: u8, out: PathBuf, format: Format) -> Result<crate::quantize::Options> {
        let (calib, rs) = self.calib()?;
        let seed = self.seed.or(rs.seed).unwrap_or(0);
        Ok(crate::quantize::Options {
            method,
            bits,
            group_size: self.group_size,
            sym: self.sym,
            calib,
            calib_samples: self.calib_samples.or(rs.samples).unwrap_or(128),
            calib_seqlen: self.calib_seqlen.or(rs.seqlen).unwrap_or(512),
            seed,
            format,
            out,
            force: self.force,
            float_dtype: self.float_dtype.dtype(),
            search_tokens: self.search_tokens,
            awq_range: self.awq_range,
            awq_symmetric_clip: self.awq_symmetric_clip,
            overrides: self.overrides.iter().map(|s| s.parse()).collect::<Result<_>>()?,
            resume: false,
            act_order: self.act_order,
            true_sequential: self.true_sequential,
            propagate_fp: false,
            static_groups: self.static_groups,
            aware_weight: self.aware_weight,
            gguf_type: self.gguf_type,
            token_embd_type: self.token_embedding_type,
            output_type: self.output_tensor_type,
            target_bpw: None,
            target_size: None,
            plan_bits: vec![2, 3, 4, 5, 6, 8],
            plan_groups: vec![32, 128],
            plan_note: None,
            sensitivity_cache: None,
            float_tables: false,
            vptq: crate::quant::vptq::VptqConfig {
                vector_len: self.vector_len,
                centroids: self.centroids,
                res_centroids: self.res_centroids,
                outlier_pct: self.outlier_pct,
                kmeans_iters: self.kmeans_iters,
                seed,
                normalize: self.vq_normalize,
                ..Default::default()
            },
            skip: self
                .skip
                .iter()
                .map(|s| regex::Regex::new(s).map_err(|e| anyhow!("--skip {s:?}: invalid regex: {e}")))
                .collect::<Result<_>>()?,
            allow_unmatched: self.allow_unmatched,
        })
    }
}

impl QuantSettings {
    /// The calibration of `--calib` / `--calib-mix` / `--data-dir`, and a recipe's settings.
    fn calib(&self) -> Result<(Option<crate::calib::Calib>, crate::calib::RecipeSettings)> {
        use crate::calib::{is_recipe, load_recipe, Calib, Part, RecipeSettings};
        if self.calib.is_empty() {
            if !self.calib_mix.is_empty() {
                return Err(anyhow!("--calib-mix needs --calib FILE for each proportion"));
            }
            return Ok((None, RecipeSettings::default()));
        }
        if let Some(r) = self.calib.iter().find(|p| is_recipe(p)) {
            if self.calib.len() > 1 || !self.calib_mix.is_empty() {
                return Err(anyhow!(
                    "--calib {}: a recipe gives the whole calibration; do not add other --calib files or --calib-mix",
                    r.display()
                ));
            }
            let (c, s) = load_recipe(r, &self.data_dir)?;
            return Ok((Some(c), s));
        }
        let weights = match self.calib_mix.len() {
            0 => vec![1.0; self.calib.len()],
            n if n == self.calib.len() => self.calib_mix.clone(),
            n => return Err(anyhow!("--calib-mix gives {n} proportions for {} --calib files", self.calib.len())),
        };
        if let Some(w) = weights.iter().find(|w| !(**w > 0.0 && w.is_finite())) {
            return Err(anyhow!("--calib-mix: proportions must be positive numbers (got {w})"));
        }
        let parts = self.calib.iter().zip(weights).map(|(p, weight)| Part { path: p.clone(), weight }).collect();
        Ok((Some(Calib { parts, recipe: None }), RecipeSettings::default()))
    }
}

fn parse_block_type_arg(s: &str) -> Result<crate::gguf::GgmlType> {
    crate::quantize::parse_block_type(s)
}

fn parse_tensor_type_arg(s: &str) -> Result<crate::gguf::GgmlType> {
    crate::quantize::parse_tensor_type(s)
}

#[derive(Args)]
pub struct QuantizeArgs {
    #[command(flatten)]
    pub q: QuantSettings,
    /// Output directory (must not exist unless --force); with --format gguf, the .gguf file.
    #[arg(long)]
    pub out: PathBuf,
    /// Quantization method: rtn (round to nearest), awq, gptq, vptq (vector quantization), statsq,
    /// shift (zero-free power-of-two) and their activation-aware variants (docs/).
    #[arg(long, value_parser = named::parser::<Method>(), default_value = "awq")]
    pub method: Method,
    /// Bits per weight code, 2..=8.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(2..=8))]
    pub bits: u8,
    /// Output layout.
    #[arg(long, value_parser = named::parser::<Format>(), default_value = "lowbit")]
    pub format: Format,
    /// AWQ/GPTQ/VPTQ: calibrate later layers on the float model's activations instead of
    /// re-running each quantized layer (about 1 FP forward less; the default is GPTQ's sequential
    /// scheme; AutoAWQ calibrates on the float model's activations).
    #[arg(help_heading = "Calibration", long)]
    pub propagate_fp: bool,
    /// Print the output size and bits per weight without quantizing (with --target-bpw: after the
    /// sensitivity pass, the chosen plan and its predicted loss).
    #[arg(help_heading = "Output", long)]
    pub dry_run: bool,
    /// The best model of this size: whole-model bits per weight (all stored bytes × 8 / all
    /// parameters, embeddings and norms included). Measures every linear's sensitivity to each
    /// --plan-bits × --plan-groups setting of --method (rtn, gptq, or awq+gptq: measured as gptq, written with AWQ's transform first) on the calibration
    /// activations and picks per-linear settings minimising the summed predicted loss within the
    /// size (docs/budget.md). The plan is written into config.json's quantization_config.plan.
    #[arg(help_heading = "Size budget", long, value_name = "BPW")]
    pub target_bpw: Option<f64>,
    /// The best model of this size: --target-bpw given as the stored tensor bytes instead (e.g.
    /// 60MB, 57.2MiB, 60000000; the few kilobytes of safetensors header, config.json and the
    /// tokenizer are not counted). The plan's bits per weight are SIZE × 8 / all parameters.
    #[arg(help_heading = "Size budget", long, value_name = "SIZE", value_parser = parse_size, conflicts_with = "target_bpw")]
    pub target_size: Option<u64>,
    /// --target-bpw: the bit widths to choose from, comma-separated.
    #[arg(help_heading = "Size budget", long, value_delimiter = ',', default_values_t = vec![2u8, 3, 4, 5, 6, 8], value_parser = clap::value_parser!(u8).range(2..=8))]
    pub plan_bits: Vec<u8>,
    /// --target-bpw: the group sizes to choose from, comma-separated.
    #[arg(help_heading = "Size budget", long, value_delimiter = ',', default_values_t = vec![32usize, 128], value_parser = at_least::<1>)]
    pub plan_groups: Vec<usize>,
    /// --target-bpw: keep the sensitivity measurements in this JSON file and reuse them when the
    /// model, calibration tokens, candidates and options are the same (several budgets, one pass);
    /// a file measured on other inputs is refused, not replaced.
    #[arg(help_heading = "Size budget", long, value_name = "FILE")]
    pub sensitivity_cache: Option<PathBuf>,
    /// --target-bpw: keep the token embedding table (and an untied lm_head) at --float-dtype.
    /// By default the plan also chooses their setting (float, or rtn at each --plan-bits ×
    /// --plan-groups), scored in the linears' unit (docs/budget.md): at SmolLM2's size the tied
    /// table is 21% of the parameters, and whole-model budgets under ~5 bpw need it quantized.
    #[arg(help_heading = "Size budget", long)]
    pub float_tables: bool,
    /// Continue an interrupted run (crash, kill -9) from its last finished layer; refused when the
    /// model, calibration or flags differ. The result is byte-identical to an uninterrupted run.
    #[arg(help_heading = "Output", long)]
    pub resume: bool,
    /// Print the summary as one JSON object on stdout.
    #[arg(help_heading = "Output", long)]
    pub json: bool,
}

#[derive(Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub q: QuantSettings,
    /// Output directory: results.json, results.md, plot.svg and one checkpoint per combination.
    #[arg(long)]
    pub out: PathBuf,
    /// Methods, comma-separated (any of `lowbit quantize --method`).
    #[arg(long, value_parser = named::parser::<Method>(), value_delimiter = ',', default_values = ["rtn", "awq", "gptq"])]
    pub methods: Vec<Method>,
    /// Bit widths, comma-separated. VPTQ maps 2/3/4 bits to vector length and codebook size
    /// (v4 k256, v3 k512, v2 k256).
    #[arg(long, value_delimiter = ',', default_values_t = vec![2u8, 3, 4], value_parser = clap::value_parser!(u8).range(2..=8))]
    pub bits: Vec<u8>,
    /// Text to score (never the calibration text). Repeat it to score every combination on
    /// several texts (ppl, KLD and top-1 vs the float model on each; the first leads the table
    /// and the plot).
    #[arg(long, required = true)]
    pub eval_text: Vec<PathBuf>,
    /// Tokens per eval window (at most the model's max_position_embeddings).
    #[arg(long, default_value_t = 2048, value_parser = at_least::<2>)]
    pub eval_ctx: usize,
    /// Eval convention (see `lowbit eval --help`).
    #[arg(long, value_enum, default_value_t = ConventionArg::Windows)]
    pub convention: ConventionArg,
    /// Score at most this many windows from the start.
    #[arg(long, value_parser = at_least::<1>)]
    pub max_windows: Option<usize>,
    /// Memory for the f32 embedding/lm_head tables of the models scored together (MiB); more
    /// combinations than fit are scored in several passes over the eval text.
    #[arg(long, default_value_t = 2048)]
    pub score_memory_mb: usize,
    /// Delete each quantized checkpoint after scoring it (keep only the reports).
    #[arg(long)]
    pub discard_models: bool,
    /// Print results.json on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Quantized checkpoint directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Only layers whose name matches this regex.
    #[arg(long)]
    pub layers: Option<String>,
    /// Batch sizes (rows of activations), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 8, 64])]
    pub batch: Vec<usize>,
    /// Print the rows as JSON on stdout.
    #[arg(long)]
    pub json: bool,
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
    /// Replace an existing output directory, only one lowbit wrote (its lowbit-output.json lists
    /// every file) and that holds nothing else; anything else is refused (docs/outputs.md).
    #[arg(long)]
    pub force: bool,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
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
    /// Checkpoint directory (config.json, tokenizer.json, *.safetensors), or a llama .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// tokenizer.json to use (default: the model directory's; for a .gguf file, the
    /// tokenizer.json beside it).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Text file to score (plain UTF-8).
    #[arg(long)]
    pub text: PathBuf,
    /// Tokens per window (at most the model's max_position_embeddings).
    #[arg(long, default_value_t = 2048, value_parser = at_least::<2>)]
    pub ctx: usize,
    /// windows: score every prediction of non-overlapping windows (GPTQ/AWQ papers);
    /// llamacpp: llama-perplexity's (BOS-first windows, second half scored).
    #[arg(long, value_enum, default_value_t = ConventionArg::Windows)]
    pub convention: ConventionArg,
    /// Score at most this many windows from the start.
    #[arg(long, value_parser = at_least::<1>)]
    pub max_windows: Option<usize>,
    /// Reference checkpoint (e.g. the FP model): also report the KL divergence KL(P_ref ‖ P_model)
    /// and top-1 agreement on the scored positions, streamed.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Print one JSON object on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct InspectArgs {
    /// Checkpoint directory, plain or quantized (config.json, *.safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `--convention`: [`crate::eval::Convention`] on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ConventionArg {
    Windows,
    Llamacpp,
}

impl From<ConventionArg> for crate::eval::Convention {
    fn from(c: ConventionArg) -> Self {
        match c {
            ConventionArg::Windows => crate::eval::Convention::Windows,
            ConventionArg::Llamacpp => crate::eval::Convention::Llamacpp,
        }
    }
}
