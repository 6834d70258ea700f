//! A multi-turn chat that stays inside the context window.

use super::Engine;
use super::generate::{GenerateOptions, Generation, Session, StopReason};
use crate::error::Result;
use crate::learn::asks_about_user;
use crate::tokenizer::ChatMessage;

/// Most tokens a chat template puts around a user turn and after it.
const TEMPLATE_TOKENS: usize = 12;

/// A conversation with the model: its system message, the turns so far, and a session whose
/// KV cache carries over from turn to turn.
pub struct Conversation<'e> {
    engine: &'e Engine,
    session: Session<'e>,
    system: Option<String>,
    /// (what the user said, what the model answered), oldest first.
    turns: Vec<(String, String)>,
    /// The reply to a question about the user that the memory recalls nothing for (`None`:
    /// the model answers it anyway).
    abstain: Option<String>,
}

/// What a chat answers when asked about the user something the memory recalls nothing for
/// (see [`Conversation::set_abstention`]).
pub const DEFAULT_ABSTENTION: &str = "You haven't told me that.";

/// One answer of a [`Conversation`].
#[derive(Clone, Debug)]
pub struct Reply {
    /// The generation (its text is the answer, untrimmed).
    pub generation: Generation,
    /// How many of the oldest turns were dropped so that this one fit the context window.
    pub dropped_turns: usize,
    /// Whether the reply is the abstention: a question about the user that nothing learned
    /// answers (see [`Conversation::set_abstention`]).
    pub abstained: bool,
}

impl<'e> Conversation<'e> {
    /// A new, empty conversation (the engine's system-prompt policy applies until
    /// [`Self::set_system`] gives one).
    pub fn new(engine: &'e Engine) -> Self {
        Conversation {
            engine,
            session: engine.session(),
            system: None,
            turns: Vec::new(),
            abstain: None,
        }
    }

    /// Makes the conversation answer `reply` (e.g. [`DEFAULT_ABSTENTION`]) instead of letting
    /// the model answer, when the user asks for a fact about themselves
    /// (`learn::asks_about_user`, English rules) and the memory's routing read gate
    /// recalls no learned fact for the question: a small model asked "What is my cat called?"
    /// otherwise invents a name. `None` (the default) turns it off; without a routing gate it
    /// never applies.
    pub fn set_abstention(&mut self, reply: Option<String>) {
        self.abstain = reply;
    }

    /// A conversation that goes on from `turns` ((user, answer) pairs, oldest first) under
    /// `system`, e.g. after the engine learned something between turns (which needs the
    /// engine back from the conversation that borrowed it: see [`Self::into_parts`]). Its
    /// KV cache starts empty.
    pub fn resume(
        engine: &'e Engine,
        system: Option<String>,
        turns: Vec<(String, String)>,
    ) -> Self {
        let mut c = Conversation::new(engine);
        c.set_system(system);
        c.turns = turns;
        c
    }

    /// The system message and the turns, to [`Self::resume`] from later.
    pub fn into_parts(self) -> (Option<String>, Vec<(String, String)>) {
        (self.system, self.turns)
    }

    /// Sets (or, with `None`, clears) the system message; the turns so far are kept.
    pub fn set_system(&mut self, system: Option<String>) {
        self.system = system.filter(|s| !s.trim().is_empty());
    }

    /// The system message, if one was set.
    pub fn system(&self) -> Option<&str> {
        self.system.as_deref()
    }

    /// Forgets every turn (the system message stays).
    pub fn reset(&mut self) {
        self.turns.clear();
    }

    /// Turns answered so far (after any dropped for space).
    pub fn turns(&self) -> usize {
        self.turns.len()
    }

    fn messages(&self, user: &str) -> Vec<ChatMessage> {
        let mut m: Vec<ChatMessage> = self
            .system
            .iter()
            .map(|s| ChatMessage::new("system", s))
            .collect();
        for (u, a) in &self.turns {
            m.push(ChatMessage::new("user", u));
            m.push(ChatMessage::new("assistant", a));
        }
        m.push(ChatMessage::new("user", user));
        m
    }

    /// Answers `user`, streaming text to `on_text`. The oldest turns are dropped while the
    /// prompt and `options.max_tokens` would not fit the context window together; if even
    /// the new turn alone does not fit, the reply stops when the context is full.
    pub fn say(
        &mut self,
        user: &str,
        options: &GenerateOptions,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<Reply> {
        let tok = self.engine.tokenizer();
        let context = self.engine.context();
        let mut dropped = 0;
        let tokens = loop {
            let prompt = tok.apply_chat_template(&self.messages(user), true)?;
            let tokens = tok.encode(&prompt, true)?;
            if tokens.len() + options.max_tokens <= context || self.turns.is_empty() {
                break tokens;
            }
            self.turns.remove(0);
            dropped += 1;
        };
        if let Some(text) = self.abstention_for(user, &tokens, options)? {
            let mut on_text = on_text;
            on_text(&text);
            self.turns.push((user.to_owned(), text.clone()));
            let generation = Generation {
                text,
                tokens: Vec::new(),
                prompt_tokens: tokens.len(),
                stop: StopReason::EndOfText,
                prefill_time: std::time::Duration::ZERO,
                decode_time: std::time::Duration::ZERO,
            };
            return Ok(Reply {
                generation,
                dropped_turns: dropped,
                abstained: true,
            });
        }
        let generation = self.session.reply(&tokens, options, on_text)?;
        self.turns
            .push((user.to_owned(), generation.text.trim().to_owned()));
        Ok(Reply {
            generation,
            dropped_turns: dropped,
            abstained: false,
        })
    }

    /// The abstention, where it applies to `user` asked as `prompt`: the prompt is run (its
    /// cache is kept for the reply) and the read gate asked what it recalled from the user's
    /// words on.
    fn abstention_for(
        &mut self,
        user: &str,
        prompt: &[u32],
        options: &GenerateOptions,
    ) -> Result<Option<String>> {
        let Some(text) = self.abstain.clone() else {
            return Ok(None);
        };
        if !asks_about_user(user) {
            return Ok(None);
        }
        let prefill_only = GenerateOptions {
            max_tokens: 0,
            ..options.clone()
        };
        self.session.generate(prompt, &prefill_only, |_| true)?;
        // The user's words start at most this far from the end: the template adds a few
        // tokens around them ("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n").
        let user_tokens = self.engine.tokenizer().encode(user, false)?.len();
        let from = prompt.len().saturating_sub(user_tokens + TEMPLATE_TOKENS);
        Ok(match self.session.facts_recalled_since(from) {
            Some(0) => Some(text),
            _ => None,
        })
    }
}
