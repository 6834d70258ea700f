//! `engram retrofit`: fit a memory layer into a model and write the memory store.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use clap::{Args, ValueEnum};
use engram::Engine;
use engram::memory::MemoryConfig;
use engram::{Init, RetrofitOptions, RetrofitProgress};
use indicatif::{ProgressBar, ProgressStyle};

/// Flags of `engram retrofit`.
#[derive(Args)]
pub struct RetrofitArgs {
    /// Background text files (documents separated by blank lines); see scripts/build-background.
    #[arg(long, num_args = 1.., required = true)]
    background: Vec<PathBuf>,
    /// Where to write the memory store.
    #[arg(short, long)]
    output: PathBuf,
    /// Replace OUTPUT if it exists (a store holds what a user taught; it is kept otherwise).
    #[arg(long)]
    force: bool,
    /// Transformer block(s) that get a memory beside their FFN (comma-separated). Default: two
    /// thirds of the model's depth (20 of SmolLM2-135M's 30 blocks, 12 of Gemma 3 270M's 18).
    #[arg(long, value_delimiter = ',')]
    layer: Option<Vec<usize>>,
    /// Sub-keys per half (the memory has n_keys² slots).
    #[arg(long, default_value_t = MemoryConfig::default().n_keys)]
    n_keys: usize,
    /// Lookup heads.
    #[arg(long, default_value_t = MemoryConfig::default().heads)]
    heads: usize,
    /// Slots read per head and token.
    #[arg(long, default_value_t = MemoryConfig::default().top_k)]
    top_k: usize,
    /// Query width per head (even).
    #[arg(long, default_value_t = MemoryConfig::default().k_dim)]
    k_dim: usize,
    /// Gated output W2 (y ⊙ silu(W1 x)) instead of y.
    #[arg(long)]
    gated: bool,
    /// How query projection and sub-keys start.
    #[arg(long, value_enum, default_value_t = InitArg::Fitted)]
    init: InitArg,
    /// Tokens per background batch.
    #[arg(long, default_value_t = RetrofitOptions::default().batch_tokens)]
    batch_tokens: usize,
    /// Use at most this many background tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    max_tokens: usize,
    /// Hidden states sampled for the fit.
    #[arg(long, default_value_t = RetrofitOptions::default().fit_samples)]
    fit_samples: usize,
    /// k-means iterations.
    #[arg(long, default_value_t = RetrofitOptions::default().kmeans_iters)]
    kmeans_iters: usize,
    /// Random seed.
    #[arg(long, default_value_t = RetrofitOptions::default().seed)]
    seed: u64,
    /// Share of background documents rendered through the model's chat template (so the
    /// slots chat markup reads count as background and learning leaves them alone).
    #[arg(long, default_value_t = RetrofitOptions::default().chat_fraction)]
    chat_fraction: f32,
    /// Background tokens whose memory reads are kept in the store, so learning can hold the
    /// memory's output there (0 = none; learning then has no background anchor).
    #[arg(long, default_value_t = RetrofitOptions::default().sample_tokens)]
    sample_tokens: usize,
    /// Softmax temperature of the lookup over each head's top-k picks (above 1: each token
    /// reads its picks more evenly, so what a fact writes is spread thin over many rows).
    #[arg(long, default_value_t = RetrofitOptions::default().temperature)]
    temperature: f32,
}

/// `--init` values.
#[derive(Clone, Copy, ValueEnum)]
enum InitArg {
    /// Principal directions + k-means per half (even slot use).
    Fitted,
    /// Random projection and keys (baseline).
    Random,
}

fn read_documents(paths: &[PathBuf]) -> Result<Vec<String>, String> {
    let mut docs = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(p).map_err(|e| {
            format!(
                "{}: {e} (build the default corpus with scripts/build-background)",
                p.display()
            )
        })?;
        docs.extend(
            text.split("\n\n")
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(str::to_owned),
        );
    }
    if docs.is_empty() {
        return Err("the background files hold no text".into());
    }
    Ok(docs)
}

fn check_output(path: &Path, force: bool) -> Result<(), String> {
    if path.exists() && !force {
        return Err(format!(
            "{} exists; a memory store holds what was learned, so it is not replaced (use --force)",
            path.display()
        ));
    }
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) if !dir.is_dir() => Err(format!("{}: no such directory", dir.display())),
        _ => Ok(()),
    }
}

/// Runs the retrofit with a progress bar; Ctrl-C stops it without writing anything.
pub fn run(engine: Engine, args: &RetrofitArgs) -> Result<(), String> {
    let opts = RetrofitOptions {
        config: MemoryConfig {
            layers: args
                .layer
                .clone()
                .unwrap_or_else(|| MemoryConfig::default_layers(engine.model().config.n_layers)),
            n_keys: args.n_keys,
            heads: args.heads,
            top_k: args.top_k,
            k_dim: args.k_dim,
            gated: args.gated,
        },
        init: match args.init {
            InitArg::Fitted => Init::Fitted,
            InitArg::Random => Init::Random,
        },
        batch_tokens: args.batch_tokens,
        max_tokens: args.max_tokens,
        fit_samples: args.fit_samples,
        kmeans_iters: args.kmeans_iters,
        seed: args.seed,
        chat_fraction: args.chat_fraction,
        sample_tokens: args.sample_tokens,
        temperature: args.temperature,
    };
    // Everything that can be refused is refused before the long work starts.
    opts.validate(engine.model_config())
        .map_err(|e| e.to_string())?;
    check_output(&args.output, args.force)?;
    let docs = read_documents(&args.background)?;

    let interrupted = crate::ctrl_c_flag()?;

    let started = Instant::now();
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let store = engine.retrofit(&docs, &opts, &mut |p| {
        let (stage, done, total) = match p {
            RetrofitProgress::Collect { done, total } => ("collect", done, total),
            RetrofitProgress::Fit { done, total } => ("fit", done, total),
            RetrofitProgress::Statistics { done, total } => ("statistics", done, total),
        };
        if bar.prefix() != stage {
            bar.set_prefix(stage);
            bar.set_position(0);
        }
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        !interrupted.load(Ordering::SeqCst)
    });
    bar.finish_and_clear();
    let store = store.map_err(|e| e.to_string())?;
    if interrupted.load(Ordering::SeqCst) {
        return Err("interrupted: nothing was written".into());
    }
    store
        .save_sealed(&args.output, engine.store_key())
        .map_err(|e| e.to_string())?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "retrofit: {} background tokens in {} batches, {:.1} s",
        store.background.tokens, store.background.batches, secs
    );
    for (l, u) in store.config.layers.iter().zip(store.usage()) {
        eprintln!(
            "layer {l}: {:.1}% of {} slots touched, entropy {:.3} of max, busiest 1% take {:.1}% of accesses",
            100.0 * u.touched_fraction(),
            u.slots,
            u.normalized_entropy,
            100.0 * u.busiest_1pct_share
        );
    }
    println!("{}", args.output.display());
    Ok(())
}
