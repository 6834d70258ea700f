//! The smallest app: open the default model and stream a chat answer.
//!
//! Run with `cargo run --release --example complete -- "What is the capital of Japan?"`.

use std::io::Write;

use engram::{ChatMessage, Engine, EngineOptions, GenerateOptions};

fn main() -> Result<(), engram::Error> {
    let question = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "What is the capital of Japan?".into());
    let model = std::env::var("ENGRAM_MODEL")
        .unwrap_or_else(|_| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let engine = Engine::open(&model, &EngineOptions::default())?;
    let answer = engine.chat(
        &[ChatMessage::new("user", question)],
        &GenerateOptions::default(),
        |piece| {
            print!("{piece}");
            let _ = std::io::stdout().flush();
            true
        },
    )?;
    println!();
    eprintln!("[{} tokens, stop: {:?}]", answer.tokens.len(), answer.stop);
    Ok(())
}
