//! `engram learn` and `engram ask`: teach the memory facts, then ask about them.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use clap::{Args, ValueEnum};
use engram::Engine;
use engram::learn::{Fact, LearnOptions, Optimizer, SubjectRows};
use engram::memory::SlotScoring;
use indicatif::{ProgressBar, ProgressStyle};

/// Flags of `engram learn`.
#[derive(Args)]
pub struct LearnArgs {
    /// Facts: .jsonl ({"question","answer"} or {"note"}), .csv (question,answer) or one note per line.
    #[arg(long)]
    facts: PathBuf,
    #[command(flatten)]
    step: StepFlags,
    /// How the rows are chosen.
    #[arg(long, value_enum, default_value_t = ScoringArg::Tfidf)]
    scoring: ScoringArg,
    /// Update rule (AdamW's state is kept only for the rows selected for the current fact;
    /// its learning rate is per element, e.g. --lr 0.5).
    #[arg(long, value_enum, default_value_t = OptimizerArg::Sgd)]
    optimizer: OptimizerArg,
    /// Print "learned FACT" on stdout as each fact (counted from 0) reaches the journal.
    #[arg(long)]
    print_learned: bool,
    /// Leave the learned facts in the journal instead of folding them into the store at the end.
    #[arg(long)]
    no_checkpoint: bool,
}

impl ScoringArg {
    /// The runtime's scoring.
    pub fn scoring(self) -> SlotScoring {
        match self {
            ScoringArg::Tfidf => SlotScoring::TfIdf,
            ScoringArg::Kl => SlotScoring::Kl,
            ScoringArg::All => SlotScoring::AllTouched,
        }
    }

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            ScoringArg::Tfidf => "tfidf",
            ScoringArg::Kl => "kl",
            ScoringArg::All => "all",
        }
    }
}

/// `--optimizer` values.
#[derive(Clone, Copy, ValueEnum)]
pub enum OptimizerArg {
    /// Plain SGD.
    Sgd,
    /// AdamW masked to the selected rows.
    Adamw,
}

impl OptimizerArg {
    /// The runtime's optimizer.
    pub fn optimizer(self) -> Optimizer {
        match self {
            OptimizerArg::Sgd => Optimizer::Sgd,
            OptimizerArg::Adamw => Optimizer::adamw(),
        }
    }
}

/// Per-fact step settings shared by `learn` and `eval`.
#[derive(Args)]
pub struct StepFlags {
    /// Gradient steps per fact.
    #[arg(long, default_value_t = LearnOptions::default().steps)]
    pub steps: usize,
    /// Gradient steps per note (0: as --steps).
    #[arg(long, default_value_t = LearnOptions::default().note_steps)]
    pub note_steps: usize,
    /// Learning rate (SGD: per row update scale; AdamW: per element). The default suits the
    /// default read gate (routes), where it is for a fact of 500 rows and scaled to the rows a
    /// fact has; the topic and cosine gates were tuned at 140000 with --top-t 500.
    #[arg(long, default_value_t = LearnOptions::default().learning_rate)]
    pub lr: f32,
    /// Value rows updated per fact (under the routing gate each fact owns its rows: the
    /// default memory of 262,144 rows holds about 262,144 / this many facts).
    #[arg(long, default_value_t = LearnOptions::default().top_t)]
    pub top_t: usize,
    /// Stop a fact's steps once its mean loss is at or below this (nats; 0 = every step).
    #[arg(long, default_value_t = LearnOptions::default().stop_loss)]
    pub stop_loss: f32,
    /// Largest L2 norm a value row may reach (0 = no limit).
    #[arg(long, default_value_t = LearnOptions::default().max_row_norm)]
    pub max_row_norm: f32,
    /// Let learning change the rows that the phrasing templates read whatever the fact says
    /// (protected by default: every question in a familiar form reads them).
    #[arg(long)]
    pub change_template_rows: bool,
    /// How hard learning holds the memory's output near zero at the store's sampled
    /// background tokens (0 = off; needs a store retrofitted with a background sample).
    #[arg(long, default_value_t = LearnOptions::default().background_penalty)]
    pub background_penalty: f32,
    /// How hard learning holds the memory's output where it is at the tokens of the facts
    /// this process learned before (0 = off).
    #[arg(long, default_value_t = LearnOptions::default().earlier_fact_penalty)]
    pub earlier_fact_penalty: f32,
    /// Select rows only among those read at the fact's own words, never at the phrasing's
    /// template text.
    #[arg(long)]
    pub content_rows_only: bool,
    /// Train each fact on its own wording only, without the questions made from it by rules
    /// (for measuring what they add).
    #[arg(long)]
    pub no_asked_phrasings: bool,
    /// Which facts learn only in the rows their topic words (names, "my bike") read: off,
    /// questions, notes or all.
    #[arg(long, value_enum, default_value = "off")]
    pub subject_rows: SubjectRowsArg,
}

/// `--subject-rows` values.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SubjectRowsArg {
    /// Every fact selects among all the rows its phrasings read.
    Off,
    /// Question/answer facts only.
    Questions,
    /// Notes only.
    Notes,
    /// Both kinds.
    All,
}

impl StepFlags {
    /// Learning options with these steps, `scoring` and `optimizer`.
    pub fn options(&self, scoring: SlotScoring, optimizer: Optimizer) -> LearnOptions {
        LearnOptions {
            steps: self.steps,
            note_steps: self.note_steps,
            learning_rate: self.lr,
            top_t: self.top_t,
            scoring,
            optimizer,
            stop_loss: self.stop_loss,
            max_row_norm: self.max_row_norm,
            protect_template_rows: !self.change_template_rows,
            background_penalty: self.background_penalty,
            earlier_fact_penalty: self.earlier_fact_penalty,
            content_rows_only: self.content_rows_only,
            asked_phrasings: !self.no_asked_phrasings,
            subject_rows: match self.subject_rows {
                SubjectRowsArg::Off => SubjectRows::Off,
                SubjectRowsArg::Questions => SubjectRows::Questions,
                SubjectRowsArg::Notes => SubjectRows::Notes,
                SubjectRowsArg::All => SubjectRows::All,
            },
        }
    }
}

/// Says so when learning will run without its background anchor because the store predates
/// background samples: such a store learns, but forgets more.
pub fn note_missing_sample(engine: &Engine, options: &LearnOptions) {
    if options.background_penalty > 0.0 && engine.background_sample_tokens() == 0 {
        eprintln!(
            "note: this memory store keeps no background sample (it was made before engram \
             recorded one), so learning runs without the background anchor and changes more \
             of what the model knew; `engram retrofit` makes a store with one"
        );
    }
}

/// `--scoring` values.
#[derive(Clone, Copy, ValueEnum)]
pub enum ScoringArg {
    /// TF-IDF against the background's document frequency.
    Tfidf,
    /// KL against the background's access distribution.
    Kl,
    /// Every slot the fact touched (no selection).
    All,
}

/// Learns the facts (each journaled as it is learned), then checkpoints the store.
pub fn run(mut engine: Engine, args: &LearnArgs) -> Result<(), String> {
    let store = engine
        .memory_path()
        .map(PathBuf::from)
        .ok_or("learn needs --memory STORE (make one with engram retrofit)")?;
    let options = args
        .step
        .options(args.scoring.scoring(), args.optimizer.optimizer());
    options.validate().map_err(|e| e.to_string())?;
    note_missing_sample(&engine, &options);
    let facts = Fact::read_file(&args.facts).map_err(|e| e.to_string())?;

    let interrupted = crate::ctrl_c_flag()?;
    let bar = ProgressBar::new(facts.len() as u64).with_style(
        ProgressStyle::with_template(
            "learning [{bar:30}] {pos}/{len} facts {msg} ({elapsed}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let print_learned = args.print_learned;
    let report = engine.learn(&facts, &options, &mut |fact, step, loss| {
        let done = facts
            .get(fact)
            .is_some_and(|f| options.is_last_step(f, step, loss));
        if print_learned && done {
            println!("learned {fact}");
        }
        bar.set_position(fact as u64);
        bar.set_message(format!("step {step} loss {loss:.3}"));
        !interrupted.load(Ordering::SeqCst)
    });
    bar.finish_and_clear();
    let report = report.map_err(|e| {
        format!("{e}; the facts learned before this are kept in the store's journal")
    })?;
    let checkpoint = std::time::Instant::now();
    let written = if args.no_checkpoint {
        None
    } else {
        Some(engine.checkpoint().map_err(|e| e.to_string())?)
    };
    let checkpoint = checkpoint.elapsed();
    for (f, r) in facts.iter().zip(&report.facts) {
        let what = match f {
            Fact::QuestionAnswer { question, .. } => question.as_str(),
            Fact::Note(n) => n.as_str(),
        };
        eprintln!(
            "loss {:.3} -> {:.3}, {} rows: {what}",
            r.loss_before,
            r.loss_after,
            r.rows.len()
        );
    }
    let t = &report.timings;
    eprintln!(
        "learned {} facts in {:.1} s ({:.1} s per fact: prepare {:.1}, selection {:.2}, forward {:.1}, backward {:.1}, update {:.2}, anchor setup {:.2}); {} {} ({:.2} s)",
        facts.len(),
        report.total.as_secs_f64(),
        report.total.as_secs_f64() / facts.len() as f64,
        t.prepare.as_secs_f64(),
        t.selection.as_secs_f64(),
        t.forward.as_secs_f64(),
        t.backward.as_secs_f64(),
        t.update.as_secs_f64(),
        t.anchor.as_secs_f64(),
        if args.no_checkpoint {
            "journaled in"
        } else {
            "checkpointed"
        },
        store.display(),
        checkpoint.as_secs_f64()
    );
    let stepped: usize = report.facts.iter().map(|r| r.tokens_stepped).sum();
    eprintln!(
        "phrasing tokens run through the model: {} per fact (tokens × passes)",
        stepped / facts.len().max(1)
    );
    if let Some(w) = written {
        eprintln!("checkpoint: {}", crate::describe_checkpoint(&w));
    }
    if let Some((keys, rows)) = engine.read_gate_size() {
        let what = if engine.read_gating() == engram::ReadGating::Routes {
            format!("{rows} rows owned by learned facts")
        } else {
            format!("{keys} keys over {rows} rows")
        };
        eprintln!(
            "read gate: {what}, kept in {}",
            engram::read_keys_path(&store).display()
        );
    }
    Ok(())
}
