// Reads weights stored in a ggml block format.
// Weights stay in the file's bytes (a u32 array); DTYPE is a constant prepended by the host:
// 0 F32, 1 F16, 2 BF16, 3 Q8_0, 4 Q4_0, 5 Q4_1, 6 Q4_K, 7 Q6_K, 8 Q5_0, 9 Q5_1, 10 Q2_K,
// 11 Q3_K, 12 Q5_K.

@group(0) @binding(1) var<storage, read> w: array<u32>;

fn byte_at(o: u32) -> u32 {
    return (w[o >> 2u] >> ((o & 3u) * 8u)) & 0xffu;
}

fn half_at(o: u32) -> u32 {
    return byte_at(o) | (byte_at(o + 1u) << 8u);
}

fn f16_at(o: u32) -> f32 {
    return unpack2x16float(half_at(o)).x;
}

// Four bytes starting at any 2-aligned byte offset (blocks of 18, 34 or 210 bytes are).
fn word_at(o: u32) -> u32 {
    let i = o >> 2u;
    let s = (o & 3u) * 8u;
    if s == 0u { return w[i]; }
    return (w[i] >> s) | (w[i + 1u] << (32u - s));
}

// One float-format weight element: F32, F16 or BF16.
fn float_at(rb: u32, c: u32) -> f32 {
    if DTYPE == 0u { return bitcast<f32>(w[(rb >> 2u) + c]); }
    let o = rb + 2u * c;
    let h = (w[o >> 2u] >> ((o & 2u) * 8u)) & 0xffffu;
    if DTYPE == 1u { return unpack2x16float(h).x; }
    return bitcast<f32>(h << 16u);
}

fn i8_of(b: u32) -> f32 {
    return f32(bitcast<i32>(b << 24u) >> 24u);
}

// Q4_K sub-block `s` of the super-block at byte `base`: (d·scale, dmin·min), from the 6-bit
// scales and mins packed in 12 bytes.
fn q4k_factors(base: u32, s: u32) -> vec2<f32> {
    let dm = unpack2x16float(w[base >> 2u]);
    let sc = base + 4u;
    var scale: u32;
    var mn: u32;
    if s < 4u {
        scale = byte_at(sc + s) & 63u;
        mn = byte_at(sc + s + 4u) & 63u;
    } else {
        scale = (byte_at(sc + s + 4u) & 15u) | ((byte_at(sc + s - 4u) >> 6u) << 4u);
        mn = (byte_at(sc + s + 4u) >> 4u) | ((byte_at(sc + s) >> 6u) << 4u);
    }
    return vec2<f32>(dm.x * f32(scale), dm.y * f32(mn));
}

// Q5_0 / Q5_1 block at byte `base`: (block bytes, offset of its 32 high bits).
fn q5_layout() -> vec2<u32> {
    if DTYPE == 8u { return vec2<u32>(22u, 2u); }
    return vec2<u32>(24u, 4u);
}

// Value of a 5-bit quant `q` of the Q5_0 / Q5_1 block at byte `base`.
fn q5_value(base: u32, q: vec4<f32>) -> vec4<f32> {
    if DTYPE == 8u { return f16_at(base) * (q - 16.0); }
    let dm = unpack2x16float(word_at(base));
    return dm.x * q + dm.y;
}

// Element `e` (0..256) of the Q2_K / Q3_K / Q5_K super-block at byte `base` (see more_k.rs:
// halves of 128, runs of 32 sharing a column of quant bytes).
fn low_k_at(base: u32, e: u32) -> f32 {
    let half = e / 128u;
    let run = (e % 128u) / 32u;
    let l = e % 32u;
    if DTYPE == 10u {
        let sc = byte_at(base + e / 16u);
        let q = (byte_at(base + 16u + half * 32u + l) >> (2u * run)) & 3u;
        return f16_at(base + 80u) * f32(sc & 15u) * f32(q) - f16_at(base + 82u) * f32(sc >> 4u);
    }
    if DTYPE == 11u {
        let i = e / 16u;
        var low: u32;
        if i < 8u { low = byte_at(base + 96u + i) & 15u; } else { low = byte_at(base + 88u + i) >> 4u; }
        let high = (byte_at(base + 104u + i % 4u) >> (2u * (i / 4u))) & 3u;
        let scale = f32(i32(low | (high << 4u)) - 32);
        let q2 = (byte_at(base + 32u + half * 32u + l) >> (2u * run)) & 3u;
        let hbit = (byte_at(base + l) >> (4u * half + run)) & 1u;
        return f16_at(base + 108u) * scale * f32(i32(q2) - 4 + 4 * i32(hbit));
    }
    // Q5_K
    let chunk = e / 64u;
    let w64 = e % 64u;
    let k = q4k_factors(base, e / 32u);
    let nib = (byte_at(base + 48u + chunk * 32u + l) >> (4u * (w64 / 32u))) & 15u;
    let high = (byte_at(base + 16u + l) >> (2u * chunk + w64 / 32u)) & 1u;
    return k.x * f32(nib | (high << 4u)) - k.y;
}

// Element `c` of the weight row starting at byte `rb`, decoded on its own: the transposed
// matmul and the embedding walk weights by column, so no block is decoded whole.
fn weight_at(rb: u32, c: u32) -> f32 {
    let blk = c / 32u;
    let l = c % 32u;
    switch DTYPE {
        case 0u, 1u, 2u: { return float_at(rb, c); }
        case 3u: {
            let base = rb + 34u * blk;
            return f16_at(base) * i8_of(byte_at(base + 2u + l));
        }
        case 4u: {
            let base = rb + 18u * blk;
            let q = (byte_at(base + 2u + l % 16u) >> (4u * (l / 16u))) & 15u;
            return f16_at(base) * (f32(q) - 8.0);
        }
        case 5u: {
            let base = rb + 20u * blk;
            let dm = unpack2x16float(word_at(base));
            let q = (byte_at(base + 4u + l % 16u) >> (4u * (l / 16u))) & 15u;
            return dm.x * f32(q) + dm.y;
        }
        case 10u, 11u, 12u: {
            let bytes = select(select(176u, 110u, DTYPE == 11u), 84u, DTYPE == 10u);
            return low_k_at(rb + bytes * (c / 256u), c % 256u);
        }
        case 8u, 9u: {
            let lay = q5_layout();
            let base = rb + lay.x * blk;
            let low = (byte_at(base + lay.y + 4u + l % 16u) >> (4u * (l / 16u))) & 15u;
            let high = (word_at(base + lay.y) >> l) & 1u;
            return q5_value(base, vec4<f32>(f32(low | (high << 4u)))).x;
        }
        case 6u: {
            // 256-element super-block: 8 sub-blocks of 32 with 6-bit scales and mins.
            let s = blk % 8u;
            let base = rb + 144u * (blk / 8u);
            let k = q4k_factors(base, s);
            let q = (byte_at(base + 16u + 32u * (s / 2u) + l) >> ((s % 2u) * 4u)) & 15u;
            return k.x * f32(q) - k.y;
        }
        default: {
            // Q6_K: ql[128], qh[64], i8 scales[16], f16 d; sub-block s covers y[128n + 32j ..].
            let s = blk % 8u;
            let base = rb + 210u * (blk / 8u);
            let n = s / 4u;
            let j = s % 4u;
            let qlb = byte_at(base + 64u * n + l + 32u * (j % 2u));
            let low = (qlb >> (4u * (j / 2u))) & 15u;
            let hb = (byte_at(base + 128u + 32u * n + l) >> (2u * j)) & 3u;
            let q = f32(i32(low | (hb << 4u)) - 32);
            let scale = i8_of(byte_at(base + 192u + 8u * n + l / 16u + 2u * j));
            return f16_at(base + 208u) * scale * q;
        }
    }
}

// Elements c..c+3 (c a multiple of 4) of the weight row at byte `rb`: one block header and one
// word of quants serve four columns of the transposed matmul.
fn weight_at4(rb: u32, c: u32) -> vec4<f32> {
    let blk = c / 32u;
    let l = c % 32u;
    let four = vec4<u32>(0u, 8u, 16u, 24u);
    switch DTYPE {
        case 0u, 1u, 2u: {
            return vec4<f32>(float_at(rb, c), float_at(rb, c + 1u), float_at(rb, c + 2u),
                             float_at(rb, c + 3u));
        }
        case 3u: {
            let base = rb + 34u * blk;
            let q = vec4<i32>((vec4<u32>(word_at(base + 2u + l)) << (vec4<u32>(24u) - four)))
                >> vec4<u32>(24u);
            return f16_at(base) * vec4<f32>(q);
        }
        case 4u, 5u: {
            var base = rb + 18u * blk;
            var head = 2u;
            if DTYPE == 5u {
                base = rb + 20u * blk;
                head = 4u;
            }
            let word = word_at(base + head + l % 16u) >> (4u * (l / 16u));
            let q = vec4<f32>((vec4<u32>(word) >> four) & vec4<u32>(15u));
            if DTYPE == 4u { return f16_at(base) * (q - 8.0); }
            let dm = unpack2x16float(word_at(base));
            return dm.x * q + dm.y;
        }
        case 10u, 11u, 12u: {
            return vec4<f32>(weight_at(rb, c), weight_at(rb, c + 1u), weight_at(rb, c + 2u),
                             weight_at(rb, c + 3u));
        }
        case 8u, 9u: {
            let lay = q5_layout();
            let base = rb + lay.x * blk;
            let word = word_at(base + lay.y + 4u + l % 16u) >> (4u * (l / 16u));
            let low = (vec4<u32>(word) >> four) & vec4<u32>(15u);
            let high = (vec4<u32>(word_at(base + lay.y) >> l) >> vec4<u32>(0u, 1u, 2u, 3u))
                & vec4<u32>(1u);
            return q5_value(base, vec4<f32>(low | (high << vec4<u32>(4u))));
        }
        case 6u: {
            let s = blk % 8u;
            let base = rb + 144u * (blk / 8u);
            let k = q4k_factors(base, s);
            let word = word_at(base + 16u + 32u * (s / 2u) + l) >> ((s % 2u) * 4u);
            return k.x * vec4<f32>((vec4<u32>(word) >> four) & vec4<u32>(15u)) - k.y;
        }
        default: {
            let s = blk % 8u;
            let base = rb + 210u * (blk / 8u);
            let n = s / 4u;
            let j = s % 4u;
            let low = (vec4<u32>(word_at(base + 64u * n + l + 32u * (j % 2u)) >> (4u * (j / 2u)))
                >> four) & vec4<u32>(15u);
            let high = (vec4<u32>(word_at(base + 128u + 32u * n + l) >> (2u * j)) >> four)
                & vec4<u32>(3u);
            let q = vec4<f32>(vec4<i32>(low | (high << vec4<u32>(4u))) - vec4<i32>(32));
            let scale = i8_of(byte_at(base + 192u + 8u * n + l / 16u + 2u * j));
            return f16_at(base + 208u) * scale * q;
        }
    }
}
