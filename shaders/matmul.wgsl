// y = x · Wᵀ for one row-range part of W, and its transpose dx += dy · W, and embedding lookup.
// Prepended: quant.wgsl (binding 1 = the weight bytes).

struct Params {
    rows: u32,      // weight rows in this part
    cols: u32,      // elements per weight row
    n: u32,         // tokens
    row_bytes: u32,
    out_cols: u32,  // all weight rows (width of y and dy)
    row0: u32,      // first weight row of this part
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> tokens: array<u32>;

const TOKENS: u32 = 4u;

// y = x · Wᵀ for float formats (F32, F16, BF16), in f32 like the cpu backend:
// one invocation per (weight row, 4 tokens).
@compute @workgroup_size(64)
fn matmul(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    let t0 = gid.y * TOKENS;
    if r >= p.rows || t0 >= p.n { return; }
    let nt = min(TOKENS, p.n - t0);
    let rb = r * p.row_bytes;
    var acc = vec4<f32>(0.0);
    for (var c = 0u; c < p.cols; c++) {
        let v = float_at(rb, c);
        for (var tt = 0u; tt < nt; tt++) { acc[tt] += v * x[(t0 + tt) * p.cols + c]; }
    }
    for (var tt = 0u; tt < nt; tt++) { y[(t0 + tt) * p.out_cols + p.row0 + r] = acc[tt]; }
}

// dx[t, c] += Σ_r dy[t, row0 + r] · W[r, c]: one invocation per (column, 4 tokens), so each
// weight element is decoded once for four tokens and neighbouring invocations read
// neighbouring bytes. x holds dy here and y accumulates dx, so parts of a split weight add up.
@compute @workgroup_size(64)
fn matmul_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let t0 = gid.y * TOKENS;
    if c >= p.cols || t0 >= p.n { return; }
    // Rows of dy for tokens past the end repeat the last one; their sums are not stored.
    let last = p.n - 1u;
    let g0 = t0 * p.out_cols + p.row0;
    let g1 = min(t0 + 1u, last) * p.out_cols + p.row0;
    let g2 = min(t0 + 2u, last) * p.out_cols + p.row0;
    let g3 = min(t0 + 3u, last) * p.out_cols + p.row0;
    var acc = vec4<f32>(0.0);
    for (var r = 0u; r < p.rows; r++) {
        let v = weight_at(r * p.row_bytes, c);
        acc += v * vec4<f32>(x[g0 + r], x[g1 + r], x[g2 + r], x[g3 + r]);
    }
    let nt = min(TOKENS, p.n - t0);
    for (var tt = 0u; tt < nt; tt++) { y[(t0 + tt) * p.cols + c] += acc[tt]; }
}

// One invocation per (column, token): the token's row, if it lies in this part.
@compute @workgroup_size(64)
fn embed(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let t = gid.y;
    if c >= p.cols || t >= p.n { return; }
    let tok = tokens[t];
    if tok < p.row0 || tok >= p.row0 + p.rows { return; }
    y[t * p.cols + c] = weight_at((tok - p.row0) * p.row_bytes, c);
}

// ---- Integer path: activations quantized to 8 bits in blocks of 32, as the cpu backend does
// (runtime/src/quant/dot.rs), so both backends compute the same block sums.
// A quantized block is 10 words: scale d, d·Σq (both rounded to f16 precision), 32 × i8.

@group(0) @binding(5) var<storage, read_write> xq: array<u32>;

const XQ_WORDS: u32 = 10u;

// One invocation per (block, token): amax/127 scale, round half to even, like ggml.
@compute @workgroup_size(64)
fn quantize_q8(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = gid.x;
    let t = gid.y;
    let blocks = p.cols / 32u;
    if b >= blocks || t >= p.n { return; }
    let x0 = t * p.cols + b * 32u;
    var amax = 0.0;
    for (var i = 0u; i < 32u; i++) { amax = max(amax, abs(x[x0 + i])); }
    let d = amax / 127.0;
    var id = 0.0;
    if amax > 0.0 { id = 127.0 / amax; }
    let o = (t * blocks + b) * XQ_WORDS;
    var sum = 0;
    for (var k = 0u; k < 8u; k++) {
        var packed = 0u;
        for (var i = 0u; i < 4u; i++) {
            let q = i32(round(x[x0 + 4u * k + i] * id));
            sum += q;
            packed |= (bitcast<u32>(q) & 0xffu) << (8u * i);
        }
        xq[o + 2u + k] = packed;
    }
    xq[o] = bitcast<u32>(quantizeToF16(d));
    xq[o + 1u] = bitcast<u32>(quantizeToF16(d * f32(sum)));
}

// Σ of four signed byte products.
fn dot4(a: u32, b: u32) -> i32 {
    return dot4I8Packed(a, b);
}

// Block `blk` of the weight row at byte `rb` against the quantized activation block at word `xo`.
fn block_dot(rb: u32, blk: u32, xo: u32) -> f32 {
    let xd = bitcast<f32>(xq[xo]);
    let xsum = bitcast<f32>(xq[xo + 1u]);
    switch DTYPE {
        case 3u: {
            let base = rb + 34u * blk;
            var s = 0;
            for (var k = 0u; k < 8u; k++) { s += dot4(word_at(base + 2u + 4u * k), xq[xo + 2u + k]); }
            return f16_at(base) * xd * f32(s);
        }
        case 4u: {
            let base = rb + 18u * blk;
            var s = 0;
            for (var k = 0u; k < 4u; k++) {
                let q = word_at(base + 2u + 4u * k);
                s += dot4(q & 0x0f0f0f0fu, xq[xo + 2u + k]) + dot4((q >> 4u) & 0x0f0f0f0fu, xq[xo + 6u + k]);
            }
            return f16_at(base) * (xd * f32(s) - 8.0 * xsum);
        }
        case 5u: {
            let base = rb + 20u * blk;
            let dm = unpack2x16float(word_at(base));
            var s = 0;
            for (var k = 0u; k < 4u; k++) {
                let q = word_at(base + 4u + 4u * k);
                s += dot4(q & 0x0f0f0f0fu, xq[xo + 2u + k]) + dot4((q >> 4u) & 0x0f0f0f0fu, xq[xo + 6u + k]);
            }
            return dm.x * xd * f32(s) + dm.y * xsum;
        }
        case 6u: {
            let j = blk % 8u;
            let base = rb + 144u * (blk / 8u);
            let dm = unpack2x16float(w[base >> 2u]);
            let sc = base + 4u;
            var scale: u32;
            var mn: u32;
            if j < 4u {
                scale = byte_at(sc + j) & 63u;
                mn = byte_at(sc + j + 4u) & 63u;
            } else {
                scale = (byte_at(sc + j + 4u) & 15u) | ((byte_at(sc + j - 4u) >> 6u) << 4u);
                mn = (byte_at(sc + j + 4u) >> 4u) | ((byte_at(sc + j) >> 6u) << 4u);
            }
            let q0 = (base + 16u + 32u * (j / 2u)) >> 2u;
            let shift = (j % 2u) * 4u;
            var s = 0;
            for (var k = 0u; k < 8u; k++) { s += dot4((w[q0 + k] >> shift) & 0x0f0f0f0fu, xq[xo + 2u + k]); }
            return dm.x * f32(scale) * xd * f32(s) - dm.y * f32(mn) * xsum;
        }
        default: {
            // Q6_K: 6-bit q = low nibble | 2 high bits << 4, value (q − 32)·scale, a scale per 16.
            let sb = blk % 8u;
            let base = rb + 210u * (blk / 8u);
            let n = sb / 4u;
            let j = sb % 4u;
            let lshift = (j / 2u) * 4u;
            var half_sums = vec2<i32>(0);
            for (var k = 0u; k < 8u; k++) {
                let lo = (word_at(base + 64u * n + 32u * (j % 2u) + 4u * k) >> lshift) & 0x0f0f0f0fu;
                let hi = (word_at(base + 128u + 32u * n + 4u * k) >> (2u * j)) & 0x03030303u;
                let xw = xq[xo + 2u + k];
                half_sums[k / 4u] += dot4(lo | (hi << 4u), xw) - 32 * dot4(0x01010101u, xw);
            }
            let sc0 = i8_of(byte_at(base + 192u + 8u * n + 2u * j));
            let sc1 = i8_of(byte_at(base + 192u + 8u * n + 1u + 2u * j));
            return f16_at(base + 208u) * xd * (sc0 * f32(half_sums.x) + sc1 * f32(half_sums.y));
        }
    }
}

// y = x · Wᵀ for integer formats: one invocation per (weight row, 4 tokens).
@compute @workgroup_size(64)
fn matmul_q8(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    let t0 = gid.y * TOKENS;
    if r >= p.rows || t0 >= p.n { return; }
    let nt = min(TOKENS, p.n - t0);
    let blocks = p.cols / 32u;
    let rb = r * p.row_bytes;
    for (var tt = 0u; tt < nt; tt++) {
        let xo = (t0 + tt) * blocks * XQ_WORDS;
        var acc = 0.0;
        for (var b = 0u; b < blocks; b++) { acc += block_dot(rb, b, xo + b * XQ_WORDS); }
        y[(t0 + tt) * p.out_cols + p.row0 + r] = acc;
    }
}
