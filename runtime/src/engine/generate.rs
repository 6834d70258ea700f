//! Generation: sessions over the KV cache, sampling, streaming text, logits and perplexity.

use std::time::{Duration, Instant};

use super::Engine;
use crate::backend::device::DeviceBackend;
use crate::error::{Error, Result};
use crate::model::Logits;
use crate::sampling::{Sampler, SamplingConfig};
use crate::tokenizer::ChatMessage;

/// Settings of one generation.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Token choice.
    pub sampling: SamplingConfig,
    /// Stops a reply that starts going round in a loop (`None`: never).
    pub loop_guard: Option<LoopGuard>,
}

impl Default for GenerateOptions {
    /// Greedy, 128 tokens, loop guard on.
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 128,
            sampling: SamplingConfig::default(),
            loop_guard: Some(LoopGuard::default()),
        }
    }
}

/// Ends a reply before any run of `ngram` tokens would appear in it more than `max_repeats`
/// times: a small model answering greedily can fall into a cycle ("Il Coriobella, il
/// Coriobella, …") that only the token limit would otherwise end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoopGuard {
    /// Length of the token runs compared.
    pub ngram: usize,
    /// How often one run may appear in a reply.
    pub max_repeats: usize,
}

impl Default for LoopGuard {
    /// Runs of 5 tokens, at most 3 times each.
    fn default() -> Self {
        LoopGuard {
            ngram: 5,
            max_repeats: 3,
        }
    }
}

/// Counts the token runs of a reply as it grows, for [`LoopGuard`].
struct LoopCounter {
    guard: LoopGuard,
    seen: std::collections::HashMap<Vec<u32>, usize>,
}

impl LoopCounter {
    fn new(guard: LoopGuard) -> Self {
        LoopCounter {
            guard,
            seen: Default::default(),
        }
    }

    /// Whether appending `next` to `reply` would make its last run exceed the limit; counts
    /// the run when it does not.
    fn would_repeat(&mut self, reply: &[u32], next: u32) -> bool {
        let n = self.guard.ngram.max(1);
        if reply.len() + 1 < n {
            return false;
        }
        let mut run = reply[reply.len() + 1 - n..].to_vec();
        run.push(next);
        let count = self.seen.entry(run).or_insert(0);
        if *count >= self.guard.max_repeats {
            return true;
        }
        *count += 1;
        false
    }
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-text / end-of-turn token.
    EndOfText,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The context window is full.
    ContextFull,
    /// The token callback asked to stop.
    Cancelled,
    /// The reply started repeating itself (see [`LoopGuard`]); the repeat was not emitted.
    Repetition,
}

/// The result of a generation.
#[derive(Clone, Debug)]
pub struct Generation {
    /// The generated text (prompt not included).
    pub text: String,
    /// The generated token ids (stop token not included).
    pub tokens: Vec<u32>,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Why it stopped.
    pub stop: StopReason,
    /// Time spent on the prompt.
    pub prefill_time: Duration,
    /// Time spent generating.
    pub decode_time: Duration,
}

/// Turns a stream of token bytes into text pieces that are whole UTF-8 characters.
#[derive(Default)]
pub struct TextStream {
    pending: Vec<u8>,
}

impl TextStream {
    /// Adds bytes and returns the text that is complete so far.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            // An incomplete character at the end waits for the next token; invalid bytes do not.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        let out: Vec<u8> = self.pending.drain(..valid).collect();
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Whatever is left (lossily decoded).
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

/// −log p(target) under `logits`.
pub fn log_softmax_at(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    lse - logits[target] as f64
}

/// A conversation's state: the tokens already in the KV cache.
pub struct Session<'e> {
    engine: &'e Engine,
    cache: crate::model::Cache<DeviceBackend>,
    tokens: Vec<u32>,
}

/// What one forward step hands the sampler.
enum Next {
    /// The greedy choice, made on the device.
    Token(u32),
    /// Logits of the last position, for samplers that need them.
    Logits(Vec<f32>),
}

impl Session<'_> {
    /// Generates after `prompt`, reusing the cache for the longest prefix it shares with
    /// what was processed before.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        options: &GenerateOptions,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generation> {
        self.generate_until(prompt, options, None, on_text)
    }

    /// How many learned facts the memory's routing read gate recalled from position `from` of
    /// the tokens run so far; `None` where no memory block has a routing gate (another gate
    /// cannot say which fact a read belongs to).
    pub fn facts_recalled_since(&self, from: usize) -> Option<usize> {
        self.facts_named_since(from).map(|facts| facts.len())
    }

    /// Which learned facts (by their order of learning) the memory's routing read gate
    /// recalled from position `from` of the tokens run so far; `None` where no memory block
    /// has a routing gate.
    pub fn facts_named_since(&self, from: usize) -> Option<Vec<u32>> {
        let routed = self
            .engine
            .model
            .memory()
            .iter()
            .any(|m| m.read_gate.as_ref().is_some_and(|g| g.routes()));
        routed.then(|| self.cache.open.facts_named_since(from))
    }

    /// Like [`Session::generate`] for a prompt rendered through the chat template: the reply
    /// also ends where the template's turn ends without an end-of-turn token
    /// ([`Tokenizer::turn_end`](crate::Tokenizer::turn_end)).
    pub fn reply(
        &mut self,
        prompt: &[u32],
        options: &GenerateOptions,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let turn_end = self.engine.tokenizer.turn_end();
        self.generate_until(prompt, options, turn_end, on_text)
    }

    fn generate_until(
        &mut self,
        prompt: &[u32],
        options: &GenerateOptions,
        turn_end: Option<&str>,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generation> {
        options.sampling.validate()?;
        let e = self.engine;
        if prompt.is_empty() {
            return Err(Error::InvalidArgument("the prompt is empty".into()));
        }
        e.check_fits(prompt.len())?;
        let b = e.model.backend();
        let common = self
            .tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len() - 1);
        self.cache.truncate(b, common);
        self.tokens.truncate(common);

        // Plain greedy needs only the argmax, which the device computes: a GPU then sends back
        // one word per token instead of the vocabulary's logits.
        let greedy = options.sampling.is_plain_greedy();
        let step = |tokens: &[u32], cache: &mut _| -> Result<Next> {
            if greedy {
                Ok(Next::Token(e.model.forward_greedy(tokens, cache)?))
            } else {
                Ok(Next::Logits(e.model.forward(
                    tokens,
                    cache,
                    Logits::Last,
                )?))
            }
        };
        let start = Instant::now();
        // The prompt names learned facts for the routing gate; the reply's own words do not.
        self.cache.open.set_replying(false);
        let mut next_step = step(&prompt[common..], &mut self.cache)?;
        self.cache.open.set_replying(true);
        self.tokens.extend_from_slice(&prompt[common..]);
        let prefill_time = start.elapsed();

        let start = Instant::now();
        let mut sampler = Sampler::new(options.sampling.clone());
        let mut stream = TextStream::default();
        let mut out = Vec::new();
        let mut text = String::new();
        let mut loops = options.loop_guard.map(LoopCounter::new);
        let stop = loop {
            if out.len() >= options.max_tokens {
                break StopReason::MaxTokens;
            }
            let next = match &mut next_step {
                Next::Token(t) => *t,
                Next::Logits(logits) => sampler.sample(logits, &self.tokens),
            };
            if e.tokenizer.stop_tokens.contains(&next) {
                break StopReason::EndOfText;
            }
            if loops.as_mut().is_some_and(|l| l.would_repeat(&out, next)) {
                break StopReason::Repetition;
            }
            out.push(next);
            let mut piece = stream.push(e.tokenizer.token_bytes(next));
            // The plain format writes "A: reply": the space after the colon is the format's.
            if turn_end.is_some() && text.is_empty() {
                piece = piece.trim_start_matches(' ').to_owned();
            }
            // A turn that ends in plain text ends at the first end after some reply text.
            if let Some(at) = turn_end.and_then(|end| piece.find(end)) {
                let before = &piece[..at];
                if !(text.trim().is_empty() && before.trim().is_empty()) {
                    text.push_str(before);
                    if !before.is_empty() {
                        on_text(before);
                    }
                    break StopReason::EndOfText;
                }
            }
            text.push_str(&piece);
            if !piece.is_empty() && !on_text(&piece) {
                break StopReason::Cancelled;
            }
            if self.tokens.len() + 1 > e.context {
                break StopReason::ContextFull;
            }
            next_step = step(&[next], &mut self.cache)?;
            self.tokens.push(next);
        };
        let rest = stream.finish();
        if !rest.is_empty() {
            on_text(&rest);
            text.push_str(&rest);
        }
        Ok(Generation {
            text,
            tokens: out,
            prompt_tokens: prompt.len(),
            stop,
            prefill_time,
            decode_time: start.elapsed(),
        })
    }
}

impl Engine {
    /// Answers `question` through the chat template, greedily.
    pub fn ask(&self, question: &str, max_tokens: usize) -> Result<String> {
        let options = GenerateOptions {
            max_tokens,
            ..Default::default()
        };
        let g = self.chat(&[ChatMessage::new("user", question)], &options, |_| true)?;
        Ok(g.text.trim().to_owned())
    }

    /// Completes `prompt` as raw text, streaming each piece of text to `on_text`
    /// (return `false` from it to stop).
    pub fn generate(
        &self,
        prompt: &str,
        options: &GenerateOptions,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let tokens = self.tokenizer.encode(prompt, true)?;
        let mut session = self.session();
        session.generate(&tokens, options, on_text)
    }

    /// Answers a conversation through the model's chat template.
    pub fn chat(
        &self,
        messages: &[ChatMessage],
        options: &GenerateOptions,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let prompt = self.tokenizer.apply_chat_template(messages, true)?;
        let tokens = self.tokenizer.encode(&prompt, true)?;
        self.session().reply(&tokens, options, on_text)
    }

    /// A stateful session whose KV cache carries over between calls (for interactive chat).
    pub fn session(&self) -> Session<'_> {
        Session {
            engine: self,
            cache: self.model.new_cache(self.context),
            tokens: Vec::new(),
        }
    }

    /// Logits for every position of `tokens` (vocab-wide rows), from an empty cache.
    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.check_fits(tokens.len())?;
        let mut cache = self.model.new_cache(tokens.len());
        self.model.forward(tokens, &mut cache, Logits::All)
    }

    /// Mean negative log-likelihood (nats/token) of `tokens` scored in windows of `window`
    /// tokens; only the second half of each window is scored, as llama.cpp's perplexity does.
    pub fn perplexity(&self, tokens: &[u32], window: usize) -> Result<(f64, usize)> {
        if window < 2 || tokens.len() < window {
            return Err(Error::InvalidArgument(format!(
                "perplexity needs at least {window} tokens, got {}",
                tokens.len()
            )));
        }
        let vocab = self.model.config.vocab_size;
        let (mut nll, mut count) = (0f64, 0usize);
        for chunk in tokens.chunks_exact(window) {
            let logits = self.logits(chunk)?;
            for i in window / 2..window - 1 {
                let row = &logits[i * vocab..(i + 1) * vocab];
                nll += log_softmax_at(row, chunk[i + 1] as usize);
                count += 1;
            }
        }
        Ok((nll / count as f64, count))
    }

    fn check_fits(&self, n: usize) -> Result<()> {
        if n > self.context {
            return Err(Error::ContextOverflow {
                tokens: n,
                context: self.context,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loop_guard_refuses_the_run_that_would_exceed_the_limit() {
        let mut c = LoopCounter::new(LoopGuard {
            ngram: 2,
            max_repeats: 2,
        });
        let mut reply = Vec::new();
        let mut stopped_at = None;
        for (i, t) in [7, 8, 7, 8, 7, 8, 9].into_iter().enumerate() {
            if c.would_repeat(&reply, t) {
                stopped_at = Some(i);
                break;
            }
            reply.push(t);
        }
        // (7, 8) appears at 0 and 2; its third appearance (ending at index 5) is refused.
        assert_eq!(stopped_at, Some(5));
        assert_eq!(reply, [7, 8, 7, 8, 7]);
    }
}
