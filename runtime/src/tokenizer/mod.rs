//! The model's own tokenizer, built from GGUF metadata, and its chat template.

mod spm;

use std::collections::HashMap;

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer as HfTokenizer};

use crate::error::{Error, Result};
use crate::gguf::{Gguf, Value};

use spm::{Spm, TYPE_CONTROL, TYPE_UNKNOWN, TYPE_USER_DEFINED};

/// The GPT-2 split regex that most byte-level BPE vocabularies build on.
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// The Qwen 2 split regex: Llama 3's with digits one at a time.
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The Llama 3 split regex.
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The conversation format for GGUFs that carry no `tokenizer.chat_template` (pretrained base
/// models such as Gemma 3 270M): questions and answers as plain text lines, "Q: …" and
/// "A: …", a system message as a first paragraph; a reply ends at its line's end
/// ([`Tokenizer::turn_end`]). Asked 15 retention questions of each kind, Gemma 3 270M answered
/// 20 of 45 this way and 4 of 45 in Gemma's own turn markup (2026-12-06, docs/evaluation.md).
const PLAIN_TEMPLATE: &str = "{%- for m in messages -%}\
{%- if m['role'] == 'system' -%}{%- if m['content'] | trim -%}{{ (m['content'] | trim) ~ '\\n\\n' }}{%- endif -%}\
{%- elif m['role'] == 'user' -%}{{ 'Q: ' ~ (m['content'] | trim) ~ '\\n' }}\
{%- else -%}{{ 'A: ' ~ (m['content'] | trim) ~ '\\n' }}{%- endif -%}\
{%- endfor -%}{%- if add_generation_prompt -%}{{ 'A:' }}{%- endif -%}";

/// How text becomes ids: the two tokenizer families GGUF files use.
enum Encoder {
    /// Byte-level BPE with merges (`tokenizer.ggml.model = "gpt2"`).
    Bpe(Box<HfTokenizer>),
    /// SentencePiece-style score merging (`tokenizer.ggml.model = "llama"`).
    Spm(Spm),
}

/// Encodes text to token ids and back, as the GGUF's tokenizer defines it.
pub struct Tokenizer {
    inner: Encoder,
    /// Raw bytes each token id stands for (byte-level decoded), or its text for special tokens.
    token_bytes: Vec<Vec<u8>>,
    special: Vec<bool>,
    /// Beginning-of-sequence token, if the vocabulary has one.
    pub bos: Option<u32>,
    /// End-of-sequence token, if the vocabulary has one.
    pub eos: Option<u32>,
    /// Tokens that end a generation (end-of-text, end-of-turn).
    pub stop_tokens: Vec<u32>,
    /// Whether prompts should start with BOS (`tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
    /// The pre-tokenizer name from the GGUF (`tokenizer.ggml.pre`).
    pub pre: String,
    chat_template: Option<String>,
    /// Text that ends a reply where the template has no end-of-turn token.
    turn_end: Option<&'static str>,
    /// What a conversation without a system message is rendered with.
    system_prompt: SystemPrompt,
}

/// What the chat template is given when a conversation has no system message of its own.
/// Some templates (SmolLM2's, Qwen's) insert a default system line then; it changes answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SystemPrompt {
    /// Whatever the model's template does with no system message (its default line, if any).
    #[default]
    TemplateDefault,
    /// No system turn at all: a default line the template would insert is left out.
    None,
    /// This text as the system message.
    Text(String),
}

impl std::str::FromStr for SystemPrompt {
    type Err = std::convert::Infallible;
    /// `default` and `none` name the policies; any other text is the system message itself.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(match s {
            "default" => SystemPrompt::TemplateDefault,
            "none" => SystemPrompt::None,
            text => SystemPrompt::Text(text.to_owned()),
        })
    }
}

fn strings(gguf: &Gguf, key: &str) -> Result<Vec<String>> {
    let arr = gguf
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Tokenizer(format!("{key} is missing or not an array")))?;
    arr.iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| Error::Tokenizer(format!("{key} holds a non-string")))
        })
        .collect()
}

/// GPT-2's reversible map from bytes to printable characters: entry `b` is the character
/// byte-level BPE vocabularies use for byte `b`.
pub fn byte_level_alphabet() -> [char; 256] {
    let mut alphabet = ['\0'; 256];
    let mut extra = 0;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            b as u32
        } else {
            extra += 1;
            255 + extra
        };
        alphabet[b as usize] = char::from_u32(code).unwrap_or('?');
    }
    alphabet
}

fn unicode_to_byte() -> HashMap<char, u8> {
    byte_level_alphabet()
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect()
}

impl Tokenizer {
    /// Builds the tokenizer described by `tokenizer.ggml.*` metadata.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self> {
        let model = gguf
            .get_str("tokenizer.ggml.model")
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let pre = gguf
            .get_str("tokenizer.ggml.pre")
            .unwrap_or("default")
            .to_owned();
        let tokens = strings(gguf, "tokenizer.ggml.tokens")?;
        let types: Vec<i64> = match gguf
            .get("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
        {
            Some(a) => a.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(Error::Tokenizer(format!(
                "{} token types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let id = |key: &str| -> Option<u32> {
            gguf.get(key)
                .and_then(Value::as_u64)
                .filter(|&i| (i as usize) < tokens.len())
                .map(|i| i as u32)
        };
        let (inner, token_bytes, special) = match model {
            "gpt2" => bpe(gguf, &tokens, &types, &pre)?,
            "llama" => {
                let scores: Vec<f32> = gguf
                    .get("tokenizer.ggml.scores")
                    .and_then(Value::as_array)
                    .ok_or_else(|| Error::Tokenizer("tokenizer.ggml.scores is missing".into()))?
                    .iter()
                    .map(|v| v.as_f64().unwrap_or(0.0) as f32)
                    .collect();
                let add_space_prefix = !matches!(
                    gguf.get("tokenizer.ggml.add_space_prefix"),
                    Some(Value::Bool(false))
                );
                let unknown = id("tokenizer.ggml.unknown_token_id");
                let spm = Spm::new(&tokens, scores, &types, unknown, add_space_prefix)?;
                let token_bytes = tokens
                    .iter()
                    .zip(&types)
                    .map(|(t, &ty)| spm::token_bytes(t, ty))
                    .collect();
                // User-defined pieces (Gemma's runs of newlines) are text, not markup.
                let special = types
                    .iter()
                    .map(|&t| t == TYPE_CONTROL || t == TYPE_UNKNOWN)
                    .collect();
                (Encoder::Spm(spm), token_bytes, special)
            }
            other => {
                return Err(Error::Unsupported(format!(
                    "tokenizer model {other:?} (implemented: \"gpt2\" byte-level BPE, \"llama\" SentencePiece)"
                )));
            }
        };

        let bos = id("tokenizer.ggml.bos_token_id");
        let eos = id("tokenizer.ggml.eos_token_id");
        let eot = id("tokenizer.ggml.eot_token_id");
        let mut stop_tokens: Vec<u32> = eos.into_iter().chain(eot).collect();
        for name in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>"] {
            if let Some(&i) = tokens.iter().position(|t| t == name).as_ref()
                && special[i]
                && !stop_tokens.contains(&(i as u32))
            {
                stop_tokens.push(i as u32);
            }
        }
        let add_bos = matches!(
            gguf.get("tokenizer.ggml.add_bos_token"),
            Some(Value::Bool(true))
        );
        let own_template = gguf
            .get("tokenizer.chat_template")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let turn_end = own_template.is_none().then_some("\n");
        let chat_template = own_template.or_else(|| Some(PLAIN_TEMPLATE.to_owned()));
        Ok(Tokenizer {
            inner,
            token_bytes,
            special,
            bos,
            eos,
            stop_tokens,
            add_bos,
            pre,
            chat_template,
            turn_end,
            system_prompt: SystemPrompt::default(),
        })
    }

    /// The tokenizer family, in words.
    pub fn kind(&self) -> &'static str {
        match self.inner {
            Encoder::Bpe(_) => "byte-level BPE",
            Encoder::Spm(_) => "SentencePiece (score merges, byte fallback)",
        }
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// Token ids for `text`; special-token markup such as `<|im_start|>` is recognized.
    /// BOS is prepended when `add_bos` is set and the model asks for it.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos && self.add_bos {
            ids.extend(self.bos);
        }
        match &self.inner {
            Encoder::Bpe(bpe) => {
                let enc = bpe
                    .encode_fast(text, false)
                    .map_err(|e| Error::Tokenizer(e.to_string()))?;
                ids.extend_from_slice(enc.get_ids());
            }
            Encoder::Spm(spm) => spm.encode(text, &mut ids),
        }
        // A template that writes BOS itself must not get a second one.
        if ids.len() > 1 && ids[0] == ids[1] && add_bos && self.add_bos && self.bos == Some(ids[0])
        {
            ids.remove(0);
        }
        Ok(ids)
    }

    /// The raw bytes of one token (special tokens give their markup text).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// Whether `id` is a control / user-defined token.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// Text of a token sequence; invalid UTF-8 is replaced.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .filter(|&&id| !(skip_special && self.is_special(id)))
            .flat_map(|&id| self.token_bytes(id).iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The Jinja chat template conversations are rendered with: the GGUF's own, or engram's
    /// plain question-and-answer lines for a GGUF without one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Text that ends a reply when the template has no end-of-turn token (the plain format's
    /// line end); `None` for the GGUF's own template.
    pub fn turn_end(&self) -> Option<&str> {
        self.turn_end
    }

    /// The system-message policy for conversations that bring none.
    pub fn system_prompt(&self) -> &SystemPrompt {
        &self.system_prompt
    }

    /// Sets the system-message policy that [`Self::apply_chat_template`] follows (ask, chat
    /// and learning's phrasings all render through it, so they stay consistent).
    pub fn set_system_prompt(&mut self, policy: SystemPrompt) {
        self.system_prompt = policy;
    }

    /// Renders `messages` through the model's own chat template, ending with the assistant
    /// prompt when `add_generation_prompt` is set. Without a system message among them, the
    /// [`SystemPrompt`] policy decides what the template sees.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        if messages.first().is_some_and(|m| m.role == "system") {
            return self.render_template(messages, add_generation_prompt);
        }
        match &self.system_prompt {
            SystemPrompt::TemplateDefault => self.render_template(messages, add_generation_prompt),
            SystemPrompt::Text(text) => {
                let mut with = Vec::with_capacity(messages.len() + 1);
                with.push(ChatMessage::new("system", text));
                with.extend_from_slice(messages);
                self.render_template(&with, add_generation_prompt)
            }
            SystemPrompt::None => self.render_without_system(messages, add_generation_prompt),
        }
    }

    /// Renders `messages` with no system turn. The template is given an empty system message
    /// (so it inserts no default line of its own) and that empty turn is then cut out: its
    /// opening is what precedes the system text (found by rendering a marker there), its
    /// closing is what closes a user turn. A template where that cut cannot be found is
    /// rendered as it is, with no system message (never with a half-cut turn).
    fn render_without_system(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        const MARK: &str = "\u{E000}engram-system\u{E001}";
        const PROBE: &str = "\u{E002}engram-user\u{E003}";
        const BOS_MARK: &str = "\u{E004}engram-bos\u{E005}";
        let with_system = |text: &str, rest: &[ChatMessage], generation_prompt: bool| {
            let mut all = vec![ChatMessage::new("system", text)];
            all.extend_from_slice(rest);
            self.render_template(&all, generation_prompt)
        };
        let probe_user = [ChatMessage::new("user", PROBE)];
        let marked = with_system(MARK, &probe_user, false)?;
        let empty = with_system("", &probe_user, false)?;
        let cut = (|| {
            let open_len = marked.find(MARK)?;
            let opening = &marked[..open_len];
            let after_user = empty.find(PROBE)? + PROBE.len();
            let closing = &empty[after_user..];
            let turn = format!("{opening}{closing}");
            if closing.is_empty() || !empty.starts_with(&turn) {
                return None;
            }
            // A BOS token the template puts before the first turn stays: rendered with a
            // marker in its place, the opening shows whether the template writes it there.
            let mut system_first = vec![ChatMessage::new("system", MARK)];
            system_first.extend_from_slice(&probe_user);
            let with_marker = self.render(&system_first, false, Some(BOS_MARK)).ok()?;
            let lead = if with_marker.starts_with(BOS_MARK) {
                self.bos
                    .map(|b| self.decode(&[b], false))
                    .unwrap_or_default()
            } else {
                String::new()
            };
            if !opening.starts_with(&lead) {
                return None;
            }
            Some((turn, lead))
        })();
        let Some((turn, lead)) = cut else {
            return self.render_template(messages, add_generation_prompt);
        };
        let rendered = with_system("", messages, add_generation_prompt)?;
        match rendered.strip_prefix(turn.as_str()) {
            Some(rest) => Ok(format!("{lead}{rest}")),
            None => self.render_template(messages, add_generation_prompt),
        }
    }

    /// Renders `messages` through the template exactly as given.
    fn render_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.render(messages, add_generation_prompt, None)
    }

    /// Renders through the template, with `bos` as its `bos_token` when given.
    fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos: Option<&str>,
    ) -> Result<String> {
        let source = self
            .chat_template
            .as_deref()
            .ok_or_else(|| Error::Template("the model has no tokenizer.chat_template".into()))?;
        let mut env = minijinja::Environment::new();
        // A chat template is a program from the model file: bound its work and depth.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_recursion_limit(TEMPLATE_RECURSION);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", source)
            .map_err(|e| Error::Template(e.to_string()))?;
        let tmpl = env
            .get_template("chat")
            .map_err(|e| Error::Template(e.to_string()))?;
        let msgs: Vec<_> = messages
            .iter()
            .map(|m| minijinja::context! { role => m.role.as_str(), content => m.content.as_str() })
            .collect();
        let token = |id: Option<u32>| id.map(|i| self.decode(&[i], false)).unwrap_or_default();
        let mut out = CappedText::default();
        tmpl.render_captured_to(
            minijinja::context! {
                messages => msgs,
                add_generation_prompt => add_generation_prompt,
                bos_token => bos.map_or_else(|| token(self.bos), str::to_owned),
                eos_token => token(self.eos),
            },
            &mut out,
        )
        .map_err(|e| match out.overflowed {
            true => Error::Template(format!(
                "the rendered conversation passed {TEMPLATE_OUTPUT} bytes; the template is broken"
            )),
            false => Error::Template(e.to_string()),
        })?;
        String::from_utf8(out.bytes)
            .map_err(|_| Error::Template("the template rendered invalid UTF-8".into()))
    }
}

/// Instructions a chat template may run per rendering (a long conversation takes tens of
/// thousands).
const TEMPLATE_FUEL: u64 = 20_000_000;
/// Nesting depth of a chat template's calls, loops and includes.
const TEMPLATE_RECURSION: usize = 64;
/// Largest rendered conversation (far beyond any model's context).
const TEMPLATE_OUTPUT: usize = 16 << 20;

/// A rendering's output that refuses to grow past [`TEMPLATE_OUTPUT`] bytes.
#[derive(Default)]
struct CappedText {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for CappedText {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > TEMPLATE_OUTPUT {
            self.overflowed = true;
            return Err(std::io::Error::other("template output too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One turn of a conversation.
#[derive(Clone, Debug)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// What was said.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The byte-level BPE encoder, each token's bytes and which tokens are markup.
fn bpe(
    gguf: &Gguf,
    tokens: &[String],
    types: &[i64],
    pre: &str,
) -> Result<(Encoder, Vec<Vec<u8>>, Vec<bool>)> {
    let merges = strings(gguf, "tokenizer.ggml.merges")?;
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges: Vec<(String, String)> = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .ok_or_else(|| Error::Tokenizer(format!("merge {m:?} has no space")))
        })
        .collect::<Result<_>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    let mut inner = HfTokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(pre_tokenizer(pre)?));

    let special: Vec<bool> = types
        .iter()
        .map(|&t| t == TYPE_CONTROL || t == TYPE_USER_DEFINED)
        .collect();
    let added: Vec<AddedToken> = tokens
        .iter()
        .zip(&special)
        .filter(|(_, s)| **s)
        .map(|(t, _)| AddedToken::from(t.clone(), true).normalized(false))
        .collect();
    inner
        .add_special_tokens(added)
        .map_err(|e| Error::Tokenizer(e.to_string()))?;

    let to_byte = unicode_to_byte();
    let token_bytes = tokens
        .iter()
        .zip(&special)
        .map(|(t, &s)| {
            if s {
                t.as_bytes().to_vec()
            } else {
                // Byte-level tokens are strings over GPT-2's 256-character alphabet.
                t.chars()
                    .map(|c| to_byte.get(&c).copied().unwrap_or(b'?'))
                    .collect()
            }
        })
        .collect();
    Ok((Encoder::Bpe(Box::new(inner)), token_bytes, special))
}

/// llama.cpp's pre-tokenizer for each `tokenizer.ggml.pre` name engram supports.
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    let byte_level =
        |regex: bool| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, regex));
    let split = |re: &str| -> Result<PreTokenizerWrapper> {
        Split::new(
            SplitPattern::Regex(re.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map(PreTokenizerWrapper::Split)
        .map_err(|e| Error::Tokenizer(e.to_string()))
    };
    Ok(match pre {
        "default" | "gpt2" | "mpt" | "olmo" => byte_level(true),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                split(GPT2_REGEX)?,
                byte_level(false),
            ]))
        }
        "qwen2" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            split(QWEN2_REGEX)?,
            byte_level(false),
        ])),
        "llama3" | "llama-bpe" | "falcon3" | "pixtral" => {
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                split(LLAMA3_REGEX)?,
                byte_level(false),
            ]))
        }
        other => {
            return Err(Error::Unsupported(format!("pre-tokenizer {other:?}")));
        }
    })
}
