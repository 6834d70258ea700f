// Decodes 32 consecutive elements of a weight row stored in a ggml block format.
// Weights stay in the file's bytes (a u32 array); DTYPE is a constant prepended by the host:
// 0 F32, 1 F16, 2 BF16, 3 Q8_0, 4 Q4_0, 5 Q4_1, 6 Q4_K, 7 Q6_K.

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

fn i8_of(b: u32) -> f32 {
    return f32(bitcast<i32>(b << 24u) >> 24u);
}

// Elements 32·blk .. 32·blk+32 of the row starting at byte `rb` (zero past `cols` for floats).
fn dequant32(rb: u32, blk: u32, cols: u32) -> array<f32, 32> {
    var o: array<f32, 32>;
    switch DTYPE {
        case 0u: {
            for (var i = 0u; i < 32u; i++) {
                let c = blk * 32u + i;
                if c < cols { o[i] = bitcast<f32>(w[(rb >> 2u) + c]); }
            }
        }
        case 1u: {
            for (var i = 0u; i < 32u; i++) {
                let c = blk * 32u + i;
                if c < cols { o[i] = f16_at(rb + 2u * c); }
            }
        }
        case 2u: {
            for (var i = 0u; i < 32u; i++) {
                let c = blk * 32u + i;
                if c < cols { o[i] = bitcast<f32>(half_at(rb + 2u * c) << 16u); }
            }
        }
        case 3u: {
            let base = rb + 34u * blk;
            let d = f16_at(base);
            for (var i = 0u; i < 32u; i++) { o[i] = d * i8_of(byte_at(base + 2u + i)); }
        }
        case 4u: {
            let base = rb + 18u * blk;
            let d = f16_at(base);
            for (var j = 0u; j < 16u; j++) {
                let q = byte_at(base + 2u + j);
                o[j] = d * (f32(q & 15u) - 8.0);
                o[j + 16u] = d * (f32(q >> 4u) - 8.0);
            }
        }
        case 5u: {
            let base = rb + 20u * blk;
            let d = f16_at(base);
            let m = f16_at(base + 2u);
            for (var j = 0u; j < 16u; j++) {
                let q = byte_at(base + 4u + j);
                o[j] = d * f32(q & 15u) + m;
                o[j + 16u] = d * f32(q >> 4u) + m;
            }
        }
        case 6u: {
            // 256-element super-block: 8 sub-blocks of 32 with 6-bit scales and mins.
            let s = blk % 8u;
            let base = rb + 144u * (blk / 8u);
            let d = f16_at(base);
            let dmin = f16_at(base + 2u);
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
            let q = base + 16u + 32u * (s / 2u);
            let shift = (s % 2u) * 4u;
            let a = d * f32(scale);
            let b = dmin * f32(mn);
            for (var l = 0u; l < 32u; l++) { o[l] = a * f32((byte_at(q + l) >> shift) & 15u) - b; }
        }
        default: {
            // Q6_K: ql[128], qh[64], i8 scales[16], f16 d; sub-block s covers y[128n + 32j ..].
            let s = blk % 8u;
            let base = rb + 210u * (blk / 8u);
            let n = s / 4u;
            let j = s % 4u;
            let d = f16_at(base + 208u);
            for (var l = 0u; l < 32u; l++) {
                let qlb = byte_at(base + 64u * n + l + 32u * (j % 2u));
                var low = qlb & 15u;
                if j >= 2u { low = qlb >> 4u; }
                let hb = (byte_at(base + 128u + 32u * n + l) >> (2u * j)) & 3u;
                let q = f32(i32(low | (hb << 4u)) - 32);
                let scale = i8_of(byte_at(base + 192u + 8u * n + l / 16u + 2u * j));
                o[l] = d * scale * q;
            }
        }
    }
    return o;
}
