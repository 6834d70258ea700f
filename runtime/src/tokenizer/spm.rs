//! SentencePiece-style tokenization as llama.cpp runs it for `tokenizer.ggml.model = "llama"`
//! (Gemma, Llama 2, Mistral): markup and user-defined tokens are cut out of the text first,
//! spaces become `▁`, then neighbouring pieces merge, best-scored pair first, for as long as
//! the merged piece is in the vocabulary; a character no piece covers falls back to its bytes.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use aho_corasick::{AhoCorasick, MatchKind};

use crate::error::{Error, Result};

/// SentencePiece's visible space.
const SPACE: char = '\u{2581}';

/// GGUF token types (`tokenizer.ggml.token_type`) as llama.cpp defines them.
pub(super) const TYPE_UNKNOWN: i64 = 2;
pub(super) const TYPE_CONTROL: i64 = 3;
pub(super) const TYPE_USER_DEFINED: i64 = 4;
pub(super) const TYPE_BYTE: i64 = 6;

/// A score-merging tokenizer over a GGUF vocabulary.
pub(super) struct Spm {
    ids: HashMap<String, u32>,
    scores: Vec<f32>,
    byte_tokens: Vec<Option<u32>>,
    unknown: Option<u32>,
    add_space_prefix: bool,
    /// Control, unknown and user-defined tokens, found in text before any merging.
    markup: Option<AhoCorasick>,
    markup_ids: Vec<u32>,
}

/// The byte a `<0xAB>` byte token stands for.
pub(super) fn byte_of(token: &str) -> Option<u8> {
    let hex = token.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Raw bytes a token stands for when decoded: `▁` is a space, byte tokens their byte.
pub(super) fn token_bytes(token: &str, token_type: i64) -> Vec<u8> {
    match (token_type, byte_of(token)) {
        (TYPE_BYTE, Some(b)) => vec![b],
        _ => token.replace(SPACE, " ").into_bytes(),
    }
}

impl Spm {
    /// Builds the tokenizer from the vocabulary, its merge scores and token types.
    pub(super) fn new(
        tokens: &[String],
        scores: Vec<f32>,
        types: &[i64],
        unknown: Option<u32>,
        add_space_prefix: bool,
    ) -> Result<Self> {
        if scores.len() != tokens.len() {
            return Err(Error::Tokenizer(format!(
                "{} token scores for {} tokens",
                scores.len(),
                tokens.len()
            )));
        }
        // Later duplicates win, as in llama.cpp's token-to-id map.
        let ids: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let mut byte_tokens = vec![None; 256];
        for (i, (t, &ty)) in tokens.iter().zip(types).enumerate() {
            if let (TYPE_BYTE, Some(b)) = (ty, byte_of(t)) {
                byte_tokens[b as usize] = Some(i as u32);
            }
        }
        let (patterns, markup_ids): (Vec<&str>, Vec<u32>) = tokens
            .iter()
            .zip(types)
            .enumerate()
            .filter(|(_, (t, ty))| {
                !t.is_empty() && matches!(**ty, TYPE_UNKNOWN | TYPE_CONTROL | TYPE_USER_DEFINED)
            })
            .map(|(i, (t, _))| (t.as_str(), i as u32))
            .unzip();
        let markup = if patterns.is_empty() {
            None
        } else {
            // llama.cpp cuts the longest markup tokens out first.
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&patterns)
                    .map_err(|e| Error::Tokenizer(format!("markup tokens: {e}")))?,
            )
        };
        Ok(Spm {
            ids,
            scores,
            byte_tokens,
            unknown,
            add_space_prefix,
            markup,
            markup_ids,
        })
    }

    /// Appends the ids of `text` to `out`.
    pub(super) fn encode(&self, text: &str, out: &mut Vec<u32>) {
        let mut after_markup = true;
        let mut raw_start = 0;
        if let Some(markup) = &self.markup {
            for m in markup.find_iter(text) {
                if m.start() > raw_start {
                    self.encode_raw(&text[raw_start..m.start()], after_markup, out);
                }
                out.push(self.markup_ids[m.pattern().as_usize()]);
                after_markup = true;
                raw_start = m.end();
            }
        }
        if raw_start < text.len() {
            self.encode_raw(&text[raw_start..], after_markup, out);
        }
    }

    /// One stretch of plain text: merged by score, then looked up or spelled in bytes.
    fn encode_raw(&self, text: &str, after_markup: bool, out: &mut Vec<u32>) {
        let mut escaped = String::with_capacity(text.len() + 3);
        if self.add_space_prefix && after_markup {
            escaped.push(SPACE);
        }
        escaped.extend(text.chars().map(|c| if c == ' ' { SPACE } else { c }));
        let text = escaped.as_str();

        let mut symbols: Vec<Symbol> = text
            .char_indices()
            .map(|(start, c)| Symbol {
                start,
                len: c.len_utf8(),
                prev: None,
                next: None,
            })
            .collect();
        let n = symbols.len();
        for (i, s) in symbols.iter_mut().enumerate() {
            s.prev = i.checked_sub(1);
            s.next = (i + 1 < n).then_some(i + 1);
        }
        let mut queue = BinaryHeap::new();
        for i in 1..n {
            self.push_pair(text, &symbols, i - 1, i, &mut queue);
        }
        while let Some(pair) = queue.pop() {
            let (left, right) = (&symbols[pair.left], &symbols[pair.right]);
            // A pair whose sides have merged with something else since is stale.
            if left.len == 0 || right.len == 0 || left.len + right.len != pair.len {
                continue;
            }
            let right_next = right.next;
            symbols[pair.left].len += symbols[pair.right].len;
            symbols[pair.right].len = 0;
            symbols[pair.left].next = right_next;
            if let Some(next) = right_next {
                symbols[next].prev = Some(pair.left);
            }
            if let Some(prev) = symbols[pair.left].prev {
                self.push_pair(text, &symbols, prev, pair.left, &mut queue);
            }
            if let Some(next) = right_next {
                self.push_pair(text, &symbols, pair.left, next, &mut queue);
            }
        }
        let mut at = (n > 0).then_some(0);
        while let Some(i) = at {
            let s = &symbols[i];
            let piece = &text[s.start..s.start + s.len];
            match self.ids.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for b in piece.bytes() {
                        out.extend(self.byte_tokens[b as usize].or(self.unknown));
                    }
                }
            }
            at = s.next;
        }
    }

    /// Queues the merge of two neighbouring symbols if their joined text is a token.
    fn push_pair(
        &self,
        text: &str,
        symbols: &[Symbol],
        left: usize,
        right: usize,
        queue: &mut BinaryHeap<Pair>,
    ) {
        let (l, r) = (&symbols[left], &symbols[right]);
        let len = l.len + r.len;
        if let Some(&id) = self.ids.get(&text[l.start..l.start + len]) {
            queue.push(Pair {
                score: self.scores[id as usize],
                left,
                right,
                len,
            });
        }
    }
}

/// A piece of the text being merged; `len == 0` once merged into its left neighbour.
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge: the best score first, the leftmost among equals.
struct Pair {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl Ord for Pair {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then(other.left.cmp(&self.left))
    }
}

impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Pair {}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Spm {
        let vocab = [
            ("<unk>", 0.0, TYPE_UNKNOWN),
            ("<0x21>", 0.0, TYPE_BYTE),
            ("<0xC3>", 0.0, TYPE_BYTE),
            ("<0xA9>", 0.0, TYPE_BYTE),
            ("<start_of_turn>", 0.0, TYPE_CONTROL),
            ("\n\n", 0.0, TYPE_USER_DEFINED),
            ("a", -1.0, 1),
            ("b", -1.0, 1),
            ("c", -1.0, 1),
            ("▁", -1.0, 1),
            ("ab", -2.0, 1),
            ("bc", -1.5, 1),
            ("abc", -3.0, 1),
            ("▁a", -0.5, 1),
        ];
        let tokens: Vec<String> = vocab.iter().map(|v| v.0.to_owned()).collect();
        let scores = vocab.iter().map(|v| v.1).collect();
        let types: Vec<i64> = vocab.iter().map(|v| v.2).collect();
        Spm::new(&tokens, scores, &types, Some(0), false).expect("tiny vocabulary")
    }

    fn ids(spm: &Spm, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        spm.encode(text, &mut out);
        out
    }

    #[test]
    fn merges_best_score_first_and_spells_unknown_characters_in_bytes() {
        let spm = tiny();
        // "bc" (−1.5) merges before "ab" (−2), then "a" + "bc" makes "abc".
        assert_eq!(ids(&spm, "abc"), vec![12]);
        assert_eq!(ids(&spm, "bca"), vec![11, 6]);
        assert_eq!(ids(&spm, "ab"), vec![10]);
        assert_eq!(ids(&spm, " a"), vec![13]);
        // "é" is not a piece: its two UTF-8 bytes; "!" has a byte token.
        assert_eq!(ids(&spm, "é!"), vec![2, 3, 1]);
        // A character with neither a piece nor byte tokens is unknown.
        assert_eq!(ids(&spm, "z"), vec![0]);
    }

    #[test]
    fn markup_is_cut_out_before_merging() {
        let spm = tiny();
        assert_eq!(ids(&spm, "a<start_of_turn>b\n\nc"), vec![6, 4, 7, 5, 8]);
    }

    #[test]
    fn decoding_restores_spaces_and_bytes() {
        assert_eq!(token_bytes("▁a▁b", 1), b" a b".to_vec());
        assert_eq!(token_bytes("<0x0A>", TYPE_BYTE), vec![b'\n']);
        assert_eq!(token_bytes("<0x0A>", 1), b"<0x0A>".to_vec());
    }
}
