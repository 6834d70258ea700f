//! A conversation that learns: its turns, and a [`BackgroundLearner`] that remembers the
//! user's statements after each reply. What the C ABI and uniffi hand to apps as a chat object.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::background::{BackgroundLearner, LearnerEvent};
use super::conversation::{Conversation, Reply};
use super::generate::GenerateOptions;
use super::{Engine, SharedEngine};
use crate::error::{Error, Result};
use crate::learn::{LearnOptions, TurnKind, classify_turn};

/// The system message and the (user, answer) turns so far.
type Turns = (Option<String>, Vec<(String, String)>);

/// A chat on a shared engine. With a learner, each user turn that states something about
/// the user ([`classify_turn`]) is queued to be remembered once its reply is done; a reply
/// never waits for a whole fact (see [`BackgroundLearner`]). Each turn reads the
/// conversation so far again (the memory may have changed since the last one).
pub struct LearningChat {
    engine: Arc<SharedEngine>,
    learner: Mutex<Option<BackgroundLearner>>,
    turns: Mutex<Turns>,
    /// Whether statements are still queued after their reply (an event handler may say no).
    learns_statements: Arc<AtomicBool>,
    /// See [`Conversation::set_abstention`].
    abstain: Mutex<Option<String>>,
}

impl LearningChat {
    /// A chat that only answers.
    pub fn new(engine: Arc<SharedEngine>) -> Self {
        LearningChat {
            engine,
            learner: Mutex::new(None),
            turns: Mutex::new((None, Vec::new())),
            learns_statements: Arc::new(AtomicBool::new(true)),
            abstain: Mutex::new(None),
        }
    }

    /// What the chat answers to a question about the user that nothing learned answers
    /// (`None`, the default: the model answers); see [`Conversation::set_abstention`].
    pub fn set_abstention(&self, reply: Option<String>) {
        if let Ok(mut a) = self.abstain.lock() {
            *a = reply.filter(|r| !r.trim().is_empty());
        }
    }

    /// A chat that also learns (the engine's store open for writing), telling `on_event`
    /// what its learner did, from the learner's thread; when `on_event` returns `false`, later
    /// statements are no longer queued (what is queued still finishes).
    pub fn learning(
        engine: Arc<SharedEngine>,
        options: LearnOptions,
        mut on_event: impl FnMut(LearnerEvent) -> bool + Send + 'static,
    ) -> Result<Self> {
        let chat = LearningChat::new(engine.clone());
        let switch = chat.learns_statements.clone();
        let learner = BackgroundLearner::start(engine, options, move |e| {
            if !on_event(e) {
                switch.store(false, Ordering::SeqCst);
            }
        })?;
        *chat.learner.lock().map_err(|_| poisoned())? = Some(learner);
        Ok(chat)
    }

    /// Answers `user`, streaming text to `on_text`; a statement is queued to be learned
    /// after the reply.
    pub fn say(
        &self,
        user: &str,
        options: &GenerateOptions,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<Reply> {
        let learner = self.learner.lock().map_err(|_| poisoned())?;
        let mut turns = self.turns.lock().map_err(|_| poisoned())?;
        let reply = {
            let engine: Box<dyn Deref<Target = Engine> + '_> = match learner.as_ref() {
                Some(l) => Box::new(l.read()?),
                None => Box::new(self.engine.read()?),
            };
            let mut c = Conversation::resume(&engine, turns.0.take(), std::mem::take(&mut turns.1));
            c.set_abstention(self.abstain.lock().map_err(|_| poisoned())?.clone());
            let reply = c.say(user, options, on_text);
            *turns = c.into_parts();
            reply?
        };
        if let Some(l) = learner.as_ref()
            && self.learns_statements.load(Ordering::SeqCst)
            && classify_turn(user) == TurnKind::Statement
        {
            l.remember(user)?;
        }
        Ok(reply)
    }

    /// Queues `statement` to be remembered, whatever its form.
    pub fn remember(&self, statement: &str) -> Result<()> {
        self.with_learner(|l| l.remember(statement))
    }

    /// Queues the learned fact `what` names (its number or words of it alone) to be
    /// forgotten.
    pub fn forget(&self, what: &str) -> Result<()> {
        self.with_learner(|l| l.forget(what))
    }

    /// Statements and forgets queued or under way.
    pub fn pending(&self) -> usize {
        self.learner
            .lock()
            .ok()
            .and_then(|l| l.as_ref().map(BackgroundLearner::pending))
            .unwrap_or(0)
    }

    /// Waits until everything queued is done.
    pub fn wait_idle(&self) -> Result<()> {
        match self.learner.lock().map_err(|_| poisoned())?.as_ref() {
            Some(l) => l.wait_idle(),
            None => Ok(()),
        }
    }

    /// Forgets the turns so far (not what was learned).
    pub fn reset(&self) {
        if let Ok(mut t) = self.turns.lock() {
            t.1.clear();
        }
    }

    /// Sets (or with `None` clears) the system message.
    pub fn set_system(&self, system: Option<String>) {
        if let Ok(mut t) = self.turns.lock() {
            t.0 = system.filter(|s| !s.trim().is_empty());
        }
    }

    /// Finishes what is queued and stops learning; the chat goes on answering.
    pub fn stop_learning(&self) -> Result<()> {
        let learner = self.learner.lock().map_err(|_| poisoned())?.take();
        match learner {
            Some(l) => l.finish(),
            None => Ok(()),
        }
    }

    fn with_learner(&self, f: impl FnOnce(&BackgroundLearner) -> Result<()>) -> Result<()> {
        match self.learner.lock().map_err(|_| poisoned())?.as_ref() {
            Some(l) => f(l),
            None => Err(Error::InvalidArgument(
                "this chat does not learn (start it learning, on a store opened writable)".into(),
            )),
        }
    }
}

fn poisoned() -> Error {
    Error::Internal("an earlier call on this chat failed internally; start a new one".into())
}
