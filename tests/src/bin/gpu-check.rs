//! `gpu-check`: the parts of `scripts/gpu-check` that need engram's insides.
//!
//! A machine lent with an NVIDIA GPU has no Rust toolchain, no network and no room for the
//! model file in what can be carried to it, so the benchmark model is rebuilt there: here,
//! `skeleton` keeps the default model's metadata (tokenizer, chat template, shapes) and its
//! tensor list without the weights; there, `random-model` writes random weights of exactly
//! those names, formats and shapes. Speed depends on shapes and formats, not on the values.
//!
//! usage:
//!   gpu-check skeleton MODEL OUT        metadata and tensor list of MODEL (a few MB)
//!   gpu-check random-model SKELETON OUT  a model of SKELETON's shapes with random weights
//!   gpu-check devices                    the CUDA devices as JSON (bandwidth included)

use engram::gguf::{Gguf, GgufWriter, Value, ValueType};
use engram::quant::{GgmlType, quantize_row};
use engram_e2e::noise;

/// Metadata keys the skeleton adds: the tensors' names, type ids and dimensions.
const NAMES: &str = "engram.skeleton.tensor_names";
const TYPES: &str = "engram.skeleton.tensor_types";
const DIMS: &str = "engram.skeleton.tensor_dims";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["skeleton", model, out] => skeleton(model, out),
        ["random-model", skeleton, out] => random_model(skeleton, out),
        ["devices"] => devices(),
        _ => {
            Err("usage: gpu-check skeleton MODEL OUT | random-model SKELETON OUT | devices".into())
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Writes MODEL's metadata and tensor list, without the tensors, to OUT.
fn skeleton(model: &str, out: &str) -> Result<(), String> {
    let file = Gguf::open(model).map_err(|e| e.to_string())?;
    let mut w = GgufWriter::new();
    for (key, value) in file.metadata() {
        w.set(key.clone(), value.clone());
    }
    let tensors = file.tensors();
    let strings = |f: &dyn Fn(&engram::gguf::TensorInfo) -> String| {
        Value::Array(
            ValueType::String,
            tensors.iter().map(|t| Value::String(f(t))).collect(),
        )
    };
    w.set(NAMES, strings(&|t| t.name.clone()));
    w.set(
        DIMS,
        strings(&|t| {
            t.dims
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        }),
    );
    w.set(
        TYPES,
        Value::Array(
            ValueType::U32,
            tensors.iter().map(|t| Value::U32(t.dtype.id())).collect(),
        ),
    );
    w.write_atomic(out).map_err(|e| e.to_string())?;
    eprintln!("{out}: {} tensors of {model}", tensors.len());
    Ok(())
}

/// Writes a model with SKELETON's metadata and random weights of its tensors' shapes to OUT.
fn random_model(skeleton: &str, out: &str) -> Result<(), String> {
    let file = Gguf::open(skeleton).map_err(|e| e.to_string())?;
    let array = |key: &str| match file.get(key) {
        Some(Value::Array(_, items)) => Ok(items.clone()),
        _ => Err(format!(
            "{skeleton}: no {key} (not written by `gpu-check skeleton`)"
        )),
    };
    let (names, types, dims) = (array(NAMES)?, array(TYPES)?, array(DIMS)?);
    let mut w = GgufWriter::new();
    for (key, value) in file.metadata() {
        if !key.starts_with("engram.skeleton.") {
            w.set(key.clone(), value.clone());
        }
    }
    for (i, ((name, dtype), dims)) in names.iter().zip(&types).zip(&dims).enumerate() {
        let (Value::String(name), Value::U32(dtype), Value::String(dims)) = (name, dtype, dims)
        else {
            return Err(format!("{skeleton}: tensor entry {i} is malformed"));
        };
        let dtype = GgmlType::from_id(*dtype).map_err(|e| e.to_string())?;
        let dims: Vec<u64> = dims
            .split(',')
            .map(|d| {
                d.parse()
                    .map_err(|_| format!("{skeleton}: bad dims {dims:?}"))
            })
            .collect::<Result<_, _>>()?;
        let cols = dims[0] as usize;
        let rows = dims[1..].iter().product::<u64>() as usize;
        // Norm weights near one, everything else small: activations stay in range over all
        // the layers, as a trained model's do.
        let is_norm = name.contains("norm");
        let values = noise(rows * cols, i as u64 + 1, if is_norm { 0.05 } else { 0.04 });
        let data: Vec<u8> = values
            .chunks_exact(cols)
            .flat_map(|row| {
                let row: Vec<f32> = row
                    .iter()
                    .map(|v| if is_norm { 1.0 + v } else { *v })
                    .collect();
                quantize_row(dtype, &row)
            })
            .collect();
        w.add_tensor(name.clone(), dtype, &dims, data)
            .map_err(|e| e.to_string())?;
    }
    w.write_atomic(out).map_err(|e| e.to_string())?;
    eprintln!(
        "{out}: {} random tensors in the shapes of {skeleton}",
        names.len()
    );
    Ok(())
}

/// Prints the CUDA devices as one JSON line, each with the memory bandwidth that bounds decode.
fn devices() -> Result<(), String> {
    let devices = engram::cuda_devices().map_err(|e| e.to_string())?;
    let list: Vec<serde_json::Value> = devices
        .iter()
        .map(|d| {
            serde_json::json!({
                "index": d.index,
                "name": d.name,
                "memory_mib": d.memory_bytes >> 20,
                "compute_capability": format!("{}.{}", d.compute_capability.0, d.compute_capability.1),
                "memory_bandwidth_gb_s": d.memory_bandwidth_bytes_per_s as f64 / 1e9,
            })
        })
        .collect();
    println!("{}", serde_json::Value::Array(list));
    Ok(())
}
