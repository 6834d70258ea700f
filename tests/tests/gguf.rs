//! The GGUF reader and writer: round trips, a tiny model end to end, and hostile files.

use engram::backend::cpu::CpuBackend;
use engram::gguf::{Gguf, GgufWriter, Value, ValueType};
use engram::model::{Logits, Model};
use engram::quant::GgmlType;
use engram::{Error, Tokenizer};
use engram_e2e::{noise, tiny_llama_gguf};

#[test]
fn writer_round_trips_every_value_type_and_tensor() {
    let mut w = GgufWriter::new();
    let values = vec![
        ("u8", Value::U8(7)),
        ("i8", Value::I8(-7)),
        ("u16", Value::U16(65535)),
        ("i16", Value::I16(-300)),
        ("u32", Value::U32(1 << 31)),
        ("i32", Value::I32(-1 << 30)),
        ("f32", Value::F32(3.5)),
        ("bool", Value::Bool(true)),
        ("string", Value::String("héllo\n".into())),
        ("u64", Value::U64(u64::MAX)),
        ("i64", Value::I64(i64::MIN)),
        ("f64", Value::F64(-2.25)),
        (
            "array",
            Value::Array(
                ValueType::String,
                vec![Value::String("a".into()), Value::String("".into())],
            ),
        ),
        (
            "nested",
            Value::Array(
                ValueType::Array,
                vec![Value::Array(
                    ValueType::U8,
                    vec![Value::U8(1), Value::U8(2)],
                )],
            ),
        ),
        ("empty", Value::Array(ValueType::F32, vec![])),
    ];
    for (k, v) in &values {
        w.set(*k, v.clone());
    }
    let a = noise(3 * 64, 1, 1.0);
    w.add_f32("a", &[64, 3], &a).unwrap();
    let q = engram::quant::quantize_row(GgmlType::Q4_K, &noise(256, 2, 1.0));
    w.add_tensor("q", GgmlType::Q4_K, &[256], q.clone())
        .unwrap();
    let g = Gguf::from_bytes(w.to_bytes()).unwrap();
    assert_eq!(g.version(), 3);
    for (k, v) in &values {
        assert_eq!(g.get(k), Some(v), "metadata {k}");
    }
    let ta = g.tensor("a").unwrap();
    assert_eq!(ta.dims, vec![64, 3]);
    let back: Vec<f32> = g
        .tensor_data(ta)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(back, a);
    assert_eq!(g.tensor_data(g.tensor("q").unwrap()), &q[..]);
    assert!(
        g.tensors().iter().all(|t| t.offset % g.alignment() == 0),
        "tensor offsets are aligned"
    );
    // Writing what was read gives the same bytes.
    let mut w2 = GgufWriter::new();
    for (k, v) in g.metadata() {
        w2.set(k.clone(), v.clone());
    }
    for t in g.tensors() {
        w2.add_tensor(t.name.clone(), t.dtype, &t.dims, g.tensor_data(t).to_vec())
            .unwrap();
    }
    assert_eq!(w2.to_bytes(), w.to_bytes());
}

/// A borrowed f32 tensor is written byte for byte as a copied one.
#[test]
fn borrowed_f32_tensors_write_the_same_bytes_as_copied_ones() {
    let values = noise(5 * 32, 3, 2.0);
    let mut copied = GgufWriter::new();
    copied.add_f32("v", &[32, 5], &values).unwrap();
    let mut borrowed = GgufWriter::new();
    borrowed.add_f32_borrowed("v", &[32, 5], &values).unwrap();
    assert_eq!(borrowed.to_bytes(), copied.to_bytes());
    let err = borrowed
        .add_f32_borrowed("w", &[32, 4], &values)
        .err()
        .expect("5 rows of values for 4");
    assert!(err.to_string().contains("tensor w"), "{err}");
}

/// A mapped f32 tensor larger than one copy piece (16 MiB) reads back exactly, and again after
/// its pages were handed back to the kernel: the release must not change what is read.
#[test]
fn large_mapped_f32_tensors_read_back_exactly_after_their_pages_are_released() {
    let n = 5 << 20; // 20 MiB of f32, with a tensor before it so the offset is not a page start
    let big: Vec<f32> = (0..n).map(|i| (i as f32 * 0.001).sin()).collect();
    let mut w = GgufWriter::new();
    w.add_f32("small", &[3], &[1.0, 2.0, 3.0]).unwrap();
    w.add_f32("big", &[1024, (n / 1024) as u64], &big).unwrap();
    let path = engram_e2e::scratch_dir("gguf").join("f32.gguf");
    w.write_atomic(&path).unwrap();
    let g = Gguf::open(&path).unwrap();
    let t = g.tensor("big").unwrap().clone();
    for pass in 0..2 {
        assert!(g.tensor_f32(&t) == big, "pass {pass}: values differ");
    }
    let raw: Vec<f32> = g
        .tensor_data(&t)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert!(raw == big, "the mapped bytes changed after the release");
    assert_eq!(
        g.tensor_f32(g.tensor("small").unwrap()),
        vec![1.0, 2.0, 3.0]
    );
    drop(g);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn writer_refuses_inconsistent_tensors() {
    let mut w = GgufWriter::new();
    assert!(
        w.add_tensor("x", GgmlType::Q4_0, &[30], vec![0; 18])
            .is_err(),
        "row not whole blocks"
    );
    assert!(
        w.add_tensor("x", GgmlType::F32, &[4], vec![0; 15]).is_err(),
        "wrong byte count"
    );
    assert!(
        w.add_tensor("x", GgmlType::F32, &[0], vec![]).is_err(),
        "zero dimension"
    );
    w.add_f32("x", &[1], &[1.0]).unwrap();
    assert!(w.add_f32("x", &[1], &[1.0]).is_err(), "duplicate name");
}

#[test]
fn tiny_model_runs_and_caches_consistently() {
    let g = Gguf::from_bytes(tiny_llama_gguf(1)).unwrap();
    let model = Model::load(&g, CpuBackend::new(1).unwrap()).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    let ids = tok.encode("hi there<|im_end|>", false).unwrap();
    assert_eq!(ids.last(), Some(&257), "special token recognized");
    let vocab = model.config.vocab_size;
    let mut cache = model.new_cache(32);
    let all = model.forward(&ids, &mut cache, Logits::All).unwrap();
    assert!(all.iter().all(|v| v.is_finite()));
    // Token-by-token decoding through the KV cache gives the batched logits.
    let mut cache = model.new_cache(32);
    for (i, t) in ids.iter().enumerate() {
        let one = model.forward(&[*t], &mut cache, Logits::Last).unwrap();
        let batched = &all[i * vocab..(i + 1) * vocab];
        let diff = one
            .iter()
            .zip(batched)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            diff < 1e-3,
            "position {i}: incremental vs batched differ by {diff}"
        );
    }
}

#[test]
fn hostile_headers_name_the_field() {
    let valid = tiny_llama_gguf(4);
    let expect = |bytes: Vec<u8>, field: &str| match Gguf::from_bytes(bytes) {
        Err(Error::Gguf { field: f, .. }) => {
            assert!(f.contains(field), "error names {f:?}, expected {field:?}")
        }
        Err(e) => panic!("expected a GGUF error naming {field}, got {e}"),
        Ok(_) => panic!("expected a GGUF error naming {field}"),
    };
    let mut b = valid.clone();
    b[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
    expect(b, "tensor_count");
    let mut b = valid.clone();
    b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    expect(b, "metadata_kv_count");
    let mut b = valid.clone();
    b[0] = b'X';
    expect(b, "magic");
    let mut b = valid.clone();
    b[4] = 9;
    expect(b, "version");
    expect(valid[..valid.len() - 100].to_vec(), "");
    expect(valid[..10].to_vec(), "tensor_count");
}
