//! `engram info`: what a model file holds.

use std::path::Path;

use engram::Tokenizer;
use engram::delta::MemoryStore;
use engram::gguf::Gguf;
use engram::model::{ModelConfig, tensor_type_counts};

/// Prints what a memory store holds: config, provenance and background slot usage.
fn print_memory(path: &Path, gguf: &Gguf) -> engram::Result<()> {
    let store = MemoryStore::from_gguf(gguf)?;
    let c = &store.config;
    println!(
        "file          {} ({:.1} MB, engram memory store v{})",
        path.display(),
        gguf.file_len() as f64 / 1e6,
        gguf.get_u64("engram.format_version")?
    );
    println!("base model    fingerprint {}", store.base_fingerprint);
    println!("init          fingerprint {}", store.init_fingerprint);
    for (k, v) in &store.info {
        println!("  {k:<18}{v}");
    }
    println!("layers        {:?}", c.layers);
    println!(
        "slots         {} ({} sub-keys per half), values {} wide (f32)",
        c.slots(),
        c.n_keys,
        store.dim
    );
    println!(
        "lookup        {} heads, top-k {}, k_dim {}, {}",
        c.heads,
        c.top_k,
        c.k_dim,
        if c.gated {
            "gated output W2 (y ⊙ silu(W1 x))"
        } else {
            "plain output y"
        }
    );
    let b = &store.background;
    println!(
        "background    {} tokens in {} batches of {}",
        b.tokens, b.batches, b.batch_tokens
    );
    for (layer, u) in store.layers.iter().zip(store.usage()) {
        let nonzero = layer.values.iter().filter(|&&v| v != 0.0).count();
        let rows = layer
            .values
            .chunks_exact(store.dim)
            .filter(|r| r.iter().any(|&v| v != 0.0))
            .count();
        println!("layer {:<7} slot usage over the background:", layer.layer);
        println!(
            "  touched     {} of {} ({:.1}%)",
            u.touched,
            u.slots,
            100.0 * u.touched_fraction()
        );
        println!(
            "  entropy     {:.3} nats ({:.3} of the maximum)",
            u.entropy, u.normalized_entropy
        );
        println!(
            "  busiest 1%  take {:.2}% of {} accesses (busiest slot {})",
            100.0 * u.busiest_1pct_share,
            u.accesses,
            u.max_count
        );
        println!("  values      {rows} rows hold learned values ({nonzero} non-zero numbers)");
    }
    Ok(())
}

/// Prints architecture, sizes, tensor types and tokenizer facts (or a memory store's summary).
pub fn print(path: &Path, gguf: &Gguf) -> engram::Result<()> {
    if gguf.get("engram.kind").is_some() {
        return print_memory(path, gguf);
    }
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
    if let Some(w) = c.sliding_window {
        println!(
            "attention     sliding window {w} (RoPE base {}); every {}th layer global",
            c.local_rope.base, c.global_every
        );
    }
    let mut hooks = vec![format!("{:?} gate", c.activation)];
    for (on, what) in [
        (c.qk_norm, "q/k norms"),
        (c.post_norms, "post-norms"),
        (c.qkv_bias, "q/k/v biases"),
        (c.fused_qkv, "stacked q/k/v"),
        (c.fused_gate_up, "stacked gate/up"),
    ] {
        if on {
            hooks.push(what.to_owned());
        }
    }
    if let Some(s) = c.embedding_scale {
        hooks.push(format!("embeddings ×{s:.2}"));
    }
    println!("graph         {}", hooks.join(", "));
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
        "tokenizer     {}, pre-tokenizer {:?}, {} tokens",
        tok.kind(),
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
        if tok.turn_end().is_none() {
            "template in file"
        } else {
            "no template in file: plain \"Q: …\" / \"A: …\" lines"
        }
    );
    Ok(())
}

/// Prints the compute devices: the CPU, every CUDA device and every wgpu adapter, with what
/// `--device` picks.
pub fn print_devices() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("cpu       host CPU, {cores} threads   (--device cpu)");
    print_cuda_devices();
    let adapters = engram::backend::wgpu::adapters();
    if adapters.is_empty() {
        println!("wgpu      no adapter (no Vulkan, Metal or DX12 driver found)");
    }
    for a in &adapters {
        println!(
            "wgpu:{}    {} — {} {}, driver {}, storage binding ≤ {} MiB{}",
            a.index,
            a.name,
            a.kind,
            a.api,
            if a.driver.is_empty() { "?" } else { &a.driver },
            a.max_binding >> 20,
            if a.is_gpu { "" } else { " (software)" }
        );
    }
    let auto = adapters
        .iter()
        .filter(|a| a.is_gpu)
        .min_by_key(|a| (a.kind != "DiscreteGpu", a.index));
    match auto {
        Some(a) => println!("auto      → wgpu:{} ({})", a.index, a.name),
        None => println!("auto      → cpu (no discrete or integrated GPU)"),
    }
}

/// The CUDA devices, or why there are none, and whether NVRTC can compile the kernels.
fn print_cuda_devices() {
    #[cfg(any(target_os = "linux", target_os = "windows"))]
    {
        use engram::backend::cuda;
        match cuda::devices() {
            Err(e) => println!(
                "cuda      {}",
                e.to_string().trim_start_matches("unsupported: ")
            ),
            Ok(devices) if devices.is_empty() => println!("cuda      driver present, no device"),
            Ok(devices) => {
                for d in devices {
                    println!(
                        "cuda:{}    {} — {} MiB, {:.0} GB/s, compute capability {}.{}{}",
                        d.index,
                        d.name,
                        d.memory_bytes >> 20,
                        d.memory_bandwidth_bytes_per_s as f64 / 1e9,
                        d.compute_capability.0,
                        d.compute_capability.1,
                        if engram::backend::CUDA_VERIFIED {
                            ""
                        } else {
                            " (--device cuda only: not yet verified on a GPU)"
                        }
                    );
                }
                if !cuda::nvrtc_present() {
                    println!("          NVRTC (libnvrtc.so.12) not found: it compiles the kernels");
                }
            }
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "windows")))]
    println!("cuda      none on this platform");
}
