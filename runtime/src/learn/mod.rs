//! Learning: a fact becomes a small batch of phrasings, and sparse memory finetuning changes
//! only the value rows that batch uses far more than the background does.
//!
//! Rooms by job: [`facts`](Fact) and their files, phrasings, options and reports, the
//! optimizer, the learner itself, the background anchor, and the retrofit that fits a memory
//! layer into a model (it drives the model, so it sits here above it).

mod anchor;
mod facts;
mod learner;
mod linalg;
mod optimizer;
mod options;
mod phrasings;
mod questions;
mod retrofit;
mod statements;

pub use anchor::BackgroundAnchor;
pub use facts::Fact;
pub use learner::{
    Committed, KeyedFact, LearningState, MAX_KEPT_TOKENS, learn, rekey_read_gate, template_rows,
};
pub use optimizer::Optimizer;
pub use options::{
    ANCHOR_TUNED_READS_PER_ROW, DEFAULT_LEARNING_RATE, FactReport, LearnOptions, LearnReport,
    LearnTimings, MAX_ANCHORED_ROWS, ROUTED_RATE_ROWS, SubjectRows, TOPIC_GATE_LEARNING_RATE,
    TOPIC_GATE_TOP_T,
};
pub use phrasings::{
    Example, context_needles, examples, examples_with, personal_needles, speaker_tokens,
    topic_needles, update_examples, word_starts,
};
pub use retrofit::{Init, RetrofitOptions, RetrofitProgress, retrofit};
pub use statements::{TurnKind, asks_about_user, classify_turn, replaced_fact};
