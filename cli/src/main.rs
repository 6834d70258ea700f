//! `engram`: the command-line front door to the runtime.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use engram::delta::MemoryAccess;
use engram::gguf::Gguf;
use engram::memory::DEFAULT_NOTE_READ_GATE;
use engram::{
    ChatMessage, Device, Engine, EngineOptions, GenerateOptions, ReadGating, SamplingConfig,
};

mod bench;
mod delta;
mod eval;
mod info;
mod learn;
mod plot;
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
    /// adapter, software ones included), wgpu:N (adapter N of `engram info --devices`), cuda.
    /// $ENGRAM_DEVICE sets it when this is auto.
    #[arg(long, global = true, default_value = "auto", value_parser = parse_device)]
    device: Device,
    /// Memory store to attach (from `engram retrofit`) for generate, chat and bench.
    #[arg(long, global = true)]
    memory: Option<PathBuf>,
    /// A read of a value row that learned facts' tokens read passes only where the token's
    /// memory input is within this cosine of one of theirs: QUESTIONS[,NOTES] for
    /// question/answer facts' and notes' keys (default 0.95,0.8), or "off".
    #[arg(long, global = true, value_parser = parse_read_gate)]
    read_gate: Option<ReadGating>,
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
        /// Optional system message.
        #[arg(long)]
        system: Option<String>,
        #[command(flatten)]
        sampling: GenArgs,
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
    /// Exchange what was learned: export, import, revert, inspect and list deltas.
    Delta {
        #[command(subcommand)]
        command: delta::DeltaCommand,
    },
    /// Name the memory's current state (a later `delta export --since NAME` holds only what
    /// was learned after it).
    Snapshot {
        /// The snapshot's name.
        name: String,
    },
    /// Fold the journal into the store file now (learn does this when it finishes).
    Checkpoint,
    /// Ask a question through the chat template, greedily (use --memory to ask what was learned).
    Ask {
        /// The question.
        question: String,
        /// Most tokens in the answer.
        #[arg(short = 'n', long, default_value_t = 64)]
        max_tokens: usize,
    },
}

#[derive(Args)]
struct GenArgs {
    /// Most tokens to generate.
    #[arg(short = 'n', long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Penalty for recently generated tokens (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Random seed (same seed, same text).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Context window in tokens (0 = the model's).
    #[arg(long, default_value_t = 0)]
    ctx: usize,
}

impl GenArgs {
    fn options(&self) -> GenerateOptions {
        GenerateOptions {
            max_tokens: self.max_tokens,
            sampling: SamplingConfig {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                repeat_penalty: self.repeat_penalty,
                seed: self.seed,
                ..SamplingConfig::default()
            },
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
#[derive(Clone, Copy)]
pub struct Placement {
    /// CPU worker threads (0 = one per core).
    pub threads: usize,
    /// Device to run on.
    pub device: Device,
    /// Read gate of the attached memory.
    pub read_gate: ReadGating,
}

fn parse_read_gate(s: &str) -> Result<ReadGating, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(ReadGating::Off);
    }
    let cosine = |t: &str| match t.trim().parse::<f32>() {
        Ok(c) if c.is_finite() && (-1.0..=1.0).contains(&c) => Ok(c),
        _ => Err(format!(
            "{t:?} is not a cosine in [-1, 1] (give QUESTIONS[,NOTES] or \"off\")"
        )),
    };
    let (questions, notes) = match s.split_once(',') {
        Some((q, n)) => (cosine(q)?, cosine(n)?),
        None => (cosine(s)?, DEFAULT_NOTE_READ_GATE),
    };
    Ok(ReadGating::Cosine { questions, notes })
}

impl Cli {
    fn placement(&self) -> Placement {
        Placement {
            threads: self.threads,
            device: self.device,
            read_gate: self.read_gate.unwrap_or_default(),
        }
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
    let place = cli.placement();
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
            let gguf = Gguf::open(&path).map_err(|e| e.to_string())?;
            info::print(&path, &gguf).map_err(|e| e.to_string())
        }
        Command::Generate { prompt, sampling } => {
            let engine = open(cli.model, cli.memory, place, sampling.ctx)?;
            let mut stdout = std::io::stdout();
            let g = engine
                .generate(&prompt, &sampling.options(), |piece| {
                    let _ = stdout.write_all(piece.as_bytes());
                    let _ = stdout.flush();
                    true
                })
                .map_err(|e| e.to_string())?;
            println!();
            report(&g);
            Ok(())
        }
        Command::Chat { system, sampling } => chat(
            open(cli.model, cli.memory, place, sampling.ctx)?,
            system,
            &sampling.options(),
        ),
        Command::Tokenize { text, bos } => {
            let path = resolve_model(cli.model)?;
            let gguf = Gguf::open(&path).map_err(|e| e.to_string())?;
            let tok = engram::Tokenizer::from_gguf(&gguf).map_err(|e| e.to_string())?;
            let ids = tok.encode(&text, bos).map_err(|e| e.to_string())?;
            println!("{ids:?}");
            Ok(())
        }
        Command::Bench(args) => {
            let base = open(cli.model.clone(), None, place, 0)?;
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
        Command::Delta { command } => delta::run(cli.model, cli.memory, place, command),
        Command::Snapshot { name } => {
            let memory = cli.memory.ok_or("snapshot needs --memory STORE")?;
            let mut engine = open_with(
                cli.model,
                Some(memory.clone()),
                MemoryAccess::Write,
                place,
                0,
            )?;
            engine.snapshot(&name).map_err(|e| e.to_string())?;
            println!("snapshot {name:?} of {} taken", memory.display());
            Ok(())
        }
        Command::Checkpoint => {
            let memory = cli.memory.ok_or("checkpoint needs --memory STORE")?;
            let mut engine = open_with(
                cli.model,
                Some(memory.clone()),
                MemoryAccess::Write,
                place,
                0,
            )?;
            let journal = engine.journal_len();
            let t = Instant::now();
            engine.checkpoint().map_err(|e| e.to_string())?;
            println!(
                "checkpointed {} ({journal} journal bytes folded in, {:.2} s)",
                memory.display(),
                t.elapsed().as_secs_f64()
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

fn chat(engine: Engine, system: Option<String>, options: &GenerateOptions) -> Result<(), String> {
    let mut messages: Vec<ChatMessage> = system
        .iter()
        .map(|s| ChatMessage::new("system", s))
        .collect();
    let mut session = engine.session();
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    eprintln!("chat with the model; /reset starts over, /quit or Ctrl-D ends");
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| e.to_string())?
            == 0
        {
            return Ok(());
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/quit" | "/exit" => return Ok(()),
            "/reset" => {
                messages.retain(|m| m.role == "system");
                continue;
            }
            _ => {}
        }
        messages.push(ChatMessage::new("user", line));
        let prompt = engine
            .tokenizer()
            .apply_chat_template(&messages, true)
            .map_err(|e| e.to_string())?;
        let tokens = engine
            .tokenizer()
            .encode(&prompt, true)
            .map_err(|e| e.to_string())?;
        let g = session
            .generate(&tokens, options, |piece| {
                let _ = stdout.write_all(piece.as_bytes());
                let _ = stdout.flush();
                true
            })
            .map_err(|e| e.to_string())?;
        println!();
        messages.push(ChatMessage::new("assistant", g.text.trim()));
    }
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
