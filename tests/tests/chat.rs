//! The chat path a user sees first: what the template is given without a system message,
//! replies that stop instead of looping, and a conversation that stays inside its context.

use engram::{
    ChatMessage, Conversation, Engine, EngineOptions, GenerateOptions, SamplingConfig, StopReason,
    SystemPrompt,
};
use engram_e2e::default_model;

fn open(system_prompt: SystemPrompt) -> Engine {
    Engine::open(
        default_model(),
        &EngineOptions {
            system_prompt,
            ..Default::default()
        },
    )
    .expect("the default model opens")
}

fn render(engine: &Engine, messages: &[ChatMessage]) -> String {
    engine
        .tokenizer()
        .apply_chat_template(messages, true)
        .expect("the template renders")
}

#[test]
fn the_system_prompt_policy_decides_what_the_template_gets() {
    let user = [ChatMessage::new("user", "What is the capital of Italy?")];
    let default = render(&open(SystemPrompt::TemplateDefault), &user);
    assert!(
        default.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"),
        "{default:?}"
    );
    // No system turn at all: exactly the user turn and the assistant's opening.
    let none = render(&open(SystemPrompt::None), &user);
    assert_eq!(
        none,
        "<|im_start|>user\nWhat is the capital of Italy?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert!(
        default.ends_with(&none),
        "the rest of the prompt is unchanged"
    );
    let ours = render(&open(SystemPrompt::Text("Answer briefly.".into())), &user);
    assert_eq!(
        ours,
        format!("<|im_start|>system\nAnswer briefly.<|im_end|>\n{none}")
    );
    // A conversation's own system message wins over every policy.
    let own = [
        ChatMessage::new("system", "Be terse."),
        ChatMessage::new("user", "What is the capital of Italy?"),
    ];
    assert_eq!(
        render(&open(SystemPrompt::None), &own),
        render(&open(SystemPrompt::TemplateDefault), &own)
    );
    assert_eq!("none".parse::<SystemPrompt>().unwrap(), SystemPrompt::None);
    assert_eq!(
        "default".parse::<SystemPrompt>().unwrap(),
        SystemPrompt::TemplateDefault
    );
}

#[test]
fn a_template_without_a_default_line_renders_the_same_under_none() {
    // A template that adds no system line of its own and starts with the BOS token.
    let template = "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
    let dir = engram_e2e::scratch_dir("chat");
    let path = dir.join("tiny.gguf");
    std::fs::write(&path, engram_e2e::tiny_chat_llama_gguf(3, template)).unwrap();
    let open = |system_prompt| {
        Engine::open(
            &path,
            &EngineOptions {
                system_prompt,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let user = [ChatMessage::new("user", "hi")];
    let plain = render(&open(SystemPrompt::TemplateDefault), &user);
    assert_eq!(render(&open(SystemPrompt::None), &user), plain);
    assert!(!plain.contains("<system>"), "{plain:?}");
}

/// The largest number of times one run of `n` tokens appears in `tokens`.
fn most_repeated_run(tokens: &[u32], n: usize) -> usize {
    let mut counts = std::collections::HashMap::new();
    for w in tokens.windows(n) {
        *counts.entry(w.to_vec()).or_insert(0usize) += 1;
    }
    counts.into_values().max().unwrap_or(0)
}

const PLAIN_QUESTIONS: [&str; 8] = [
    "What is the capital of Italy?",
    "What is the capital of France?",
    "Who wrote Romeo and Juliet?",
    "How many legs does a spider have?",
    "What color is the sky on a clear day?",
    "What is the largest planet in the solar system?",
    "What language is spoken in Brazil?",
    "Name a fruit that is yellow.",
];

#[test]
fn replies_under_the_chat_defaults_never_go_round_in_a_loop() {
    let guard = GenerateOptions::default()
        .loop_guard
        .expect("the loop guard is on by default");
    // Under the template's default line the default model answers some of these with a loop
    // until the token limit when nothing stops it (the case this guard exists for); which
    // ones moves with the kernels' rounding, so at least one must.
    let engine = open(SystemPrompt::TemplateDefault);
    let unguarded = GenerateOptions {
        max_tokens: 96,
        loop_guard: None,
        ..Default::default()
    };
    let replies: Vec<_> = PLAIN_QUESTIONS
        .iter()
        .map(|q| {
            engine
                .chat(&[ChatMessage::new("user", *q)], &unguarded, |_| true)
                .unwrap()
        })
        .collect();
    assert!(
        replies
            .iter()
            .any(|r| most_repeated_run(&r.tokens, guard.ngram) > guard.max_repeats),
        "expected an unguarded greedy reply to loop: {:?}",
        replies.iter().map(|r| &r.text).collect::<Vec<_>>()
    );
    for policy in [SystemPrompt::TemplateDefault, SystemPrompt::None] {
        let engine = open(policy.clone());
        for (i, q) in PLAIN_QUESTIONS.iter().enumerate() {
            for sampling in [
                SamplingConfig::greedy(),
                SamplingConfig {
                    seed: i as u64,
                    ..SamplingConfig::chat()
                },
            ] {
                let options = GenerateOptions {
                    max_tokens: 96,
                    sampling,
                    ..Default::default()
                };
                let g = engine
                    .chat(&[ChatMessage::new("user", *q)], &options, |_| true)
                    .unwrap();
                let most = most_repeated_run(&g.tokens, guard.ngram);
                assert!(
                    most <= guard.max_repeats,
                    "{policy:?} {q:?}: a {}-token run {most} times in {:?}",
                    guard.ngram,
                    g.text
                );
                assert!(
                    !g.text.contains("<|im_") && !g.text.contains("<|endoftext|>"),
                    "special-token markup in the reply: {:?}",
                    g.text
                );
            }
        }
    }
}

#[test]
fn a_long_conversation_drops_its_oldest_turns_to_fit_the_context() {
    let engine = Engine::open(
        default_model(),
        &EngineOptions {
            context: 160,
            ..Default::default()
        },
    )
    .unwrap();
    let mut chat = Conversation::new(&engine);
    let options = GenerateOptions {
        max_tokens: 24,
        ..Default::default()
    };
    let mut dropped = 0;
    for q in PLAIN_QUESTIONS {
        let reply = chat.say(q, &options, |_| true).unwrap();
        assert_ne!(reply.generation.stop, StopReason::ContextFull, "{q}");
        assert!(reply.generation.prompt_tokens + options.max_tokens <= engine.context());
        dropped += reply.dropped_turns;
    }
    assert!(dropped > 0, "eight turns should not fit 160 tokens");
    assert_eq!(chat.turns() + dropped, PLAIN_QUESTIONS.len());
    chat.reset();
    assert_eq!(chat.turns(), 0);
}

/// A GGUF without a chat template (Gemma 3 270M, a pretrained base model) is asked in plain
/// `Q:` / `A:` lines: the reply ends at its line's end, knows the answer and carries none of
/// the format's text; a system message is a paragraph before the first question.
#[test]
fn a_model_without_a_template_is_asked_in_plain_lines() {
    let engine = Engine::open(engram_e2e::gemma3_model(), &EngineOptions::default()).unwrap();
    let tok = engine.tokenizer();
    assert_eq!(tok.turn_end(), Some("\n"));
    let user = [ChatMessage::new("user", "What is the capital of France?")];
    assert_eq!(
        render(&engine, &user),
        "Q: What is the capital of France?\nA:"
    );
    let with_system = [
        ChatMessage::new("system", "Answer briefly."),
        ChatMessage::new("user", "Hi?"),
        ChatMessage::new("assistant", "Hello."),
        ChatMessage::new("user", "And now?"),
    ];
    assert_eq!(
        render(&engine, &with_system),
        "Answer briefly.\n\nQ: Hi?\nA: Hello.\nQ: And now?\nA:"
    );
    let g = engine
        .chat(&user, &GenerateOptions::default(), |_| true)
        .unwrap();
    assert_eq!(g.stop, StopReason::EndOfText, "{:?}", g.text);
    assert!(g.text.contains("Paris"), "{:?}", g.text);
    assert!(
        !g.text.contains('\n') && !g.text.contains("Q:"),
        "{:?}",
        g.text
    );
    // Raw completion goes on past the line's end (the model's next line is another question).
    let raw = engine
        .generate(
            "Q: What is the capital of France?\nA:",
            &GenerateOptions {
                max_tokens: 24,
                ..Default::default()
            },
            |_| true,
        )
        .unwrap();
    assert!(raw.text.trim_start().contains('\n'), "{:?}", raw.text);
}

/// Abstention needs a routing read gate to say what was recalled: without a memory the chat
/// lets the model answer even a question about the user.
#[test]
fn without_a_routing_gate_a_chat_never_abstains() {
    let engine = Engine::open(default_model(), &EngineOptions::default()).unwrap();
    let mut chat = Conversation::new(&engine);
    chat.set_abstention(Some(engram::DEFAULT_ABSTENTION.to_owned()));
    let options = GenerateOptions {
        max_tokens: 4,
        ..Default::default()
    };
    let reply = chat
        .say("What is my cat called?", &options, |_| true)
        .unwrap();
    assert!(!reply.abstained);
    assert_ne!(reply.generation.text, engram::DEFAULT_ABSTENTION);
}
