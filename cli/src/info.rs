//! `engram info`: what a model file holds.

use std::path::Path;

use engram::Tokenizer;
use engram::gguf::Gguf;
use engram::model::{ModelConfig, tensor_type_counts};

/// Prints architecture, sizes, tensor types and tokenizer facts.
pub fn print(path: &Path, gguf: &Gguf) -> engram::Result<()> {
    println!(
        "file          {} ({:.1} MB, GGUF v{})",
        path.display(),
        gguf.file_len() as f64 / 1e6,
        gguf.version()
    );
    let c = ModelConfig::from_gguf(gguf)?;
    println!("name          {}", c.name.as_deref().unwrap_or("-"));
    println!("architecture  {}", c.architecture);
    println!("layers        {}", c.n_layers);
    println!("dim           {}", c.dim);
    println!(
        "heads         {} (kv heads {}, head dim {})",
        c.n_heads, c.n_kv_heads, c.head_dim
    );
    println!("ffn dim       {}", c.ffn_dim);
    println!("vocab         {}", c.vocab_size);
    println!("context       {}", c.context_length);
    println!(
        "rope          base {} over {} dims ({:?})",
        c.rope.base, c.rope.dims, c.rope.layout
    );
    println!("norm eps      {:e}", c.norm_eps);
    println!(
        "embeddings    {}",
        if c.tied_embeddings {
            "tied (LM head = token_embd)"
        } else {
            "separate output.weight"
        }
    );
    let params: usize = gguf.tensors().iter().map(|t| t.n_elements()).sum();
    println!(
        "parameters    {:.1} M in {} tensors",
        params as f64 / 1e6,
        gguf.tensors().len()
    );
    for (dtype, count, bytes) in tensor_type_counts(gguf) {
        println!(
            "  {:<6} {:>4} tensors {:>8.1} MB",
            dtype.name(),
            count,
            bytes as f64 / 1e6
        );
    }
    let tok = Tokenizer::from_gguf(gguf)?;
    println!(
        "tokenizer     byte-level BPE, pre-tokenizer {:?}, {} tokens",
        tok.pre,
        tok.vocab_size()
    );
    let name = |id: Option<u32>| {
        id.map_or("-".to_string(), |i| {
            format!("{} {:?}", i, tok.decode(&[i], false))
        })
    };
    println!("  bos         {} (added: {})", name(tok.bos), tok.add_bos);
    println!("  eos         {}", name(tok.eos));
    let stops: Vec<String> = tok.stop_tokens.iter().map(|&i| name(Some(i))).collect();
    println!("  stop        {}", stops.join(", "));
    println!(
        "  chat        {}",
        if tok.chat_template().is_some() {
            "template in file"
        } else {
            "no template"
        }
    );
    Ok(())
}
