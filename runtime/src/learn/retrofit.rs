//! Fitting a memory layer into a pretrained model without gradient training.
//!
//! The query projection whitens the hidden states along their principal directions (a random
//! rotation per head, so heads partition the space differently and both halves carry equal
//! variance); each half's sub-keys are spherical k-means centroids of the projected states, as
//! in product quantization, so slots are used evenly. Values start at zero, which keeps the
//! model exactly the base model. The background corpus then runs through the lookup to
//! record per-slot access counts and document frequencies.

use std::time::Instant;

use super::linalg::{
    Rng, mean_and_covariance, normalize_rows, random_orthogonal, spherical_kmeans, symmetric_eigen,
};
use crate::backend::Backend;
use crate::delta::MemoryStore;
use crate::error::{Error, Result};
use crate::memory::{BackgroundInfo, BackgroundStats, MemoryLayerParams};
use crate::memory::{MemoryConfig, SlotLookup};
use crate::model::Model;
use crate::tokenizer::{ChatMessage, Tokenizer};

/// How the query projection and sub-keys are initialised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Init {
    /// Principal directions + k-means per half, fitted to the background's hidden states.
    #[default]
    Fitted,
    /// Gaussian projection and Gaussian unit sub-keys (the baseline the fit is measured against).
    Random,
}

/// Settings of a retrofit.
#[derive(Clone, Debug)]
pub struct RetrofitOptions {
    /// Shape of the memory.
    pub config: MemoryConfig,
    /// Initialisation of query and keys.
    pub init: Init,
    /// Tokens per background batch (one KV-cache window; the unit of document frequency).
    pub batch_tokens: usize,
    /// Use at most this many background tokens (0 = all).
    pub max_tokens: usize,
    /// Hidden states sampled for the fit.
    pub fit_samples: usize,
    /// k-means iterations per half.
    pub kmeans_iters: usize,
    /// Seed of every random choice (same seed and corpus, same store).
    pub seed: u64,
    /// Share of background documents rendered as a chat exchange through the model's own
    /// template. The slots that chat markup reads then count as background; without them
    /// TF-IDF would rank those slots first for every fact and learning would rewrite rows
    /// that every chat answer reads.
    pub chat_fraction: f32,
    /// Background tokens whose reads are kept in the store (evenly spaced over the corpus):
    /// learning holds the memory's output at them, so it changes little where general text
    /// reads (see `LearnOptions::background_penalty`). 0 keeps none.
    pub sample_tokens: usize,
    /// Softmax temperature of the lookup over each head's top-k picks: the query (and its
    /// bias) is divided by it, so the picks stay the same and only their weights change.
    /// Above 1 a token spreads its read over more of its picks, so a fact is written into
    /// many rows by small amounts and general text that shares one of them sees little of it.
    pub temperature: f32,
}

impl Default for RetrofitOptions {
    fn default() -> Self {
        RetrofitOptions {
            config: MemoryConfig::default(),
            init: Init::Fitted,
            batch_tokens: 256,
            max_tokens: 0,
            fit_samples: 12_288,
            kmeans_iters: 12,
            seed: 1,
            chat_fraction: 0.5,
            // 8 sampled reads per row in the default memory (16,384 × 128 over 262,144 slots),
            // the density the background penalty was tuned at.
            sample_tokens: 16_384,
            // 25 SimpleQA facts (subset A, 40 retention questions, 65,536 slots), learned /
            // retention / held-out NLL, the learning rate scaled with it: T 1 (lr 15,000)
            // 48 / 95 / +0.36 %; T 2 (lr 30,000) 76 / 92.5 / +0.30 %; T 4 (lr 60,000)
            // 88 / 97.5 / +0.40 %; T 8 (lr 120,000) 92 / 85 / +0.45 %; T 0.5 (lr 7,500)
            // 52 / 85 / +0.76 %. At N = 100 (150 retention questions) T 4 held up only in the
            // 262,144-slot memory: 68 % / 91.3 % there, 56 % / 56.0 % in 65,536 slots, where
            // T 1 gave 32 % / 83.3 %.
            temperature: 4.0,
        }
    }
}

/// Where a retrofit is; reported after every unit of work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetrofitProgress {
    /// Running the model over background batches to collect hidden states.
    Collect {
        /// Batches done.
        done: usize,
        /// All batches.
        total: usize,
    },
    /// Fitting projections and sub-keys.
    Fit {
        /// Steps done.
        done: usize,
        /// All steps.
        total: usize,
    },
    /// Counting slot accesses over the background batches.
    Statistics {
        /// Batches done.
        done: usize,
        /// All batches.
        total: usize,
    },
}

impl RetrofitOptions {
    /// Checks every option against the model before any work starts.
    pub fn validate(&self, model: &crate::model::ModelConfig) -> Result<()> {
        self.config.validate(model.n_layers)?;
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if !(0.0..=1.0).contains(&self.chat_fraction) {
            return bad(format!(
                "chat_fraction {} must be between 0 and 1",
                self.chat_fraction
            ));
        }
        if !self.temperature.is_finite() || self.temperature <= 0.0 || self.temperature > 100.0 {
            return bad(format!(
                "temperature {} must be above 0 and at most 100",
                self.temperature
            ));
        }
        if self.batch_tokens < 2 || self.batch_tokens > model.context_length {
            return bad(format!(
                "batch_tokens {} must be between 2 and the context length {}",
                self.batch_tokens, model.context_length
            ));
        }
        if self.init == Init::Fitted && self.config.k_dim > model.dim {
            return bad(format!(
                "k_dim {} is larger than the model width {}: the fitted init projects onto \
                 principal directions (use a smaller k_dim or --init random)",
                self.config.k_dim, model.dim
            ));
        }
        if self.init == Init::Fitted && self.fit_samples < self.config.n_keys {
            return bad(format!(
                "fit_samples {} is fewer than n_keys {}",
                self.fit_samples, self.config.n_keys
            ));
        }
        Ok(())
    }
}

/// Builds a memory store for `model` from background `documents`.
///
/// `progress` is called after every unit of work; returning `false` stops the retrofit with
/// [`Error::Interrupted`] (nothing is written: the caller saves the store only on success).
pub fn retrofit<B: Backend>(
    model: &Model<B>,
    tokenizer: &Tokenizer,
    base_fingerprint: &str,
    documents: &[String],
    opts: &RetrofitOptions,
    progress: &mut dyn FnMut(RetrofitProgress) -> bool,
) -> Result<MemoryStore> {
    let mc = &model.config;
    opts.validate(mc)?;
    if !model.memory().is_empty() {
        return Err(Error::InvalidArgument(
            "retrofit needs the base model without a memory attached".into(),
        ));
    }
    let started = Instant::now();
    let batches = background_batches(tokenizer, documents, opts)?;
    let min_tokens = if opts.init == Init::Fitted {
        opts.fit_samples.max(opts.config.n_keys)
    } else {
        1
    };
    let n_tokens: usize = batches.iter().map(Vec::len).sum();
    if opts.init == Init::Fitted && n_tokens < opts.config.n_keys {
        return Err(Error::InvalidArgument(format!(
            "the background has {n_tokens} tokens; fitting {} sub-keys needs at least that many \
             (ideally {min_tokens}+)",
            opts.config.n_keys
        )));
    }
    let stop = || Error::Interrupted("retrofit stopped; nothing was written".into());
    let b = model.backend();
    let layers = &opts.config.layers;
    let dim = mc.dim;

    // 1. Hidden states at every memory layer, for all background tokens.
    let mut states: Vec<Vec<f32>> = vec![Vec::with_capacity(n_tokens * dim); layers.len()];
    for (i, batch) in batches.iter().enumerate() {
        let mut cache = model.new_cache(batch.len());
        for (s, h) in states
            .iter_mut()
            .zip(model.ffn_inputs(batch, &mut cache, layers)?)
        {
            s.extend(b.download(&h));
        }
        if !progress(RetrofitProgress::Collect {
            done: i + 1,
            total: batches.len(),
        }) {
            return Err(stop());
        }
    }

    // 2. Query projection and sub-keys per layer.
    let mut rng = Rng::new(opts.seed);
    let fit_steps = layers.len() * (1 + opts.config.heads);
    let mut step = 0;
    let mut params = Vec::with_capacity(layers.len());
    for (&layer, hs) in layers.iter().zip(&states) {
        let mut tick = || {
            step += 1;
            progress(RetrofitProgress::Fit {
                done: step,
                total: fit_steps,
            })
        };
        let (mut query, mut query_bias, keys) = match opts.init {
            Init::Fitted => fit_lookup(hs, dim, opts, &mut rng, &mut tick)?.ok_or_else(stop)?,
            Init::Random => {
                let p = random_lookup(dim, &opts.config, &mut rng);
                for _ in 0..=opts.config.heads {
                    if !tick() {
                        return Err(stop());
                    }
                }
                p
            }
        };
        let sharpness = 1.0 / opts.temperature;
        query.iter_mut().for_each(|w| *w *= sharpness);
        query_bias.iter_mut().for_each(|b| *b *= sharpness);
        let (gate_in, gate_out) = if opts.config.gated {
            let (w1, w2) = gate_init(dim, &mut rng);
            (Some(w1), Some(w2))
        } else {
            (None, None)
        };
        params.push(MemoryLayerParams {
            layer,
            query,
            query_bias,
            keys,
            gate_in,
            gate_out,
            values: Vec::new().into(),
            background: BackgroundStats::default(),
        });
    }

    // 3. Background statistics through the fitted lookup, and the reads of a sample of tokens.
    let slots = opts.config.slots();
    let reads = opts.config.heads * opts.config.top_k;
    let sample_every = if opts.sample_tokens == 0 || slots > crate::memory::MAX_SAMPLED_SLOTS {
        usize::MAX
    } else {
        n_tokens.div_ceil(opts.sample_tokens).max(1)
    };
    let mut done = 0;
    for (p, hs) in params.iter_mut().zip(&states) {
        let lookup = SlotLookup::load(b, &opts.config, dim, p)?;
        let mut count = vec![0f32; slots];
        let mut df = vec![0f32; slots];
        let mut seen_in = vec![u32::MAX; slots];
        let mut sample = crate::memory::BackgroundSample::default();
        let mut row = 0;
        for (bi, batch) in batches.iter().enumerate() {
            let h = b.upload(&hs[row * dim..(row + batch.len()) * dim], batch.len(), dim);
            let first = row;
            row += batch.len();
            let found = lookup.lookup(b, &h);
            let ids = b.download_slots(&found.slots);
            let sampled: Vec<usize> = (first..row)
                .filter(|t| t % sample_every == 0)
                .map(|t| t - first)
                .collect();
            if !sampled.is_empty() {
                let weights = b.download(&found.weights);
                for t in sampled {
                    sample.slots.extend(&ids[t * reads..(t + 1) * reads]);
                    sample.weights.extend(&weights[t * reads..(t + 1) * reads]);
                }
            }
            for &id in &ids {
                let id = id as usize;
                count[id] += 1.0;
                if seen_in[id] != bi as u32 {
                    seen_in[id] = bi as u32;
                    df[id] += 1.0;
                }
            }
            done += 1;
            if !progress(RetrofitProgress::Statistics {
                done,
                total: batches.len() * layers.len(),
            }) {
                return Err(stop());
            }
        }
        p.background = BackgroundStats { count, df, sample };
    }
    drop(states);
    for p in &mut params {
        p.values = vec![0f32; slots * dim].into();
    }

    let init_fingerprint = MemoryStore::compute_init_fingerprint(&opts.config, &params);
    let info = vec![
        ("init".to_owned(), format!("{:?}", opts.init).to_lowercase()),
        ("seed".to_owned(), opts.seed.to_string()),
        ("chat_fraction".to_owned(), opts.chat_fraction.to_string()),
        ("temperature".to_owned(), opts.temperature.to_string()),
        (
            "retrofit_seconds".to_owned(),
            format!("{:.1}", started.elapsed().as_secs_f64()),
        ),
        (
            "base_model".to_owned(),
            mc.name.clone().unwrap_or_else(|| mc.architecture.clone()),
        ),
    ];
    Ok(MemoryStore {
        config: opts.config.clone(),
        dim,
        base_fingerprint: base_fingerprint.to_owned(),
        init_fingerprint,
        background: BackgroundInfo {
            batches: batches.len() as u64,
            tokens: n_tokens as u64,
            batch_tokens: opts.batch_tokens as u64,
        },
        layers: params,
        info,
        history: Default::default(),
    })
}

/// Tokenizes the documents into one stream (documents separated by a blank line) and cuts it
/// into batches of `batch_tokens`; a short tail shorter than a quarter batch is dropped.
/// `"Question: Q\nAnswer: A"` or `"Q: Q\nA: A"` → (Q, A).
fn split_question(doc: &str) -> Option<(&str, &str)> {
    let doc = doc.trim();
    [("Question: ", "\nAnswer: "), ("Q: ", "\nA: ")]
        .iter()
        .find_map(|(q, a)| {
            let rest = doc.strip_prefix(q)?;
            let (question, answer) = rest.split_once(a)?;
            let (question, answer) = (question.trim(), answer.trim());
            (!question.is_empty() && !answer.is_empty()).then_some((question, answer))
        })
}

fn background_batches(
    tokenizer: &Tokenizer,
    documents: &[String],
    opts: &RetrofitOptions,
) -> Result<Vec<Vec<u32>>> {
    let separator = tokenizer.encode("\n\n", false)?;
    let mut stream: Vec<u32> = Vec::new();
    let cap = if opts.max_tokens == 0 {
        usize::MAX
    } else {
        opts.max_tokens
    };
    // Generic requests: the point is the chat markup around the document, not the wording.
    const REQUESTS: [&str; 5] = [
        "Tell me something.",
        "What does this mean?",
        "Can you explain?",
        "Write a short text.",
        "Go on.",
    ];
    let mut chat_credit = 0f32;
    for (i, doc) in documents.iter().enumerate() {
        if stream.len() >= cap {
            break;
        }
        chat_credit += opts.chat_fraction;
        if chat_credit >= 1.0 && tokenizer.chat_template().is_some() {
            chat_credit -= 1.0;
            // A question-and-answer document is asked as itself; others get a generic request.
            let (user, reply) =
                split_question(doc).unwrap_or((REQUESTS[i % REQUESTS.len()], doc.trim()));
            let messages = [
                ChatMessage::new("user", user),
                ChatMessage::new("assistant", reply),
            ];
            let text = tokenizer.apply_chat_template(&messages, false)?;
            stream.extend(tokenizer.encode(&text, true)?);
        } else {
            stream.extend(tokenizer.encode(doc.trim(), false)?);
            stream.extend(&separator);
        }
    }
    stream.truncate(cap);
    // A model that asks for BOS reads every batch after one, as it reads every prompt: without
    // it Gemma 3 is another model (held-out perplexity 40.3 instead of 19.5), and the keys
    // would be fitted to hidden states it never has when asked.
    let lead: Vec<u32> = match (tokenizer.add_bos, tokenizer.bos) {
        (true, Some(bos)) => vec![bos],
        _ => Vec::new(),
    };
    let body = opts.batch_tokens.saturating_sub(lead.len()).max(1);
    let mut batches: Vec<Vec<u32>> = stream
        .chunks(body)
        .map(|chunk| [&lead[..], chunk].concat())
        .collect();
    if batches.len() > 1
        && batches
            .last()
            .is_some_and(|l| l.len() * 4 < opts.batch_tokens)
    {
        batches.pop();
    }
    if batches.is_empty() {
        return Err(Error::InvalidArgument(
            "the background corpus is empty".into(),
        ));
    }
    Ok(batches)
}

type LookupParams = (Vec<f32>, Vec<f32>, Vec<f32>);

/// PCA-whitened, randomly rotated projection per head, spherical k-means sub-keys per half.
/// Returns `None` when `tick` asks to stop.
fn fit_lookup(
    hs: &[f32],
    dim: usize,
    opts: &RetrofitOptions,
    rng: &mut Rng,
    tick: &mut dyn FnMut() -> bool,
) -> Result<Option<LookupParams>> {
    let c = &opts.config;
    let n = hs.len() / dim;
    // Evenly spaced samples over the whole corpus.
    let take = opts.fit_samples.min(n);
    let sample: Vec<f32> = (0..take)
        .flat_map(|i| {
            let r = i * n / take;
            hs[r * dim..(r + 1) * dim].iter().copied()
        })
        .collect();
    let (mean, cov) = mean_and_covariance(&sample, dim);
    let (eigvals, eigvecs) = symmetric_eigen(cov, dim);
    if !tick() {
        return Ok(None);
    }
    // Whitening scale per principal direction; near-zero variance directions are floored so
    // they do not blow up into noise.
    let floor = eigvals[0].max(f64::MIN_POSITIVE) * 1e-6;
    let kd = c.k_dim;
    let half = c.half_dim();
    let mut query = Vec::with_capacity(c.heads * kd * dim);
    let mut bias = Vec::with_capacity(c.heads * kd);
    let mut keys = Vec::with_capacity(c.heads * 2 * c.n_keys * half);
    for _head in 0..c.heads {
        let rot = random_orthogonal(kd, rng);
        // W = R · diag(λ^-1/2) · Uᵀ (rows of `eigvecs` are the principal directions).
        let mut w = vec![0f64; kd * dim];
        for r in 0..kd {
            for j in 0..kd {
                let f = rot[r * kd + j] / eigvals[j].max(floor).sqrt();
                let u = &eigvecs[j * dim..(j + 1) * dim];
                for (o, &x) in w[r * dim..(r + 1) * dim].iter_mut().zip(u) {
                    *o += f * x;
                }
            }
        }
        let head_bias: Vec<f64> = w
            .chunks_exact(dim)
            .map(|row| -row.iter().zip(&mean).map(|(a, b)| a * b).sum::<f64>())
            .collect();
        let wf: Vec<f32> = w.iter().map(|&x| x as f32).collect();
        let bf: Vec<f32> = head_bias.iter().map(|&x| x as f32).collect();
        // Projected samples, split into halves.
        let mut q1 = Vec::with_capacity(take * half);
        let mut q2 = Vec::with_capacity(take * half);
        for x in sample.chunks_exact(dim) {
            for (r, row) in wf.chunks_exact(dim).enumerate() {
                let v = crate::quant::dot_f32(row, x) + bf[r];
                if r < half {
                    q1.push(v);
                } else {
                    q2.push(v);
                }
            }
        }
        for q in [&q1, &q2] {
            keys.extend(spherical_kmeans(q, half, c.n_keys, opts.kmeans_iters, rng));
        }
        query.extend(wf);
        bias.extend(bf);
        if !tick() {
            return Ok(None);
        }
    }
    Ok(Some((query, bias, keys)))
}

/// Gaussian projection (variance 1/dim) and Gaussian unit sub-keys: the unfitted baseline.
fn random_lookup(dim: usize, c: &MemoryConfig, rng: &mut Rng) -> LookupParams {
    let scale = 1.0 / (dim as f64).sqrt();
    let query = (0..c.heads * c.k_dim * dim)
        .map(|_| (rng.gaussian() * scale) as f32)
        .collect();
    let bias = vec![0f32; c.heads * c.k_dim];
    let mut keys: Vec<f32> = (0..c.heads * 2 * c.n_keys * c.half_dim())
        .map(|_| rng.gaussian() as f32)
        .collect();
    normalize_rows(&mut keys, c.half_dim());
    (query, bias, keys)
}

/// Gate W1 Gaussian (variance 1/dim) and W2 the identity, so the output starts as y ⊙ silu(W1 x).
fn gate_init(dim: usize, rng: &mut Rng) -> (Vec<f32>, Vec<f32>) {
    let scale = 1.0 / (dim as f64).sqrt();
    let w1 = (0..dim * dim)
        .map(|_| (rng.gaussian() * scale) as f32)
        .collect();
    let mut w2 = vec![0f32; dim * dim];
    for i in 0..dim {
        w2[i * dim + i] = 1.0;
    }
    (w1, w2)
}
