//! `engram`: the command-line front door to the runtime.

// Doc comments here are clap's --help text, where `[,NOTES]` means optional, not a link.
#![allow(rustdoc::broken_intra_doc_links)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use engram::delta::MemoryAccess;
use engram::gguf::Gguf;
use engram::memory::DEFAULT_NOTE_READ_GATE;
use engram::{
    Device, Engine, EngineOptions, GenerateOptions, LoopGuard, ReadGating, SamplingConfig,
    StoreKey, SystemPrompt,
};

mod bench;
mod chat;
mod chat_eval;
mod delta;
mod eval;
mod eval_set;
mod info;
mod keys;
mod learn;
mod plot;
mod quiz;
mod retrofit;

/// File name of the default model that `scripts/fetch-model` places in `models/`.
const DEFAULT_MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Parser)]
#[command(
    name = "engram",
    version,
    about = "Run and teach a small language model on your own device"
)]
struct Cli {
    /// Model file (GGUF). Default: models/SmolLM2-135M-Instruct.Q4_1.gguf (or $ENGRAM_MODEL).
    #[arg(short, long, global = true)]
    model: Option<PathBuf>,
    /// CPU threads (0 = one per core).
    #[arg(short, long, global = true, default_value_t = 0)]
    threads: usize,
    /// Where the model runs: auto (a GPU if there is one, else the CPU), cpu, wgpu (any wgpu
    /// adapter, software ones included), wgpu:N (adapter N of `engram info --devices`), cuda,
    /// cuda:N (NVIDIA GPUs; needs the driver and NVRTC, found at run time).
    /// $ENGRAM_DEVICE sets it when this is auto.
    #[arg(long, global = true, default_value = "auto", value_parser = parse_device)]
    device: Device,
    /// Memory store to attach (from `engram retrofit`) for generate, chat and bench.
    #[arg(long, global = true)]
    memory: Option<PathBuf>,
    /// Key file of an encrypted memory store (from `engram keys store-key`); retrofit
    /// encrypts the store it writes under it. $ENGRAM_STORE_KEY (64 hex digits) also gives
    /// the key.
    #[arg(long, global = true, value_name = "FILE")]
    store_key_file: Option<PathBuf>,
    /// Which reads of learned value rows pass. "routes" (the default): each fact's own rows,
    /// read at every token for a while after the sequence names it (holds one of its topic
    /// words, a name or "bike"), and nowhere else; "topics[:QUESTIONS[,NOTES]]": those of a
    /// fact the sequence has named that the lookup picks, within these cosines of the fact's
    /// tokens; QUESTIONS[,NOTES]: those within these cosines of a learned token (e.g.
    /// 0.95,0.8); or "off". Learn with --lr 140000 --top-t 500 under the last three.
    #[arg(long, global = true, value_parser = parse_read_gate)]
    read_gate: Option<ReadGating>,
    /// What the chat template gets when there is no system message (ask, chat, learn, eval):
    /// "none" (no system turn), "default" (the template's own default line, if it has one),
    /// or any other text as the system message. Left out: the library's default.
    #[arg(long, global = true)]
    system: Option<SystemPrompt>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// What a model file or a memory store holds (config, sizes, types, slot usage).
    Info {
        /// Model file (same as -m) or memory store.
        file: Option<PathBuf>,
        /// List the compute devices (the CPU and every wgpu adapter) instead.
        #[arg(long)]
        devices: bool,
    },
    /// Raw completion: prints only the continuation of the prompt.
    Generate {
        /// Text to continue.
        #[arg(short, long)]
        prompt: String,
        #[command(flatten)]
        sampling: GenArgs,
    },
    /// Interactive chat through the model's chat template (/reset clears, /quit or EOF ends).
    Chat {
        #[command(flatten)]
        sampling: GenArgs,
        /// Remember what the user tells about themselves (needs --memory, opened for
        /// writing): statements are learned after the reply is shown, an update replaces the
        /// fact it changes; /remember TEXT, /forget WHAT and /learned work too.
        #[arg(long)]
        learn: bool,
        /// Let the model answer questions about the user that nothing learned answers
        /// (by default the chat says "You haven't told me that." to them instead of letting
        /// the model invent an answer; needs the routing read gate, the default).
        #[arg(long)]
        no_abstain: bool,
    },
    /// Prints the token ids of TEXT, e.g. [19556, 905, 28].
    Tokenize {
        /// Text to tokenize (special-token markup such as <|im_start|> is recognized).
        text: String,
        /// Prepend BOS if the model asks for it.
        #[arg(long)]
        bos: bool,
    },
    /// Prefill and decode speed in tokens/s (with --memory: also without it, same run).
    Bench(bench::BenchArgs),
    /// Fit a memory layer into the model and write a memory store (values start at zero, so
    /// the model answers exactly as before).
    Retrofit(retrofit::RetrofitArgs),
    /// Teach the memory facts or notes (needs --memory); the store is rewritten atomically.
    Learn(learn::LearnArgs),
    /// Learn facts the model gets wrong one after another; measure learned accuracy, retention
    /// and held-out NLL per slot-selection method (needs --memory; the store is not changed).
    Eval(eval::EvalArgs),
    /// Learning while chatting, on the scripted conversations of eval/chat-*.jsonl: which
    /// turns would be learned and which facts updates replace; with --memory also learned and
    /// asked (recall, updates, abstention, retention; the store is not changed).
    ChatEval(chat_eval::ChatEvalArgs),
    /// Ask questions with known answers through ask's path and count the right ones per
    /// kind (compare --system policies with it).
    Quiz(quiz::QuizArgs),
    /// Exchange what was learned: export, import, revert, inspect and list deltas.
    Delta {
        #[command(subcommand)]
        command: delta::DeltaCommand,
    },
    /// Signing keys for deltas: generate, show the public line, list trusted signers.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Name the memory's current state (a later `delta export --since NAME` holds only what
    /// was learned after it).
    Snapshot {
        /// The snapshot's name.
        name: String,
    },
    /// Fold the journal into the store file now (learn does this when it finishes).
    Checkpoint,
    /// List the facts learned into the memory, with the numbers `forget` takes.
    Learned,
    /// Forget one learned fact exactly: its change leaves every row (what was learned after
    /// it stays), its records are erased from disk.
    Forget {
        /// The fact's number (`engram learned`), or words of its text that match it alone.
        what: String,
    },
    /// Ask a question through the chat template, greedily (use --memory to ask what was learned).
    Ask {
        /// The question.
        question: String,
        /// Most tokens in the answer.
        #[arg(short = 'n', long, default_value_t = 64)]
        max_tokens: usize,
    },
}

/// Sampling flags; each one left out takes the command's default (`generate`: greedy;
/// `chat`: temperature 0.7, top-k 40, top-p 0.95, min-p 0.05, repeat penalty 1.1).
#[derive(Args)]
struct GenArgs {
    /// Most tokens to generate.
    #[arg(short = 'n', long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long)]
    temperature: Option<f32>,
    /// Keep the k most likely tokens (0 = all).
    #[arg(long)]
    top_k: Option<usize>,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long)]
    top_p: Option<f32>,
    /// Drop tokens less likely than this share of the most likely one (0 = off).
    #[arg(long)]
    min_p: Option<f32>,
    /// Penalty for recently generated tokens (1 = off).
    #[arg(long)]
    repeat_penalty: Option<f32>,
    /// Subtracted from the logit of every token in the penalty window (0 = off).
    #[arg(long)]
    presence_penalty: Option<f32>,
    /// Subtracted once per occurrence in the penalty window (0 = off).
    #[arg(long)]
    frequency_penalty: Option<f32>,
    /// Recent tokens the penalties look at.
    #[arg(long)]
    repeat_last_n: Option<usize>,
    /// Random seed (same seed, same text).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Let a reply repeat itself until the token limit (by default a reply stops before any
    /// run of 5 tokens appears a fourth time).
    #[arg(long)]
    no_loop_guard: bool,
    /// Context window in tokens (0 = the model's).
    #[arg(long, default_value_t = 0)]
    ctx: usize,
}

impl GenArgs {
    /// The generation options: `base` with every flag given laid over it.
    fn options(&self, base: SamplingConfig) -> GenerateOptions {
        GenerateOptions {
            max_tokens: self.max_tokens,
            sampling: SamplingConfig {
                temperature: self.temperature.unwrap_or(base.temperature),
                top_k: self.top_k.unwrap_or(base.top_k),
                top_p: self.top_p.unwrap_or(base.top_p),
                min_p: self.min_p.unwrap_or(base.min_p),
                repeat_penalty: self.repeat_penalty.unwrap_or(base.repeat_penalty),
                presence_penalty: self.presence_penalty.unwrap_or(base.presence_penalty),
                frequency_penalty: self.frequency_penalty.unwrap_or(base.frequency_penalty),
                repeat_last_n: self.repeat_last_n.unwrap_or(base.repeat_last_n),
                seed: self.seed,
            },
            loop_guard: (!self.no_loop_guard).then(LoopGuard::default),
        }
    }
}

/// The model to use: -m, then $ENGRAM_MODEL, then models/ in this or a parent directory.
fn resolve_model(given: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(p) = given.or_else(|| std::env::var_os("ENGRAM_MODEL").map(PathBuf::from)) {
        return Ok(p);
    }
    let cwd =
        std::env::current_dir().map_err(|e| format!("cannot read the current directory: {e}"))?;
    for dir in cwd.ancestors() {
        let candidate = dir.join("models").join(DEFAULT_MODEL);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(format!(
        "no model given (-m MODEL) and the default model models/{DEFAULT_MODEL} is missing; fetch it with: scripts/fetch-model"
    ))
}

fn parse_device(s: &str) -> Result<Device, String> {
    s.parse().map_err(|e: engram::Error| e.to_string())
}

/// Where an engine runs: the device and the CPU thread count.
#[derive(Clone)]
pub struct Placement {
    /// CPU worker threads (0 = one per core).
    pub threads: usize,
    /// Device to run on.
    pub device: Device,
    /// Read gate of the attached memory.
    pub read_gate: ReadGating,
    /// What the chat template gets when a conversation has no system message.
    pub system: SystemPrompt,
    /// The key of an encrypted store.
    pub store_key: Option<StoreKey>,
}

/// `--read-gate` and `--gate-sweep` values: routes, QUESTIONS[,NOTES] cosines, topics[:OPEN]
/// or off.
pub fn parse_read_gate(s: &str) -> Result<ReadGating, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(ReadGating::Off);
    }
    if s.eq_ignore_ascii_case("routes") {
        return Ok(ReadGating::Routes);
    }
    if let Some(rest) = s.strip_prefix("topics") {
        let (questions, notes) = match rest.strip_prefix(':') {
            Some(c) => match parse_read_gate(c)? {
                ReadGating::Cosine { questions, notes } => (questions, notes),
                _ => return Err(format!("{s:?}: give topics or topics:QUESTIONS[,NOTES]")),
            },
            None if rest.is_empty() => (engram::DEFAULT_TOPIC_COSINE, engram::DEFAULT_TOPIC_COSINE),
            None => return Err(format!("{s:?}: give topics or topics:QUESTIONS[,NOTES]")),
        };
        return Ok(ReadGating::Topics { questions, notes });
    }
    let cosine = |t: &str| match t.trim().parse::<f32>() {
        Ok(c) if c.is_finite() && (-1.0..=1.0).contains(&c) => Ok(c),
        _ => Err(format!(
            "{t:?} is not a cosine in [-1, 1] (give routes, QUESTIONS[,NOTES], topics[:QUESTIONS[,NOTES]] or \"off\")"
        )),
    };
    let (questions, notes) = match s.split_once(',') {
        Some((q, n)) => (cosine(q)?, cosine(n)?),
        None => (cosine(s)?, DEFAULT_NOTE_READ_GATE),
    };
    Ok(ReadGating::Cosine { questions, notes })
}

impl Cli {
    fn placement(&self) -> Result<Placement, String> {
        let store_key = match (&self.store_key_file, std::env::var("ENGRAM_STORE_KEY")) {
            (Some(file), _) => Some(StoreKey::read(file).map_err(|e| e.to_string())?),
            (None, Ok(hex)) if !hex.is_empty() => {
                Some(StoreKey::from_text(&hex).map_err(|e| format!("ENGRAM_STORE_KEY: {e}"))?)
            }
            _ => None,
        };
        Ok(Placement {
            threads: self.threads,
            device: self.device,
            read_gate: self.read_gate.unwrap_or_default(),
            system: self.system.clone().unwrap_or_default(),
            store_key,
        })
    }
}

fn open(
    model: Option<PathBuf>,
    memory: Option<PathBuf>,
    place: Placement,
    ctx: usize,
) -> Result<Engine, String> {
    open_with(model, memory, MemoryAccess::Read, place, ctx)
}

/// Opens the model; a memory store is opened with `access` and its repair notes printed.
fn open_with(
    model: Option<PathBuf>,
    memory: Option<PathBuf>,
    access: MemoryAccess,
    place: Placement,
    ctx: usize,
) -> Result<Engine, String> {
    let path = resolve_model(model)?;
    let start = Instant::now();
    let mut engine = Engine::open(
        &path,
        &EngineOptions {
            threads: place.threads,
            device: place.device,
            context: ctx,
            read_gate: place.read_gate,
            system_prompt: place.system,
            store_key: place.store_key,
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    if let Some(note) = engine.device_note() {
        eprintln!("note: {note}");
    }
    if let Some(m) = &memory {
        for warning in engine.open_memory(m, access).map_err(|e| e.to_string())? {
            eprintln!("warning: {warning}");
        }
    }
    let with = memory.map_or(String::new(), |m| format!(" with memory {}", m.display()));
    eprintln!(
        "loaded {}{with} on {} in {:.0} ms",
        path.display(),
        engine.device_name(),
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(engine)
}

fn run(cli: Cli) -> Result<(), String> {
    let place = cli.placement()?;
    match cli.command {
        Command::Info { devices: true, .. } => {
            info::print_devices();
            Ok(())
        }
        Command::Info { file, .. } => {
            let path = match file {
                Some(f) => f,
                None => resolve_model(cli.model)?,
            };
            let mut head = [0u8; 8];
            let sealed = std::fs::File::open(&path)
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
                .is_ok()
                && engram::delta::is_sealed(&head);
            let gguf = match (sealed, &place.store_key) {
                (false, _) => Gguf::open(&path),
                (true, None) => {
                    return Err(format!(
                        "{} is an encrypted store: give its key (--store-key-file or ENGRAM_STORE_KEY)",
                        path.display()
                    ));
                }
                (true, Some(key)) => std::fs::read(&path)
                    .map_err(|source| engram::Error::Io {
                        path: path.clone(),
                        source,
                    })
                    .and_then(|bytes| key.open_store_file(bytes, &path))
                    .and_then(Gguf::from_bytes),
            }
            .map_err(|e| e.to_string())?;
            info::print(&path, &gguf).map_err(|e| e.to_string())
        }
        Command::Generate { prompt, sampling } => {
            let engine = open(cli.model, cli.memory, place, sampling.ctx)?;
            let mut stdout = std::io::stdout();
            let g = engine
                .generate(
                    &prompt,
                    &sampling.options(SamplingConfig::greedy()),
                    |piece| {
                        let _ = stdout.write_all(piece.as_bytes());
                        let _ = stdout.flush();
                        true
                    },
                )
                .map_err(|e| e.to_string())?;
            println!();
            report(&g);
            Ok(())
        }
        Command::Chat {
            sampling,
            learn,
            no_abstain,
        } => {
            let engine = if learn {
                let memory = cli
                    .memory
                    .ok_or("chat --learn needs --memory STORE (make one with engram retrofit)")?;
                open_with(
                    cli.model,
                    Some(memory),
                    MemoryAccess::Write,
                    place,
                    sampling.ctx,
                )?
            } else {
                open(cli.model, cli.memory, place, sampling.ctx)?
            };
            let abstain = (!no_abstain).then(|| engram::DEFAULT_ABSTENTION.to_owned());
            chat::chat(
                engine,
                &sampling.options(SamplingConfig::chat()),
                learn,
                abstain,
            )
        }
        Command::Tokenize { text, bos } => {
            let path = resolve_model(cli.model)?;
            let gguf = Gguf::open(&path).map_err(|e| e.to_string())?;
            let tok = engram::Tokenizer::from_gguf(&gguf).map_err(|e| e.to_string())?;
            let ids = tok.encode(&text, bos).map_err(|e| e.to_string())?;
            println!("{ids:?}");
            Ok(())
        }
        Command::Bench(args) => {
            let base = open(cli.model.clone(), None, place.clone(), 0)?;
            let with_memory = match cli.memory {
                Some(m) => Some(open(cli.model, Some(m), place, 0)?),
                None => None,
            };
            bench::run(base, with_memory, &args)
        }
        Command::Learn(args) => {
            if cli.memory.is_none() {
                return Err("learn needs --memory STORE (make one with engram retrofit)".into());
            }
            learn::run(
                open_with(cli.model, cli.memory, MemoryAccess::Write, place, 0)?,
                &args,
            )
        }
        Command::Eval(args) => {
            if cli.memory.is_none() {
                return Err("eval needs --memory STORE (make one with engram retrofit)".into());
            }
            eval::run(open(cli.model, cli.memory, place, 0)?, &args)
        }
        Command::Ask {
            question,
            max_tokens,
        } => {
            let engine = open(cli.model, cli.memory, place, 0)?;
            println!(
                "{}",
                engine
                    .ask(&question, max_tokens)
                    .map_err(|e| e.to_string())?
            );
            Ok(())
        }
        Command::ChatEval(args) => {
            let engine = match cli.memory {
                Some(m) => Some(open(cli.model, Some(m), place, 0)?),
                None => None,
            };
            chat_eval::run(engine, &args)
        }
        Command::Quiz(args) => quiz::run(&open(cli.model, cli.memory, place, 0)?, &args),
        Command::Delta { command } => delta::run(cli.model, cli.memory, place, command),
        Command::Keys { command } => keys::run(command, cli.memory, place.store_key),
        Command::Snapshot { name } => {
            let (mut engine, memory) = open_for_writing(cli.model, cli.memory, "snapshot", place)?;
            engine.snapshot(&name).map_err(|e| e.to_string())?;
            println!("snapshot {name:?} of {} taken", memory.display());
            Ok(())
        }
        Command::Checkpoint => {
            let (mut engine, memory) =
                open_for_writing(cli.model, cli.memory, "checkpoint", place)?;
            let journal = engine.journal_len();
            let t = Instant::now();
            let written = engine.checkpoint().map_err(|e| e.to_string())?;
            println!(
                "checkpointed {} ({journal} journal bytes folded in, {:.2} s): {}",
                memory.display(),
                t.elapsed().as_secs_f64(),
                describe_checkpoint(&written)
            );
            Ok(())
        }
        Command::Learned => {
            let memory = cli.memory.ok_or("learned needs --memory STORE")?;
            let engine = open_with(cli.model, Some(memory), MemoryAccess::Read, place, 0)?;
            let facts = engine.learned_facts();
            println!("{} learned facts", facts.len());
            for f in facts {
                let number = if f.uid == 0 {
                    "-".to_owned()
                } else {
                    f.uid.to_string()
                };
                match f.replaced.last() {
                    Some(old) => println!("{number:>5}  {}  (replaced {old:?})", f.text),
                    None => println!("{number:>5}  {}", f.text),
                }
            }
            Ok(())
        }
        Command::Forget { what } => {
            let (mut engine, memory) = open_for_writing(cli.model, cli.memory, "forget", place)?;
            let r = engine.forget_matching(&what).map_err(|e| e.to_string())?;
            println!(
                "forgot fact {} {:?}: its change left {} rows ({} shared with other facts); \
                 {} record(s) erased from {}",
                r.uid,
                r.text,
                r.rows,
                r.shared,
                r.erased,
                engram::delta::fact_log_path(&memory).display()
            );
            Ok(())
        }
        Command::Retrofit(args) => {
            if cli.memory.is_some() {
                return Err("retrofit makes a new store; it takes no --memory".into());
            }
            retrofit::run(open(cli.model, None, place, 0)?, &args)
        }
    }
}

/// The model with the store in `memory` open for writing (locked, journaled), for the
/// command `what`; the store's path comes back too.
fn open_for_writing(
    model: Option<PathBuf>,
    memory: Option<PathBuf>,
    what: &str,
    place: Placement,
) -> Result<(Engine, PathBuf), String> {
    let memory = memory.ok_or_else(|| format!("{what} needs --memory STORE"))?;
    let engine = open_with(model, Some(memory.clone()), MemoryAccess::Write, place, 0)?;
    Ok((engine, memory))
}

/// A flag that Ctrl-C sets, so long work can stop cleanly instead of being killed mid-write.
fn ctrl_c_flag() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>, String> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let set = flag.clone();
    ctrlc::set_handler(move || set.store(true, std::sync::atomic::Ordering::SeqCst))
        .map_err(|e| format!("cannot install the Ctrl-C handler: {e}"))?;
    Ok(flag)
}

fn report(g: &engram::Generation) {
    let tps = |n: usize, d: std::time::Duration| n as f64 / d.as_secs_f64().max(1e-9);
    eprintln!(
        "[{} prompt tokens at {:.1} tok/s, {} generated at {:.1} tok/s, stop: {:?}]",
        g.prompt_tokens,
        tps(g.prompt_tokens, g.prefill_time),
        g.tokens.len(),
        tps(g.tokens.len(), g.decode_time),
        g.stop
    );
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What a checkpoint wrote, in one phrase.
fn describe_checkpoint(w: &engram::delta::CheckpointReport) -> String {
    if w.in_place {
        format!(
            "{} rows and the history written in place, {:.2} MB",
            w.rows,
            w.bytes_written as f64 / 1e6
        )
    } else {
        format!(
            "the whole store written anew, {:.1} MB",
            w.bytes_written as f64 / 1e6
        )
    }
}
