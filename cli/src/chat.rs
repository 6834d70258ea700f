//! `engram chat`: a conversation on stdin/stdout. With `--learn` (a store opened for writing)
//! statements the user makes are learned by a background worker after the reply is shown,
//! while the user types the next turn (piped input waits for it instead); `/remember TEXT`
//! learns a note, `/forget WHAT` forgets a learned fact and `/learned` lists them.

use std::io::{BufRead, IsTerminal, Write};
use std::ops::Deref;
use std::sync::Arc;

use engram::learn::{TurnKind, classify_turn};
use engram::{
    BackgroundLearner, Conversation, Engine, GenerateOptions, LearnOptions, LearnerEvent,
    SharedEngine, StopReason,
};

/// Says on stderr what the background learner did (from its thread).
fn tell(event: LearnerEvent) {
    match event {
        LearnerEvent::Remembered {
            text,
            uid,
            replaced,
            seconds,
            yielded,
        } => {
            if let Some(old) = replaced {
                eprintln!("\n(forgot {:?}: it is replaced)", old.text);
            }
            let paused = match yielded {
                0 => String::new(),
                n => format!(", paused {n} time(s) for replies"),
            };
            eprintln!("\n(remembered {text:?} as fact {uid} in {seconds:.1} s{paused})");
        }
        LearnerEvent::Forgot(r) => eprintln!("\n(forgot {:?})", r.text),
        LearnerEvent::Failed { what, error } => eprintln!("\n(not done: {what:?}: {error})"),
    }
}

/// Reads one line from stdin after a prompt; `None` at the end of input.
fn read_turn(number: usize) -> Result<Option<String>, String> {
    eprint!("[{number}] > ");
    let mut line = String::new();
    let n = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    Ok((n > 0).then(|| line.trim().to_owned()))
}

/// What ends a stretch of turns with the engine held for reading.
enum Next {
    /// The input ended or the user quit.
    Quit,
    /// The learner has work: let go of the engine so it can learn while the user types.
    LetLearn,
}

/// Runs the chat (see the module notes).
pub fn chat(
    engine: Engine,
    options: &GenerateOptions,
    learn: bool,
    abstain: Option<String>,
) -> Result<(), String> {
    eprintln!(
        "chat with the model ({}-token context); /system TEXT sets the system message, \
         /reset starts over, /quit or Ctrl-D ends{}",
        engine.context(),
        if learn {
            "; what you tell about yourself is remembered in the background (/remember TEXT, \
             /forget WHAT, /learned)"
        } else {
            ""
        }
    );
    let shared = Arc::new(SharedEngine::from(engine));
    let learner = if learn {
        Some(
            BackgroundLearner::start(shared.clone(), LearnOptions::default(), tell)
                .map_err(|e| e.to_string())?,
        )
    } else {
        None
    };
    let mut kept: (Option<String>, Vec<(String, String)>) = (None, Vec::new());
    // Piped input (a script) waits for what its earlier turns queued, so what it gets does not
    // depend on how fast the machine learns; a person typing never waits.
    let scripted = !std::io::stdin().is_terminal();
    loop {
        if let (true, Some(l)) = (scripted, &learner) {
            l.wait_idle().map_err(|e| e.to_string())?;
        }
        // The first turn of a stretch is read before the engine is taken: the learner works
        // while the user types.
        let line = match read_turn(kept.1.len() + 1)? {
            Some(l) => l,
            None => break,
        };
        let engine: Box<dyn Deref<Target = Engine> + '_> = match &learner {
            Some(l) => Box::new(l.read().map_err(|e| e.to_string())?),
            None => Box::new(shared.read().map_err(|e| e.to_string())?),
        };
        let engine: &Engine = &engine;
        let mut conversation =
            Conversation::resume(engine, kept.0.take(), std::mem::take(&mut kept.1));
        conversation.set_abstention(abstain.clone());
        let next = turns(engine, &mut conversation, line, options, learner.as_ref())?;
        kept = conversation.into_parts();
        if let Next::Quit = next {
            break;
        }
    }
    if let Some(l) = learner {
        let pending = l.pending();
        if pending > 0 {
            eprintln!("(finishing {pending} statement(s) before closing)");
        }
        l.finish().map_err(|e| e.to_string())?;
        let mut engine = shared.write().map_err(|e| e.to_string())?;
        engine.checkpoint().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Turns with the engine held for reading, starting with `line`, until the learner has work
/// or the chat ends.
fn turns(
    engine: &Engine,
    conversation: &mut Conversation<'_>,
    first: String,
    options: &GenerateOptions,
    learner: Option<&BackgroundLearner>,
) -> Result<Next, String> {
    let mut stdout = std::io::stdout();
    let mut line = first;
    loop {
        match line.as_str() {
            "" => {}
            "/quit" | "/exit" => return Ok(Next::Quit),
            "/reset" => {
                conversation.reset();
                eprintln!("(conversation cleared)");
            }
            "/learned" => {
                for f in engine.learned_facts() {
                    match f.replaced.last() {
                        Some(old) => eprintln!("  {:>4}  {}  (replaced {old:?})", f.uid, f.text),
                        None => eprintln!("  {:>4}  {}", f.uid, f.text),
                    }
                }
                eprintln!("({} learned facts)", engine.learned_facts().len());
            }
            _ => answer(conversation, &line, options, learner, &mut stdout)?,
        }
        if learner.is_some_and(|l| l.pending() > 0) {
            return Ok(Next::LetLearn);
        }
        line = match read_turn(conversation.turns() + 1)? {
            Some(l) => l,
            None => return Ok(Next::Quit),
        };
    }
}

/// One turn that is not a bare command: a /system, /remember or /forget, or something to
/// answer (and, if it is a statement about the user, to learn after the reply is shown).
fn answer(
    conversation: &mut Conversation<'_>,
    line: &str,
    options: &GenerateOptions,
    learner: Option<&BackgroundLearner>,
    stdout: &mut std::io::Stdout,
) -> Result<(), String> {
    let command = |name: &str| {
        line.strip_prefix(name)
            .filter(|rest| rest.is_empty() || rest.starts_with(' '))
            .map(str::trim)
    };
    if let Some(rest) = command("/system") {
        conversation.set_system(Some(rest.to_owned()));
        match conversation.system() {
            Some(s) => eprintln!("(system message: {s:?})"),
            None => eprintln!("(no system message)"),
        }
        return Ok(());
    }
    match (command("/remember"), command("/forget"), learner) {
        (Some(t), _, Some(l)) if !t.is_empty() => {
            return l.remember(t).map_err(|e| e.to_string());
        }
        (_, Some(t), Some(l)) if !t.is_empty() => return l.forget(t).map_err(|e| e.to_string()),
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            eprintln!("(/remember TEXT, /forget WORDS or NUMBER)");
            return Ok(());
        }
        (Some(_), _, None) | (_, Some(_), None) => {
            eprintln!("(start the chat with --learn --memory STORE to remember and forget)");
            return Ok(());
        }
        _ => {}
    }
    if line.starts_with('/') {
        eprintln!(
            "unknown command {line}: /system TEXT, /reset, /remember TEXT, /forget WHAT, \
             /learned, /quit"
        );
        return Ok(());
    }
    let reply = conversation.say(line, options, |piece| {
        let _ = stdout.write_all(piece.as_bytes());
        let _ = stdout.flush();
        true
    });
    println!();
    match reply {
        Ok(r) => {
            if r.dropped_turns > 0 {
                eprintln!(
                    "(the {} oldest turn(s) were dropped to fit the context window)",
                    r.dropped_turns
                );
            }
            match r.generation.stop {
                StopReason::Repetition => eprintln!("(stopped: the reply began repeating itself)"),
                StopReason::ContextFull => {
                    eprintln!("(stopped: the context window is full; /reset starts over)")
                }
                StopReason::MaxTokens => eprintln!("(stopped at the token limit, -n)"),
                _ => {}
            }
        }
        // A turn that cannot be answered (too long for the context) leaves the chat open.
        Err(e) => eprintln!("error: {e}"),
    }
    // The reply is shown; a statement about the user is learned from now on, in the background.
    if let Some(l) = learner
        && classify_turn(line) == TurnKind::Statement
    {
        l.remember(line).map_err(|e| e.to_string())?;
    }
    Ok(())
}
