//! Fact-keyed reads: a value row that learned facts' tokens read is read by another token
//! only where that token's memory input looks like one of theirs.
//!
//! The retrofitted lookup spreads every token over 128 rows, so a general question reads about
//! as many changed rows as a learned one, at the same lookup scores: the lookup alone cannot
//! tell them apart. The memory's input (the normalized hidden state beside the FFN) can: at
//! cosine 0.95, 84 % of what the learned questions read of the changed rows (asked in a
//! phrasing no training example used) passes and 3 % of what general questions read. The
//! keys are the inputs at every token of the learned facts' training phrasings, so each fact's
//! own training tokens always pass and learning is not changed by the gate: only reading is.
//! Layers below the memory are frozen, so the keys follow from the facts' text alone and are
//! rebuilt from the store's history when it is opened.

use std::collections::{BTreeMap, HashMap, HashSet};

use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Error, Result};

/// First bytes of a saved gate (`<store>.readkeys`); the digit is the layout's version.
const CACHE_MAGIC: &[u8; 8] = b"EGRKEYS2";

/// First bytes of a saved topic gate.
const TOPICS_MAGIC: &[u8; 8] = b"EGRTOPC1";

/// First bytes of a saved routing gate (3: a note with a name is named by its names alone).
const ROUTES_MAGIC: &[u8; 8] = b"EGRROUT3";

/// Marks a saved needle that names its fact only where the user speaks of themselves.
const PERSONAL_NEEDLE: u32 = 1 << 31;

/// Marks a saved needle that names nothing but tells open facts apart (a context word).
const CONTEXT_NEEDLE: u32 = 1 << 30;

/// Cosine a reading token's input needs to a question/answer fact's key, by default. After 100
/// facts (ungated: 76 learned, 129 of 150 general answers kept): 0.8 gave 76 / 135, 0.9
/// 77 / 140, 0.95 76 / 144.
pub const DEFAULT_READ_GATE: f32 = 0.95;

/// Cosine a reading token's input needs to a note's key, by default. A note is asked about in
/// other words than it was written in ("Where does my sister Ana live?" after "My sister Ana
/// lives in Porto."): on the CI store that question found the note at 0.8 and not at 0.85.
pub const DEFAULT_NOTE_READ_GATE: f32 = 0.8;

/// What a key came from: the two kinds pass at different cosines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// A token of a question/answer fact's phrasings.
    Question = 0,
    /// A token of a note's phrasings.
    Note = 1,
}

/// Tokens a routing gate reads a fact's rows for after the sequence last named it: a
/// question and its answer (the chat markup between them included) fit, and text that merely
/// mentions the name is changed only nearby. eval/'s first 20 facts and 10 notes (tuned
/// items, 2026-12-06): open for the rest of the sequence, held-out NLL +8.6 % and 20/20
/// paraphrases; open for 24 tokens, -0.01 % and 18/20, every other axis the same.
pub const ROUTE_WINDOW: usize = 24;

/// How a token begins, as far as telling one name from another needs: a routing gate does not
/// let one word of a learned name of several ("Looms" of "Brightwell Looms") name the fact
/// right after a capitalized word ("Acme Looms").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WordStart {
    /// A lower-case letter or a digit with no space before it: inside a word.
    Inside,
    /// A word in lower case or a number, after a space.
    Lower,
    /// A capital letter, after a space or not.
    Capital,
    /// Punctuation, a line break, markup.
    Break,
}

/// Keys are unit vectors stored as i8 (×127): a quarter of the f32 size, cosine within ~0.01.
const KEY_SCALE: f32 = 127.0;

/// Which reads of learned rows pass: the keys of every learned fact's tokens and the rows
/// each of them read.
#[derive(Clone, Debug)]
pub struct ReadGate {
    /// Cosine needed, by [`KeyKind`].
    thresholds: [f32; 2],
    dim: usize,
    /// Unit keys, `dim` i8 each.
    keys: Vec<i8>,
    /// Each key's kind (a key both kinds left is a note's: the looser one).
    kinds: Vec<KeyKind>,
    /// Identical keys (the shared system prompt of chat phrasings) are stored once.
    key_ids: HashMap<Vec<i8>, u32>,
    /// Row → ids of the keys of the tokens that read it.
    links: HashMap<u32, Vec<u32>>,
    /// Rows an imported delta changed: their facts' keys are not here, so they read ungated.
    exempt: HashSet<u32>,
    /// Whether a read also needs the sequence to have named one of the row's facts (see
    /// [`ReadGate::with_topics`]).
    topics: bool,
    /// Each fact's topic words as token ids, by their last token: what names the fact.
    needles: HashMap<u32, Vec<(Vec<u32>, u32)>>,
    /// Row → the facts whose tokens read it (topics only); with routes, the fact that owns it.
    row_facts: HashMap<u32, Vec<u32>>,
    /// Facts added (topics only).
    facts: u32,
    /// Whether a named fact's rows are routed to every later token (see
    /// [`ReadGate::with_routes`]).
    routes: bool,
    /// Each fact's own rows, ascending (routes only).
    fact_rows: Vec<Vec<u32>>,
    /// Tokens a routed fact stays open for after it was last named.
    route_window: usize,
    /// How each token of the vocabulary begins (routes; empty: every naming counts).
    word_starts: Vec<WordStart>,
    /// Needles that are one word of a longer name of their fact (routes).
    partial: HashSet<(u32, Vec<u32>)>,
    /// Each note's personal words as token ids, by their last token: they name it only in a
    /// sentence where the user speaks of themselves (routes; see
    /// [`crate::learn::personal_words`]).
    personal: HashMap<u32, Vec<(Vec<u32>, u32)>>,
    /// Each fact's words as token ids, by their last token: they name nothing, but where
    /// several facts are open, those whose words the text holds most are read (routes; see
    /// [`crate::learn::context_needles`]).
    context: HashMap<u32, Vec<(Vec<u32>, u32)>>,
    /// Which tokens make a sentence the user asking about themselves (routes).
    speaker: SpeakerTokens,
}

/// The tokens a routing gate needs to tell a question the user asks about themselves ("Which
/// instrument do I play?") from any other sentence: only there do a note's personal words
/// name it.
#[derive(Clone, Debug, Default)]
pub struct SpeakerTokens {
    /// The user speaking of themselves: "I", " my", " we", " our".
    pub first_person: HashSet<u32>,
    /// What ends a sentence or a turn: ".", "?", a line break, markup.
    pub sentence_ends: HashSet<u32>,
    /// Question words, anywhere in a sentence: "What", " which", " where".
    pub question_words: HashSet<u32>,
    /// Words that make a question when they open a sentence: "Do", "Is", "Can".
    pub question_openers: HashSet<u32>,
}

/// The learned facts a sequence has named so far, and from which position: what a topic
/// gate lets read. Kept beside the sequence's KV cache and cut with it.
#[derive(Clone, Debug, Default)]
pub struct OpenFacts {
    opened: HashMap<u32, usize>,
    /// The last tokens seen, with their positions: a topic word may end in a later call
    /// than it began (decoding runs one token per call).
    recent: Vec<(usize, u32)>,
    /// Facts a routing gate saw named by the token at this position (and whether by a
    /// personal word), opened by the next token unless it goes on with the word or starts
    /// another capitalized one.
    pending: Vec<(u32, usize, bool)>,
    /// Facts open only because a personal word named them: read only where no fact named
    /// by a name is.
    personal_only: HashSet<u32>,
    /// Where the sentence being read last had the user speak of themselves, after it showed
    /// itself a question.
    speaker_at: Option<usize>,
    /// Whether the sentence being read is a question so far (a question word, or an opener
    /// as its first word).
    asking: bool,
    /// Where the sentence being read began.
    sentence_from: usize,
    /// Whether the tokens being read are the model's own reply: a name the model says
    /// itself does not name a learned fact (only the prompt does). Without this, a reply's
    /// common names ("American", "England") opened some learned fact in 118 of 150 general
    /// questions after 1,050 facts, and its rows then rewrote the answer.
    replying: bool,
    /// Context words of learned facts the text held: (position, fact, which word). Kept
    /// for two windows back: a fact open now was named at most one window ago, and the
    /// words that tell it apart may come up to a window before its name.
    context_seen: Vec<(usize, u32, u64)>,
}

/// Tokens [`OpenFacts`] remembers: longer topic words are not matched across calls.
const RECENT_TOKENS: usize = 16;

/// Which word a context needle is, for counting distinct words: its tokens, hashed.
fn word_key(needle: &[u32]) -> u64 {
    let bytes: Vec<u8> = needle.iter().flat_map(|t| t.to_le_bytes()).collect();
    xxh3_64(&bytes)
}

impl OpenFacts {
    /// Forgets what was opened or seen at or after position `len` (the cache was cut there).
    pub fn truncate(&mut self, len: usize) {
        self.opened.retain(|_, &mut at| at < len);
        self.recent.retain(|&(at, _)| at < len);
        self.pending.retain(|&(_, at, _)| at < len);
        self.context_seen.retain(|&(at, _, _)| at < len);
        self.personal_only.retain(|f| self.opened.contains_key(f));
        self.speaker_at = self.speaker_at.filter(|&at| at < len);
        if self.sentence_from >= len {
            (self.asking, self.sentence_from) = (false, len);
        }
    }

    /// Marks what follows as the model's own reply (`true`: its names do not name learned
    /// facts) or as prompt (`false`, the default: its names do).
    pub fn set_replying(&mut self, replying: bool) {
        self.replying = replying;
    }

    fn see(&mut self, at: usize, token: u32) {
        if self.recent.len() == RECENT_TOKENS {
            self.recent.remove(0);
        }
        self.recent.push((at, token));
    }

    /// Whether the tokens seen last, at consecutive positions, are `needle`.
    fn ends_with(&self, needle: &[u32]) -> bool {
        let n = needle.len();
        n <= self.recent.len() && {
            let tail = &self.recent[self.recent.len() - n..];
            tail.iter().map(|&(_, t)| t).eq(needle.iter().copied())
                && tail.windows(2).all(|w| w[1].0 == w[0].0 + 1)
        }
    }

    fn open(&mut self, fact: u32, at: usize) {
        self.opened.entry(fact).or_insert(at);
    }

    fn is_open(&self, fact: u32, at: usize) -> bool {
        self.opened.get(&fact).is_some_and(|&from| from <= at)
    }

    /// How many learned facts were last named at or after position `from`: what a routing
    /// gate recalled for the text from there on.
    /// The learned facts last named at or after position `from`, in the order they were
    /// learned: which facts a routing gate recalled for the text from there on.
    pub fn facts_named_since(&self, from: usize) -> Vec<u32> {
        let mut facts: Vec<u32> = self
            .opened
            .iter()
            .filter(|&(_, &at)| at >= from)
            .map(|(&f, _)| f)
            .collect();
        facts.sort_unstable();
        facts
    }

    /// How many of `fact`'s context words the text held from one window before its latest
    /// naming on.
    fn context_score(&self, fact: u32, window: usize) -> usize {
        let from = self.opened.get(&fact).map_or(0, |&at| at.saturating_sub(window));
        let mut words: Vec<u64> = self
            .context_seen
            .iter()
            .filter(|&&(at, f, _)| f == fact && at >= from)
            .map(|&(_, _, w)| w)
            .collect();
        words.sort_unstable();
        words.dedup();
        words.len()
    }

    /// Facts opened so far.
    pub fn len(&self) -> usize {
        self.opened.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.opened.is_empty()
    }
}

/// What a fact's phrasing gives the gate: the memory's input at each token (tokens × dim)
/// and the rows each token read (tokens × reads).
pub struct KeyedPhrasing<'a> {
    /// Memory inputs, tokens × dim.
    pub inputs: &'a [f32],
    /// Rows read, tokens × reads.
    pub slots: &'a [u32],
}

/// Reads a saved gate front to back; `None` past the end.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }

    fn u32(&mut self) -> Option<usize> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize)
    }
}

fn quantize_unit(x: &[f32]) -> Vec<i8> {
    let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt();
    let scale = if norm > 0.0 { KEY_SCALE / norm } else { 0.0 };
    x.iter()
        .map(|v| (v * scale).round().clamp(-KEY_SCALE, KEY_SCALE) as i8)
        .collect()
}

fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .sum()
}

impl ReadGate {
    /// An empty gate for inputs `dim` wide that passes reads at cosine ≥ `questions` to a
    /// question/answer fact's key and ≥ `notes` to a note's.
    pub fn new(dim: usize, questions: f32, notes: f32) -> Result<Self> {
        for t in [questions, notes] {
            if !(t.is_finite() && (-1.0..=1.0).contains(&t)) {
                return Err(Error::InvalidArgument(format!(
                    "read gate threshold {t} must be a cosine in [-1, 1]"
                )));
            }
        }
        Ok(ReadGate {
            thresholds: [questions, notes],
            dim,
            keys: Vec::new(),
            kinds: Vec::new(),
            key_ids: HashMap::new(),
            links: HashMap::new(),
            exempt: HashSet::new(),
            topics: false,
            needles: HashMap::new(),
            row_facts: HashMap::new(),
            facts: 0,
            routes: false,
            fact_rows: Vec::new(),
            route_window: usize::MAX,
            word_starts: Vec::new(),
            partial: HashSet::new(),
            personal: HashMap::new(),
            context: HashMap::new(),
            speaker: SpeakerTokens::default(),
        })
    }

    /// A [`ReadGate::new`] gate whose reads of a learned fact's rows also need the sequence
    /// to have named the fact: to hold, up to the reading token, one of its topic words (a
    /// name, "bike"; token for token). A question of the same shape about another subject
    /// ("the capital of France" beside a learned capital) then reads none of its rows even
    /// where its tokens are the fact's own ("What is the capital of").
    pub fn with_topics(dim: usize, questions: f32, notes: f32) -> Result<Self> {
        let mut gate = ReadGate::new(dim, questions, notes)?;
        gate.topics = true;
        Ok(gate)
    }

    /// A gate that gives each learned fact rows of its own and, from where a sequence names
    /// the fact (as [`ReadGate::with_topics`]), reads them at every later token, weighted by
    /// the lookup's own scores among them. The lookup's reads of owned rows are all closed:
    /// a fact is read wherever it is named, whatever words surround the name, and nowhere
    /// else. Learning trains the rows read exactly this way.
    pub fn with_routes(dim: usize) -> Result<Self> {
        let mut gate = ReadGate::with_topics(dim, -1.0, -1.0)?;
        gate.routes = true;
        gate.route_window = ROUTE_WINDOW;
        Ok(gate)
    }

    /// Whether reads need the fact named (a topic gate).
    pub fn needs_topics(&self) -> bool {
        self.topics
    }

    /// Whether named facts' rows are routed (a routing gate).
    pub fn routes(&self) -> bool {
        self.routes
    }

    /// Adds a learned fact to a routing gate: its topic words as token ids, its personal
    /// words as token ids (a note's; see [`Self::set_speaker_tokens`]) and the rows it owns
    /// (none another fact owns). Returns its id.
    pub fn add_routed_fact(
        &mut self,
        needles: &[Vec<u32>],
        personal: &[Vec<u32>],
        rows: &[u32],
    ) -> u32 {
        let fact = self.facts;
        self.facts += 1;
        let mut own: Vec<u32> = rows
            .iter()
            .copied()
            .filter(|r| !self.row_facts.contains_key(r))
            .collect();
        own.sort_unstable();
        own.dedup();
        for &r in &own {
            self.row_facts.insert(r, vec![fact]);
        }
        self.fact_rows.push(own);
        self.add_names(fact, needles, personal);
        fact
    }

    /// Gives routed fact `fact` more names and personal words (those of the facts it replaced,
    /// the roles other notes give its names); ones it has already are skipped.
    pub fn add_names(&mut self, fact: u32, needles: &[Vec<u32>], personal: &[Vec<u32>]) {
        for n in needles.iter().filter(|n| !n.is_empty()) {
            let list = self.needles.entry(n[n.len() - 1]).or_default();
            if !list.iter().any(|(m, f)| *f == fact && m == n) {
                list.push((n.clone(), fact));
            }
        }
        for n in personal.iter().filter(|n| !n.is_empty()) {
            if self.needles.get(&n[n.len() - 1]).is_some_and(|l| l.iter().any(|(m, f)| *f == fact && m == n)) {
                continue;
            }
            let list = self.personal.entry(n[n.len() - 1]).or_default();
            if !list.iter().any(|(m, f)| *f == fact && m == n) {
                list.push((n.clone(), fact));
            }
        }
        self.mark_partial(fact);
    }

    /// Gives a routed fact its context words as token ids: where several facts are open at
    /// once, only those whose words the text holds most are read ("What is the name of
    /// Wassily Kandinsky's mother?" opens both Kandinsky facts; "mother" tells them apart).
    pub fn add_context(&mut self, fact: u32, words: &[Vec<u32>]) {
        for w in words.iter().filter(|w| !w.is_empty()) {
            let list = self.context.entry(w[w.len() - 1]).or_default();
            if !list.iter().any(|(n, f)| *f == fact && n == w) {
                list.push((w.clone(), fact));
            }
        }
    }

    /// Finds which of `fact`'s needles are one word of a longer name of it (held whole by
    /// another of its needles).
    fn mark_partial(&mut self, fact: u32) {
        let own: Vec<&Vec<u32>> = self
            .needles
            .values()
            .flatten()
            .filter(|(_, f)| *f == fact)
            .map(|(n, _)| n)
            .collect();
        let parts: Vec<Vec<u32>> = own
            .iter()
            .filter(|n| {
                own.iter()
                    .any(|o| o.len() > n.len() && o.windows(n.len()).any(|w| w == &n[..]))
            })
            .map(|n| (*n).clone())
            .collect();
        self.partial.extend(parts.into_iter().map(|n| (fact, n)));
    }

    /// Tells a routing gate how each token of the vocabulary begins (see [`WordStart`]).
    pub fn set_word_starts(&mut self, starts: Vec<WordStart>) {
        self.word_starts = starts;
    }

    /// Tells a routing gate the tokens of [`SpeakerTokens`]: a note's personal words name it
    /// only in a question, after a first-person word in the same sentence.
    pub fn set_speaker_tokens(&mut self, speaker: SpeakerTokens) {
        self.speaker = speaker;
    }

    fn class(&self, token: u32) -> WordStart {
        self.word_starts
            .get(token as usize)
            .copied()
            .unwrap_or(WordStart::Break)
    }

    /// The words of `words` that end with `token`, unless the tokens being read are the
    /// model's own reply (whose words name nothing).
    fn naming<'a>(
        &self,
        words: &'a HashMap<u32, Vec<(Vec<u32>, u32)>>,
        open: &OpenFacts,
        token: u32,
    ) -> Option<&'a Vec<(Vec<u32>, u32)>> {
        if open.replying {
            None
        } else {
            words.get(&token)
        }
    }

    /// Whether the `n` tokens seen last begin a word: a needle's form without a space
    /// ("book", for a sentence's start) does not match inside another word ("passbook").
    fn begins_word(&self, open: &OpenFacts, n: usize) -> bool {
        let Some(at) = open.recent.len().checked_sub(n) else {
            return false;
        };
        at == 0
            || self.class(open.recent[at].1) != WordStart::Inside
            || self.class(open.recent[at - 1].1) == WordStart::Break
    }

    /// Whether the `n` tokens seen last follow a capitalized word that belongs to another
    /// name: any, when they are one word of a learned name of several ("Acme Looms"); one
    /// not at a sentence's start otherwise ("Irving Berlin", but "Did Tariq").
    fn follows_another_name(&self, open: &OpenFacts, n: usize, part: bool) -> bool {
        let before = &open.recent[..open.recent.len().saturating_sub(n)];
        // Back over the word right before to its first token.
        let mut i = before.len();
        while i > 0 && self.class(before[i - 1].1) == WordStart::Inside {
            i -= 1;
        }
        if i == 0 || self.class(before[i - 1].1) != WordStart::Capital {
            return false;
        }
        part || (i >= 2 && self.class(before[i - 2].1) != WordStart::Break)
    }



    /// Forgets the facts added after the first `n` (a routing gate's fact whose learning
    /// stopped before it finished: its rows are then no fact's, as in a store that reopens).
    pub fn truncate_facts(&mut self, n: usize) {
        let n = n.min(self.facts as usize) as u32;
        self.facts = n;
        self.fact_rows.truncate(n as usize);
        self.row_facts.retain(|_, facts| {
            facts.retain(|&f| f < n);
            !facts.is_empty()
        });
        for list in self
            .needles
            .values_mut()
            .chain(self.personal.values_mut())
            .chain(self.context.values_mut())
        {
            list.retain(|&(_, f)| f < n);
        }
        self.needles.retain(|_, list| !list.is_empty());
        self.personal.retain(|_, list| !list.is_empty());
        self.context.retain(|_, list| !list.is_empty());
        self.partial.retain(|&(f, _)| f < n);
    }

    /// Whether a fact of a routing gate owns `row`.
    pub fn owns(&self, row: u32) -> bool {
        self.routes && self.row_facts.contains_key(&row)
    }

    /// The rows fact `fact` owns (routes only).
    pub fn fact_rows(&self, fact: u32) -> &[u32] {
        self.fact_rows.get(fact as usize).map_or(&[], |r| &r[..])
    }

    /// A routing gate's pass over the tokens `tokens` at positions `pos0..` of a sequence
    /// that has named `open` so far (updated): closes every read of an owned row in
    /// `weights` (tokens × reads, beside `slots`) and returns, per token, the facts open
    /// there, whose rows it reads instead.
    pub fn route_in_sequence(
        &self,
        slots: &[u32],
        weights: &mut [f32],
        tokens: &[u32],
        pos0: usize,
        open: &mut OpenFacts,
    ) -> Vec<Vec<u32>> {
        let reads = slots.len() / tokens.len().max(1);
        let mut facts = Vec::with_capacity(tokens.len());
        for (t, &token) in tokens.iter().enumerate() {
            let at = pos0 + t;
            open.see(at, token);
            // A name is a name once its word has ended and no other capitalized word follows
            // ("Ana" is not "Anatoly" or "Ana Costa"): the fact opens at the token after it.
            let ended = !matches!(self.class(token), WordStart::Inside | WordStart::Capital);
            for (fact, named_at, personal) in std::mem::take(&mut open.pending) {
                if ended && named_at + 1 == at {
                    let named_before = !open.personal_only.contains(&fact)
                        && open
                            .opened
                            .get(&fact)
                            .is_some_and(|&from| at - from < self.route_window);
                    // The latest naming counts: a fact is read for a window after it.
                    open.opened.insert(fact, at);
                    if !personal || named_before {
                        open.personal_only.remove(&fact);
                    } else {
                        open.personal_only.insert(fact);
                    }
                }
            }
            let speaker = &self.speaker;
            if speaker.sentence_ends.contains(&token) {
                (open.speaker_at, open.asking, open.sentence_from) = (None, false, at + 1);
            } else if speaker.question_words.contains(&token)
                || (at == open.sentence_from && speaker.question_openers.contains(&token))
            {
                open.asking = true;
            }
            let needles = self.naming(&self.needles, open, token);
            for (needle, fact) in needles.into_iter().flatten() {
                if open.ends_with(needle) && self.begins_word(open, needle.len()) {
                    let part = self.partial.contains(&(*fact, needle.clone()));
                    if !self.follows_another_name(open, needle.len(), part) {
                        open.pending.push((*fact, at, false));
                    }
                }
            }
            if !open.replying {
                for (word, fact) in self.context.get(&token).into_iter().flatten() {
                    if open.ends_with(word) && self.begins_word(open, word.len()) {
                        let key = word_key(word);
                        open.context_seen.push((at, *fact, key));
                    }
                }
                let keep_from = at.saturating_sub(2 * self.route_window.min(1 << 20));
                open.context_seen.retain(|&(seen, _, _)| seen >= keep_from);
            }
            // A personal word names a note after the user spoke of themselves in the same
            // sentence ("Which instrument do I play?"), never in a general question.
            let personal = self.naming(&self.personal, open, token);
            for (needle, fact) in personal.into_iter().flatten() {
                let starts = (at + 1).saturating_sub(needle.len());
                if open.speaker_at.is_some_and(|p| p < starts)
                    && open.ends_with(needle)
                    && self.begins_word(open, needle.len())
                    && !open.pending.iter().any(|&(f, _, _)| f == *fact)
                {
                    open.pending.push((*fact, at, true));
                }
            }
            if open.asking && speaker.first_person.contains(&token) {
                open.speaker_at = Some(at);
            }
            for j in t * reads..(t + 1) * reads {
                if self.row_facts.contains_key(&slots[j]) && !self.exempt.contains(&slots[j]) {
                    weights[j] = 0.0;
                }
            }
            let mut here: Vec<u32> = open
                .opened
                .iter()
                .filter(|&(_, &from)| from <= at && at - from < self.route_window)
                .map(|(&f, _)| f)
                .collect();
            // A fact named by a name outranks those only a personal word named: "my sister
            // Ana" reads Ana's note, not every note holding "sister".
            if here.iter().any(|f| !open.personal_only.contains(f)) {
                here.retain(|f| !open.personal_only.contains(f));
            }
            // Of several facts open, those whose words the text holds most: a question about
            // Kandinsky's mother reads the fact about his mother, not the one about his son.
            if here.len() > 1 {
                let scores: Vec<usize> = here
                    .iter()
                    .map(|&f| open.context_score(f, self.route_window))
                    .collect();
                let best = scores.iter().copied().max().unwrap_or(0);
                let mut kept = scores.iter().map(|&s| s == best);
                here.retain(|_| kept.next().unwrap_or(true));
            }
            here.sort_unstable();
            facts.push(here);
        }
        facts
    }

    /// Adds a learned fact: its phrasings' tokens and the rows they read, and its topic
    /// words as token ids (`needles`, used by a topic gate).
    pub fn add_fact(
        &mut self,
        phrasings: &[KeyedPhrasing],
        needles: &[Vec<u32>],
        reads: usize,
        kind: KeyKind,
    ) {
        for p in phrasings {
            self.add_reads(p.inputs, p.slots, reads, kind);
        }
        if !self.topics {
            return;
        }
        let fact = self.facts;
        self.facts += 1;
        for p in phrasings {
            for &row in p.slots {
                let list = self.row_facts.entry(row).or_default();
                if list.last() != Some(&fact) {
                    list.push(fact);
                }
            }
        }
        for n in needles.iter().filter(|n| !n.is_empty()) {
            let last = n[n.len() - 1];
            self.needles.entry(last).or_default().push((n.clone(), fact));
        }
    }

    /// The cosine a read needs to a key of `kind`.
    pub fn threshold(&self, kind: KeyKind) -> f32 {
        self.thresholds[kind as usize]
    }

    /// Distinct keys held.
    pub fn key_count(&self) -> usize {
        self.keys.len() / self.dim.max(1)
    }

    /// Rows with at least one key (with routes: rows a fact owns).
    pub fn keyed_rows(&self) -> usize {
        if self.routes {
            self.row_facts.len()
        } else {
            self.links.len()
        }
    }

    /// Facts added (topic and routing gates).
    pub fn fact_count(&self) -> usize {
        self.facts as usize
    }

    /// Whether no row is keyed (then every read passes).
    pub fn is_empty(&self) -> bool {
        if self.routes {
            self.fact_rows.is_empty()
        } else {
            self.links.is_empty()
        }
    }

    /// Adds a learned fact's tokens: `inputs` is tokens × dim (the memory's input), `slots`
    /// tokens × `reads` (the rows each token read).
    pub fn add_reads(&mut self, inputs: &[f32], slots: &[u32], reads: usize, kind: KeyKind) {
        for (x, row_ids) in inputs.chunks_exact(self.dim).zip(slots.chunks_exact(reads)) {
            let key = quantize_unit(x);
            let next = self.key_count() as u32;
            let id = *self.key_ids.entry(key).or_insert_with_key(|k| {
                self.keys.extend_from_slice(k);
                self.kinds.push(kind);
                next
            });
            if kind == KeyKind::Note {
                self.kinds[id as usize] = KeyKind::Note;
            }
            for &row in row_ids {
                let list = self.links.entry(row).or_default();
                if !list.contains(&id) {
                    list.push(id);
                }
            }
        }
    }

    /// The gate's keys and rows as bytes, tagged with `tag` (what they were made from):
    /// rebuilding them means a forward pass over every learned fact, so they are kept beside
    /// the store. Exemptions are not saved (they follow from the store's history).
    pub fn to_bytes(&self, tag: &str) -> Vec<u8> {
        let mut rows_of_key: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for (&row, ids) in &self.links {
            for &k in ids {
                rows_of_key.entry(k).or_default().push(row);
            }
        }
        let mut out = self.magic().to_vec();
        let put = |out: &mut Vec<u8>, v: u32| out.extend(v.to_le_bytes());
        put(&mut out, tag.len() as u32);
        out.extend(tag.as_bytes());
        put(&mut out, self.dim as u32);
        put(&mut out, self.key_count() as u32);
        for k in 0..self.key_count() {
            out.extend(
                self.keys[k * self.dim..(k + 1) * self.dim]
                    .iter()
                    .map(|&v| v as u8),
            );
            out.push(self.kinds[k] as u8);
            let rows = rows_of_key.get(&(k as u32)).map_or(&[][..], |r| &r[..]);
            put(&mut out, rows.len() as u32);
            for &r in rows {
                put(&mut out, r);
            }
        }
        if self.topics {
            put(&mut out, self.facts);
            let needles: BTreeMap<_, _> = self.needles.iter().collect();
            let personal: BTreeMap<_, _> = self.personal.iter().collect();
            let context: BTreeMap<_, _> = self.context.iter().collect();
            let count = needles
                .values()
                .chain(personal.values())
                .chain(context.values())
                .map(|v| v.len())
                .sum::<usize>();
            put(&mut out, count as u32);
            let named = needles.into_values().flatten().map(|(n, f)| (n, *f));
            let personal = personal.into_values().flatten().map(|(n, f)| (n, f | PERSONAL_NEEDLE));
            let context = context.into_values().flatten().map(|(n, f)| (n, f | CONTEXT_NEEDLE));
            for (needle, fact) in named.chain(personal).chain(context) {
                put(&mut out, fact);
                put(&mut out, needle.len() as u32);
                for &t in needle {
                    put(&mut out, t);
                }
            }
            let rows: BTreeMap<_, _> = self.row_facts.iter().collect();
            put(&mut out, rows.len() as u32);
            for (&row, facts) in rows {
                put(&mut out, row);
                put(&mut out, facts.len() as u32);
                for &f in facts {
                    put(&mut out, f);
                }
            }
        }
        let sum = xxh3_64(&out);
        out.extend(sum.to_le_bytes());
        out
    }

    /// Restores keys and rows saved by [`Self::to_bytes`] with the same `tag` into an empty
    /// gate; `None` when the bytes are damaged or were made from something else.
    pub fn load_bytes(&mut self, bytes: &[u8], tag: &str) -> Option<()> {
        let (body, sum) = bytes.split_at_checked(bytes.len().checked_sub(8)?)?;
        if xxh3_64(body) != u64::from_le_bytes(sum.try_into().ok()?) {
            return None;
        }
        let magic = self.magic();
        if body.get(..magic.len())? != magic {
            return None;
        }
        let mut cur = Cursor {
            bytes: body,
            at: CACHE_MAGIC.len(),
        };
        let tag_len = cur.u32()?;
        if cur.take(tag_len)? != tag.as_bytes() || cur.u32()? != self.dim {
            return None;
        }
        let n = cur.u32()?;
        let mut gate = ReadGate::new(self.dim, self.thresholds[0], self.thresholds[1]).ok()?;
        gate.topics = self.topics;
        gate.routes = self.routes;
        gate.route_window = self.route_window;
        gate.word_starts = std::mem::take(&mut self.word_starts);
        gate.speaker = std::mem::take(&mut self.speaker);
        for id in 0..n as u32 {
            let key: Vec<i8> = cur.take(self.dim)?.iter().map(|&b| b as i8).collect();
            gate.kinds.push(match cur.take(1)?[0] {
                0 => KeyKind::Question,
                1 => KeyKind::Note,
                _ => return None,
            });
            gate.keys.extend_from_slice(&key);
            gate.key_ids.insert(key, id);
            for _ in 0..cur.u32()? {
                let row = cur.u32()? as u32;
                gate.links.entry(row).or_default().push(id);
            }
        }
        if self.topics {
            gate.facts = cur.u32()? as u32;
            if gate.routes {
                gate.fact_rows = vec![Vec::new(); gate.facts as usize];
            }
            for _ in 0..cur.u32()? {
                let marked = cur.u32()? as u32;
                let fact = marked & !(PERSONAL_NEEDLE | CONTEXT_NEEDLE);
                let (personal, context) =
                    (marked & PERSONAL_NEEDLE != 0, marked & CONTEXT_NEEDLE != 0);
                let len = cur.u32()?;
                if fact >= gate.facts
                    || len == 0
                    || len > RECENT_TOKENS
                    || ((personal || context) && !gate.routes)
                    || (personal && context)
                {
                    return None;
                }
                let needle = (0..len).map(|_| cur.u32().map(|t| t as u32)).collect::<Option<Vec<u32>>>()?;
                let map = if personal {
                    &mut gate.personal
                } else if context {
                    &mut gate.context
                } else {
                    &mut gate.needles
                };
                map.entry(needle[len - 1]).or_default().push((needle, fact));
            }
            for _ in 0..cur.u32()? {
                let row = cur.u32()? as u32;
                let n = cur.u32()?;
                let facts = (0..n).map(|_| cur.u32().map(|f| f as u32)).collect::<Option<Vec<u32>>>()?;
                if gate.routes {
                    let &[f] = &facts[..] else { return None };
                    let owner = gate.fact_rows.get_mut(f as usize)?;
                    owner.push(row);
                }
                gate.row_facts.insert(row, facts);
            }
        }
        if cur.at != body.len() {
            return None;
        }
        if gate.routes {
            for f in 0..gate.facts {
                gate.mark_partial(f);
            }
        }
        gate.exempt = std::mem::take(&mut self.exempt);
        *self = gate;
        Some(())
    }

    fn magic(&self) -> &'static [u8; 8] {
        match (self.routes, self.topics) {
            (true, _) => ROUTES_MAGIC,
            (false, true) => TOPICS_MAGIC,
            (false, false) => CACHE_MAGIC,
        }
    }

    /// Sets the rows that imported deltas changed (read ungated).
    pub fn set_exempt(&mut self, rows: impl IntoIterator<Item = u32>) {
        self.exempt = rows.into_iter().collect();
    }

    /// [`Self::apply`] for the tokens `tokens` at positions `pos0..` of a sequence that has
    /// named `open` so far (updated): a topic gate also closes every read of a row none of
    /// whose facts the sequence has named. Returns how many reads were closed.
    pub fn apply_in_sequence(
        &self,
        inputs: &[f32],
        slots: &[u32],
        weights: &mut [f32],
        tokens: &[u32],
        pos0: usize,
        open: &mut OpenFacts,
    ) -> usize {
        if !self.topics {
            return self.apply(inputs, slots, weights);
        }
        let n = inputs.len() / self.dim.max(1);
        if n == 0 || self.links.is_empty() || tokens.len() != n {
            return 0;
        }
        let reads = slots.len() / n;
        let mut closed = 0;
        for (t, &token) in tokens.iter().enumerate() {
            let at = pos0 + t;
            open.see(at, token);
            let needles = self.naming(&self.needles, open, token);
            for (needle, fact) in needles.into_iter().flatten() {
                if open.ends_with(needle) {
                    open.open(*fact, at);
                }
            }
            let named = |row: u32| {
                self.row_facts
                    .get(&row)
                    .is_some_and(|facts| facts.iter().any(|&f| open.is_open(f, at)))
            };
            closed += self.close_token(inputs, slots, weights, (t, reads), &named);
        }
        closed
    }

    /// Zeroes the weight of every read of a keyed row whose token is not within the threshold
    /// of any of the row's keys. `inputs` is tokens × dim, `slots` and `weights` tokens ×
    /// reads. Returns how many reads were closed.
    pub fn apply(&self, inputs: &[f32], slots: &[u32], weights: &mut [f32]) -> usize {
        let tokens = inputs.len() / self.dim.max(1);
        if tokens == 0 || self.links.is_empty() {
            return 0;
        }
        let reads = slots.len() / tokens;
        (0..tokens)
            .map(|t| self.close_token(inputs, slots, weights, (t, reads), &|_| true))
            .sum()
    }

    /// Closes token `t`'s reads (`reads` of them) of keyed rows that `named` refuses or whose
    /// keys are all farther than the threshold; returns how many it closed.
    fn close_token(
        &self,
        inputs: &[f32],
        slots: &[u32],
        weights: &mut [f32],
        (t, reads): (usize, usize),
        named: &dyn Fn(u32) -> bool,
    ) -> usize {
        // Both sides carry KEY_SCALE: the cosine is dot / KEY_SCALE².
        let need = self.thresholds.map(|c| c * KEY_SCALE * KEY_SCALE);
        // At cosine -1 every key passes: the default topic gate needs no dot product.
        let any_key = self.thresholds.map(|c| c <= -1.0);
        let q = if any_key == [true, true] {
            Vec::new()
        } else {
            quantize_unit(&inputs[t * self.dim..(t + 1) * self.dim])
        };
        let mut closed = 0;
        for j in t * reads..(t + 1) * reads {
            let Some(ids) = self.links.get(&slots[j]) else {
                continue;
            };
            if self.exempt.contains(&slots[j]) {
                continue;
            }
            let near = named(slots[j])
                && ids.iter().any(|&k| {
                    let kind = self.kinds[k as usize] as usize;
                    if any_key[kind] {
                        return true;
                    }
                    let need = need[kind];
                    let k = k as usize * self.dim;
                    dot_i8(&q, &self.keys[k..k + self.dim]) as f32 >= need
                });
            if !near && weights[j] != 0.0 {
                weights[j] = 0.0;
                closed += 1;
            }
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_tokens_pass_and_unlike_tokens_are_closed() {
        let mut gate = ReadGate::new(4, 0.9, 0.5).unwrap();
        // One learned token read rows 7 and 9.
        gate.add_reads(&[1.0, 0.0, 0.0, 0.0], &[7, 9], 2, KeyKind::Question);
        // The same direction (any length) passes; an orthogonal one is closed on keyed rows
        // only; row 3 was never keyed.
        let inputs = [2.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        let slots = [7, 3, 9, 3];
        let mut w = [0.5; 4];
        assert_eq!(gate.apply(&inputs, &slots, &mut w), 1);
        assert_eq!(w, [0.5, 0.5, 0.0, 0.5]);
        // Cosine 0.8 is below 0.9; 0.95 is above.
        let mut w = [1.0; 2];
        gate.apply(&[0.8, 0.6, 0.0, 0.0], &[7, 9], &mut w);
        assert_eq!(w, [0.0, 0.0]);
        let mut w = [1.0; 2];
        gate.apply(&[0.95, 0.312, 0.0, 0.0], &[7, 9], &mut w);
        assert_eq!(w, [1.0, 1.0]);
        // Rows an import changed read ungated.
        gate.set_exempt([9]);
        let mut w = [1.0; 2];
        gate.apply(&[0.0, 1.0, 0.0, 0.0], &[7, 9], &mut w);
        assert_eq!(w, [0.0, 1.0]);
        // A note's key passes at its own, looser cosine (0.8 ≥ 0.5), on its row only.
        gate.add_reads(&[0.0, 0.0, 1.0, 0.0], &[11], 1, KeyKind::Note);
        let mut w = [1.0; 2];
        gate.apply(&[0.0, 0.6, 0.8, 0.0], &[11, 7], &mut w);
        assert_eq!(w, [1.0, 0.0]);
    }

    #[test]
    fn saved_keys_load_back_only_with_their_tag_and_intact() {
        let mut gate = ReadGate::new(3, 0.9, 0.9).unwrap();
        gate.add_reads(&[1.0, 0.0, 0.0], &[4, 5], 2, KeyKind::Question);
        gate.add_reads(&[0.0, 1.0, 0.0], &[5, 6], 2, KeyKind::Note);
        let bytes = gate.to_bytes("facts A");
        let mut back = ReadGate::new(3, 0.9, 0.9).unwrap();
        assert!(back.load_bytes(&bytes, "facts B").is_none());
        assert!(
            back.load_bytes(&bytes[..bytes.len() - 1], "facts A")
                .is_none()
        );
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert!(back.load_bytes(&flipped, "facts A").is_none());
        assert!(back.load_bytes(&bytes, "facts A").is_some());
        assert_eq!((back.key_count(), back.keyed_rows()), (2, 3));
        assert_eq!(back.kinds, [KeyKind::Question, KeyKind::Note]);
        let inputs = [0.0, 1.0, 0.0, 1.0, 0.0, 0.0];
        let slots = [4, 6, 5, 6];
        let (mut a, mut b) = ([1.0; 4], [1.0; 4]);
        gate.apply(&inputs, &slots, &mut a);
        back.apply(&inputs, &slots, &mut b);
        assert_eq!(a, b);
        assert_eq!(a, [0.0, 1.0, 1.0, 0.0]);
    }

    /// A topic gate (cosine 0.9) with one fact whose two tokens (directions x and y) read
    /// rows 7 and 9, named by the token pair [5, 6] or by token 8.
    fn topic_gate() -> ReadGate {
        let mut gate = ReadGate::with_topics(3, 0.9, 0.9).unwrap();
        gate.add_fact(
            &[KeyedPhrasing {
                inputs: &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
                slots: &[7, 9],
            }],
            &[vec![5, 6], vec![8]],
            1,
            KeyKind::Question,
        );
        gate
    }

    #[test]
    fn a_topic_gate_reads_a_fact_only_once_the_sequence_names_it() {
        let gate = topic_gate();
        assert!(gate.needs_topics());
        let x = [1.0, 0.0, 0.0];
        // The fact's own first token, unnamed: closed; row 3 is not keyed.
        let mut open = OpenFacts::default();
        let mut w = [1.0, 1.0];
        assert_eq!(gate.apply_in_sequence(&x, &[7, 3], &mut w, &[1], 0, &mut open), 1);
        assert_eq!(w, [0.0, 1.0]);
        // Named by 5 then 6 across two calls (decoding): open from the 6 on, still only
        // where the cosine rule passes too.
        let mut w = [1.0];
        gate.apply_in_sequence(&x, &[7], &mut w, &[5], 1, &mut open);
        assert_eq!(w, [0.0]);
        let mut w = [1.0, 1.0];
        gate.apply_in_sequence(&[x, [0.0, 0.0, 1.0]].concat(), &[7, 9], &mut w, &[6, 2], 2, &mut open);
        assert_eq!(w, [1.0, 0.0]);
        assert_eq!(open.len(), 1);
        // Cutting the cache before the 5 forgets the naming and the 5: a 6 at position 1
        // then follows a 1 and names nothing.
        open.truncate(1);
        assert!(open.is_empty());
        let mut w = [1.0];
        gate.apply_in_sequence(&x, &[7], &mut w, &[6], 1, &mut open);
        assert_eq!(w, [0.0]);
        // A one-token name.
        let mut w = [1.0];
        gate.apply_in_sequence(&x, &[7], &mut w, &[8], 0, &mut OpenFacts::default());
        assert_eq!(w, [1.0]);
    }

    #[test]
    fn a_saved_topic_gate_loads_back_only_into_a_topic_gate() {
        let gate = topic_gate();
        let bytes = gate.to_bytes("facts A");
        let mut cosine = ReadGate::new(3, 0.9, 0.9).unwrap();
        assert!(cosine.load_bytes(&bytes, "facts A").is_none());
        let mut back = ReadGate::with_topics(3, 0.9, 0.9).unwrap();
        assert!(back.load_bytes(&gate.to_bytes("facts B"), "facts A").is_none());
        assert!(back.load_bytes(&bytes[..bytes.len() - 2], "facts A").is_none());
        assert!(back.load_bytes(&cosine.to_bytes("facts A"), "facts A").is_none());
        assert!(back.load_bytes(&bytes, "facts A").is_some());
        assert_eq!((back.key_count(), back.keyed_rows()), (2, 2));
        let inputs = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        let (mut a, mut b) = ([1.0; 3], [1.0; 3]);
        let ids = [1, 8, 1];
        gate.apply_in_sequence(&inputs, &[7, 7, 7], &mut a, &ids, 0, &mut OpenFacts::default());
        back.apply_in_sequence(&inputs, &[7, 7, 7], &mut b, &ids, 0, &mut OpenFacts::default());
        assert_eq!(a, b);
        assert_eq!(a, [0.0, 1.0, 1.0]);
    }

    #[test]
    fn a_routing_gate_closes_owned_rows_everywhere_and_opens_facts_where_named() {
        let mut gate = ReadGate::with_routes(3).unwrap();
        gate.route_window = 3;
        assert!(gate.routes() && gate.needs_topics() && gate.is_empty());
        // Fact 0 owns rows 7 and 9 and is named by [5, 6]; fact 1 asks for 9 again (already
        // owned: not given) and 4, and is named by 8.
        assert_eq!(gate.add_routed_fact(&[vec![5, 6]], &[], &[9, 7]), 0);
        assert_eq!(gate.add_routed_fact(&[vec![8]], &[], &[9, 4]), 1);
        assert_eq!((gate.fact_rows(0), gate.fact_rows(1)), (&[7, 9][..], &[4][..]));
        assert!(gate.owns(4) && !gate.owns(3) && !gate.is_empty());
        // Tokens 1 5 6 2 2 2 8: one read each (rows 7, 3, 9, 7, 7, 7, 4).
        let slots = [7, 3, 9, 7, 7, 7, 4];
        let mut w = [1.0; 7];
        let mut open = OpenFacts::default();
        let facts = gate.route_in_sequence(&slots, &mut w, &[1, 5, 6, 2, 2, 2, 8], 0, &mut open);
        // Owned rows are closed wherever they are read; row 3 is no fact's.
        assert_eq!(w, [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        // Fact 0 is open from the token after its naming (position 2) for 3 tokens; fact 1,
        // named by the last token, not yet.
        let want: [&[u32]; 7] = [&[], &[], &[], &[0], &[0], &[0], &[]];
        assert_eq!(facts, want.map(<[u32]>::to_vec));
        // The next call's first token opens it.
        let mut w = [1.0];
        assert_eq!(gate.route_in_sequence(&[3], &mut w, &[8], 7, &mut open), vec![vec![1]]);
        // A fact whose learning stopped is taken out: its rows are no fact's, its name names
        // nothing.
        gate.truncate_facts(1);
        assert_eq!(gate.fact_count(), 1);
        assert!(gate.owns(7) && !gate.owns(4));
        let mut w = [1.0];
        let facts = gate.route_in_sequence(&[4], &mut w, &[8], 0, &mut OpenFacts::default());
        assert_eq!((w, facts), ([1.0], vec![vec![]]));
    }

    #[test]
    fn the_models_own_reply_names_no_fact_but_a_prompts_naming_reads_on_into_it() {
        let mut gate = ReadGate::with_routes(3).unwrap();
        gate.route_window = 3;
        // Fact 0 owns row 7 and is named by token 5; fact 1 owns row 9 and is named by 8.
        gate.add_routed_fact(&[vec![5]], &[], &[7]);
        gate.add_routed_fact(&[vec![8]], &[], &[9]);
        let run = |open: &mut OpenFacts, tokens: &[u32], pos0: usize| {
            let slots = vec![1; tokens.len()];
            let mut w = vec![1.0; tokens.len()];
            gate.route_in_sequence(&slots, &mut w, tokens, pos0, open)
        };
        // The prompt "2 5 2" names fact 0; the reply "8 2 2" says fact 1's name itself.
        let mut open = OpenFacts::default();
        run(&mut open, &[2, 5, 2], 0);
        open.set_replying(true);
        let reply = run(&mut open, &[8, 2, 2], 3);
        // Fact 0's window, opened by the prompt, goes on into the reply; fact 1 never opens.
        assert_eq!(reply, vec![vec![0], vec![0], vec![]]);
        assert_eq!(open.facts_named_since(0), vec![0]);
        // The same tokens as prompt open fact 1 at the token after its name.
        let mut open = OpenFacts::default();
        let prompt = run(&mut open, &[2, 5, 2, 8, 2, 2], 0);
        assert_eq!(prompt[4], vec![0, 1]);
        assert_eq!(open.facts_named_since(3), vec![1]);
    }

    #[test]
    fn of_facts_named_at_once_those_whose_words_the_text_holds_most_are_read() {
        // 5 " Kandinsky" names both facts; 6 " mother" is fact 0's word, 7 " son" fact 1's.
        let mut gate = ReadGate::with_routes(3).unwrap();
        let mother = gate.add_routed_fact(&[vec![5]], &[], &[10]);
        let son = gate.add_routed_fact(&[vec![5]], &[], &[11]);
        gate.add_context(mother, &[vec![5], vec![6]]);
        gate.add_context(son, &[vec![5], vec![7]]);
        let read = |gate: &ReadGate, tokens: &[u32]| {
            let slots = vec![1; tokens.len()];
            let mut w = vec![1.0; tokens.len()];
            let facts =
                gate.route_in_sequence(&slots, &mut w, tokens, 0, &mut OpenFacts::default());
            facts[tokens.len() - 1].clone()
        };
        assert_eq!(read(&gate, &[2, 5, 6, 2]), [mother], "Kandinsky's mother");
        assert_eq!(read(&gate, &[7, 2, 5, 2]), [son], "the son of Kandinsky");
        assert_eq!(read(&gate, &[2, 5, 2, 2]), [mother, son], "a tie reads both");
        // The words are saved with the gate.
        let mut back = ReadGate::with_routes(3).unwrap();
        back.load_bytes(&gate.to_bytes("t"), "t").unwrap();
        assert_eq!(read(&back, &[2, 5, 6, 2]), [mother]);
        // And taken out with their fact.
        gate.truncate_facts(1);
        assert!(gate.context.values().flatten().all(|&(_, f)| f == mother));
    }

    #[test]
    fn a_word_of_a_learned_name_does_not_name_the_fact_after_another_name() {
        use WordStart::*;
        // 0 "\n", 1 " is", 2 " Acme", 3 " Looms", 4 " Bright", 5 "well", 6 "Did", 7 " Tariq",
        // 8 "ov".
        let mut gate = ReadGate::with_routes(3).unwrap();
        let starts = vec![
            Break, Lower, Capital, Capital, Capital, Inside, Capital, Capital, Inside,
        ];
        gate.set_word_starts(starts);
        // "Brightwell Looms", named whole or by "Looms"; "Tariq", a name of one word.
        gate.add_routed_fact(&[vec![3], vec![4, 5, 3]], &[], &[7]);
        gate.add_routed_fact(&[vec![7]], &[], &[8]);
        // "ov", a word's form at a line's start (no space before it).
        gate.add_routed_fact(&[vec![8]], &[], &[9]);
        let named = |tokens: &[u32]| {
            let mut w = vec![1.0; tokens.len()];
            let slots = vec![1; tokens.len()];
            let facts = gate.route_in_sequence(&slots, &mut w, tokens, 0, &mut OpenFacts::default());
            facts[tokens.len() - 1].clone()
        };
        // A fact opens at the token after its name, once the name's word has ended.
        let none: [u32; 0] = [];
        assert_eq!(named(&[6, 1, 2, 3, 0]), none, "Did is Acme Looms");
        assert_eq!(named(&[0, 2, 3, 0]), none, "Acme Looms at a line's start");
        assert_eq!(named(&[6, 1, 4, 5, 3, 0]), [0], "Did is Brightwell Looms");
        assert_eq!(named(&[6, 1, 4, 5, 3]), none, "the name's word may go on");
        assert_eq!(named(&[6, 1, 3, 0]), [0], "Did is Looms");
        assert_eq!(named(&[0, 6, 7, 0]), [1], "Did Tariq: a name of one word");
        assert_eq!(named(&[6, 1, 2, 7, 0]), none, "is Acme Tariq: after another name");
        assert_eq!(named(&[0, 7, 8, 0]), none, "Tariqov: the word goes on, ov is inside it");
        assert_eq!(named(&[0, 8, 0]), [2], "ov at a line's start");
        assert_eq!(named(&[0, 7, 3, 0]), none, "Tariq Looms: another name follows");
        // The parts are found again when a saved gate loads.
        let mut back = ReadGate::with_routes(3).unwrap();
        back.load_bytes(&gate.to_bytes("t"), "t").unwrap();
        assert_eq!(back.partial, gate.partial);
        assert_eq!(gate.partial.len(), 1);
    }

    #[test]
    fn a_personal_word_names_a_note_only_where_the_user_asks_about_themselves() {
        use WordStart::*;
        // 0 "\n", 1 " is", 2 " my", 3 " play", 4 "?", 5 " Ana", 6 " cello", 7 "What", 8 "Do".
        let starts = vec![Break, Lower, Lower, Lower, Break, Capital, Lower, Capital, Capital];
        let speaker = || SpeakerTokens {
            first_person: [2].into(),
            sentence_ends: [0, 4].into(),
            question_words: [7].into(),
            question_openers: [8].into(),
        };
        let mut gate = ReadGate::with_routes(3).unwrap();
        gate.set_word_starts(starts.clone());
        gate.set_speaker_tokens(speaker());
        // "I play the cello." (named by "cello"), "My sister Ana plays tennis." (by "Ana"):
        // both hold the personal word "play".
        gate.add_routed_fact(&[vec![6]], &[vec![3]], &[7]);
        gate.add_routed_fact(&[vec![5]], &[vec![3]], &[8]);
        let read_at_end = |gate: &ReadGate, tokens: &[u32]| {
            let mut w = vec![1.0; tokens.len()];
            let slots = vec![1; tokens.len()];
            let facts = gate.route_in_sequence(&slots, &mut w, tokens, 0, &mut OpenFacts::default());
            facts[tokens.len() - 1].clone()
        };
        let none: [u32; 0] = [];
        assert_eq!(read_at_end(&gate, &[7, 1, 3, 1]), none, "What is play is: no one speaks");
        assert_eq!(read_at_end(&gate, &[7, 2, 3, 1]), [0, 1], "What my play is");
        assert_eq!(read_at_end(&gate, &[0, 8, 2, 3, 1]), [0, 1], "Do my play is");
        assert_eq!(read_at_end(&gate, &[2, 3, 1]), none, "my play is: not a question");
        assert_eq!(read_at_end(&gate, &[0, 1, 8, 2, 3, 1]), none, "is Do my play: not first");
        assert_eq!(read_at_end(&gate, &[7, 2, 4, 3, 1]), none, "What my ? play: another sentence");
        assert_eq!(read_at_end(&gate, &[7, 3, 2, 1]), none, "What play my: the word came first");
        // A fact its name opened outranks those only a personal word opened.
        assert_eq!(read_at_end(&gate, &[7, 2, 5, 1, 3, 1]), [1], "What my Ana is play is");
        assert_eq!(read_at_end(&gate, &[7, 2, 6, 1, 3, 1]), [0], "What my cello is play is");
        // Personal words are saved with the gate and load back as personal.
        let mut back = ReadGate::with_routes(3).unwrap();
        back.set_word_starts(starts);
        back.set_speaker_tokens(speaker());
        back.load_bytes(&gate.to_bytes("t"), "t").unwrap();
        assert_eq!(read_at_end(&back, &[7, 1, 3, 1]), none);
        assert_eq!(read_at_end(&back, &[7, 2, 3, 1]), [0, 1]);
        assert_eq!(read_at_end(&back, &[7, 2, 5, 1, 3, 1]), [1]);
    }

    #[test]
    fn a_saved_routing_gate_loads_back_with_its_facts_rows() {
        let mut gate = ReadGate::with_routes(3).unwrap();
        gate.add_routed_fact(&[vec![5, 6]], &[], &[9, 7]);
        gate.add_routed_fact(&[vec![8]], &[], &[2]);
        let bytes = gate.to_bytes("facts A");
        let mut topics = ReadGate::with_topics(3, -1.0, -1.0).unwrap();
        assert!(topics.load_bytes(&bytes, "facts A").is_none());
        let mut back = ReadGate::with_routes(3).unwrap();
        assert!(back.load_bytes(&bytes[..bytes.len() - 1], "facts A").is_none());
        assert!(back.load_bytes(&bytes, "facts A").is_some());
        assert_eq!((back.fact_rows(0), back.fact_rows(1)), (&[7, 9][..], &[2][..]));
        let (mut a, mut b) = ([1.0; 3], [1.0; 3]);
        let ids = [5, 6, 8];
        let fa = gate.route_in_sequence(&[9, 2, 3], &mut a, &ids, 0, &mut OpenFacts::default());
        let fb = back.route_in_sequence(&[9, 2, 3], &mut b, &ids, 0, &mut OpenFacts::default());
        assert_eq!((a, fa), (b, fb));
    }

    #[test]
    fn identical_keys_are_stored_once() {
        let mut gate = ReadGate::new(2, 0.5, 0.5).unwrap();
        gate.add_reads(&[1.0, 1.0, 3.0, 3.0], &[1, 2], 1, KeyKind::Question);
        assert_eq!(gate.key_count(), 1);
        assert_eq!(gate.keyed_rows(), 2);
    }

    #[test]
    fn a_threshold_outside_the_cosine_range_is_refused() {
        for bad in [1.5, -2.0, f32::NAN] {
            let e = ReadGate::new(4, 0.9, bad).unwrap_err().to_string();
            assert!(e.contains("threshold"), "{e}");
        }
    }
}
