//! A chat that learns: the conversation's turns, and a background learner that remembers the
//! user's statements (and forgets on request) while the app goes on answering, telling a
//! [`MemoryListener`] what it did.

use std::sync::Arc;

use engram::{GenerateOptions, LearnOptions, LearnerEvent, LearningChat};

use crate::{Engram, EngramError, TokenListener};

/// Hears what a [`Chat`]'s background learner did, from its thread. Each method returns
/// whether the chat should go on learning the user's statements (false: later statements are
/// only answered; what is queued still finishes).
#[uniffi::export(callback_interface)]
pub trait MemoryListener: Send + Sync {
    /// A statement was learned and is durable in the store, as fact `number`; `replaced` is
    /// the earlier fact it replaced (forgotten first), if any.
    fn on_remembered(
        &self,
        text: String,
        number: u64,
        replaced: Option<String>,
        seconds: f64,
    ) -> bool;
    /// A learned fact was forgotten.
    fn on_forgot(&self, text: String, number: u64) -> bool;
    /// A statement or forget did not go through (nothing of it was kept).
    fn on_failed(&self, what: String, error: String) -> bool;
}

/// A conversation with the model; with `learn`, statements the user makes are remembered in
/// the background after each reply (a reply never waits for a whole fact: learning steps
/// aside at its next gradient step and goes on after).
#[derive(uniffi::Object)]
pub struct Chat {
    chat: LearningChat,
}

#[uniffi::export]
impl Chat {
    /// A new conversation on `engram`. With `learn` (a store opened writable) the user's
    /// statements are learned in the background and `listener` hears of each.
    #[uniffi::constructor(default(learn = true, listener = None))]
    pub fn new(
        engram: Arc<Engram>,
        learn: bool,
        listener: Option<Box<dyn MemoryListener>>,
    ) -> Result<Arc<Self>, EngramError> {
        let engine = engram.engine.clone();
        let chat = if learn {
            LearningChat::learning(engine, LearnOptions::default(), move |event| {
                let Some(l) = listener.as_ref() else {
                    return true;
                };
                match event {
                    LearnerEvent::Remembered {
                        text,
                        uid,
                        replaced,
                        seconds,
                        ..
                    } => l.on_remembered(text, uid, replaced.map(|r| r.text), seconds),
                    LearnerEvent::Forgot(r) => l.on_forgot(r.text, r.uid),
                    LearnerEvent::Failed { what, error } => l.on_failed(what, error),
                }
            })?
        } else {
            LearningChat::new(engine)
        };
        Ok(Arc::new(Chat { chat }))
    }

    /// Answers `text` greedily (at most `max_tokens` tokens), telling `listener` of each
    /// piece; a statement about the user is queued to be learned once the reply is done.
    #[uniffi::method(default(max_tokens = 128, listener = None))]
    pub fn say(
        &self,
        text: String,
        max_tokens: u32,
        listener: Option<Box<dyn TokenListener>>,
    ) -> Result<String, EngramError> {
        let options = GenerateOptions {
            max_tokens: max_tokens as usize,
            ..Default::default()
        };
        let reply = self.chat.say(&text, &options, |piece| {
            listener
                .as_ref()
                .is_none_or(|l| l.on_token(piece.to_owned()))
        })?;
        Ok(reply.generation.text.trim().to_owned())
    }

    /// Queues `statement` to be remembered (whatever its form).
    pub fn remember(&self, statement: String) -> Result<(), EngramError> {
        Ok(self.chat.remember(&statement)?)
    }

    /// Queues the learned fact `what` names (its number or words of it alone) to be forgotten.
    pub fn forget(&self, what: String) -> Result<(), EngramError> {
        Ok(self.chat.forget(&what)?)
    }

    /// Statements and forgets queued or under way.
    pub fn pending(&self) -> u32 {
        self.chat.pending() as u32
    }

    /// Waits until everything queued is done (each told to the listener).
    pub fn wait_idle(&self) -> Result<(), EngramError> {
        Ok(self.chat.wait_idle()?)
    }

    /// Forgets the turns so far (not what was learned).
    pub fn reset(&self) {
        self.chat.reset();
    }

    /// Sets (or with `None` clears) the system message.
    pub fn set_system(&self, system: Option<String>) {
        self.chat.set_system(system);
    }

    /// Makes the chat answer `reply` to a question about the user that nothing learned
    /// answers, instead of letting the model invent one ("What is my cat called?" never
    /// told); `None` turns it off (the default). Needs the routing read gate (the default).
    pub fn set_abstention(&self, reply: Option<String>) {
        self.chat.set_abstention(reply);
    }

    /// Finishes what is queued and stops learning (the chat goes on answering).
    pub fn stop_learning(&self) -> Result<(), EngramError> {
        Ok(self.chat.stop_learning()?)
    }
}
