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

// y = x · Wᵀ element by element (float formats, and block formats without an integer decoder),
// in f32 like the cpu backend: one invocation per (weight row, 4 tokens).
@compute @workgroup_size(64)
fn matmul(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    let t0 = gid.y * TOKENS;
    if r >= p.rows || t0 >= p.n { return; }
    let nt = min(TOKENS, p.n - t0);
    let rb = r * p.row_bytes;
    var acc = vec4<f32>(0.0);
    for (var c = 0u; c < p.cols; c++) {
        let v = weight_at(rb, c);
        for (var tt = 0u; tt < nt; tt++) { acc[tt] += v * x[(t0 + tt) * p.cols + c]; }
    }
    for (var tt = 0u; tt < nt; tt++) { y[(t0 + tt) * p.out_cols + p.row0 + r] = acc[tt]; }
}

// dx[t, c] += Σ_r dy[t, row0 + r] · W[r, c]: one invocation per (4 columns, 8 tokens), so a
// block header and a word of quants are decoded once for 32 products. x holds dy here and y
// accumulates dx, so parts of a split weight add up in turn.
const BACKWARD_TOKENS: u32 = 8u;

@compute @workgroup_size(64)
fn matmul_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x * 4u;
    let t0 = gid.y * BACKWARD_TOKENS;
    if c >= p.cols || t0 >= p.n { return; }
    // Rows of dy for tokens past the end repeat the last one; their sums are not stored.
    let last = p.n - 1u;
    let g0 = t0 * p.out_cols + p.row0;
    let g1 = min(t0 + 1u, last) * p.out_cols + p.row0;
    let g2 = min(t0 + 2u, last) * p.out_cols + p.row0;
    let g3 = min(t0 + 3u, last) * p.out_cols + p.row0;
    let g4 = min(t0 + 4u, last) * p.out_cols + p.row0;
    let g5 = min(t0 + 5u, last) * p.out_cols + p.row0;
    let g6 = min(t0 + 6u, last) * p.out_cols + p.row0;
    let g7 = min(t0 + 7u, last) * p.out_cols + p.row0;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0);
    var a5 = vec4<f32>(0.0);
    var a6 = vec4<f32>(0.0);
    var a7 = vec4<f32>(0.0);
    for (var r = 0u; r < p.rows; r++) {
        let v = weight_at4(r * p.row_bytes, c);
        a0 += x[g0 + r] * v;
        a1 += x[g1 + r] * v;
        a2 += x[g2 + r] * v;
        a3 += x[g3 + r] * v;
        a4 += x[g4 + r] * v;
        a5 += x[g5 + r] * v;
        a6 += x[g6 + r] * v;
        a7 += x[g7 + r] * v;
    }
    let nt = min(BACKWARD_TOKENS, p.n - t0);
    add_columns(t0, c, a0);
    if nt > 1u { add_columns(t0 + 1u, c, a1); }
    if nt > 2u { add_columns(t0 + 2u, c, a2); }
    if nt > 3u { add_columns(t0 + 3u, c, a3); }
    if nt > 4u { add_columns(t0 + 4u, c, a4); }
    if nt > 5u { add_columns(t0 + 5u, c, a5); }
    if nt > 6u { add_columns(t0 + 6u, c, a6); }
    if nt > 7u { add_columns(t0 + 7u, c, a7); }
}

// y[t, c..c+4] += v, within the row.
fn add_columns(t: u32, c: u32, v: vec4<f32>) {
    for (var j = 0u; j < min(4u, p.cols - c); j++) { y[t * p.cols + c + j] += v[j]; }
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
    xq[o] = bitcast<u32>(round_to_f16(d));
    xq[o + 1u] = bitcast<u32>(round_to_f16(d * f32(sum)));
}

// x rounded to the nearest f16 value, subnormals included (as the cpu's F16C conversion does):
// GPUs may flush quantizeToF16's subnormal results to zero, and an activation block of small
// values (a GeLU's near-zero outputs) would then vanish from the product.
fn round_to_f16(x: f32) -> f32 {
    if abs(x) < 6.103515625e-5 { return round(x * 16777216.0) / 16777216.0; }
    return quantizeToF16(x);
}

// Σ of four signed byte products.
fn dot4(a: u32, b: u32) -> i32 {
    return dot4I8Packed(a, b);
}

// One weight block decoded for the integer dot: 32 values as signed bytes (elements 0..15 in
// `lo`, 16..31 in `hi`, four to a word, in the activation block's order) and the factors of
// Σ(lo·x) and Σ(hi·x) and of the activation block's sum (for formats with an offset).
struct Decoded {
    lo: vec4<u32>,
    hi: vec4<u32>,
    scale: vec2<f32>,
    offset: f32,
}

fn words_at(o: u32) -> vec4<u32> {
    return vec4<u32>(word_at(o), word_at(o + 4u), word_at(o + 8u), word_at(o + 12u));
}

// Four bits of a Q5 block's high-bit word as bit 4 of four bytes.
fn spread4(b: u32) -> u32 {
    return ((b & 1u) << 4u) | ((b & 2u) << 11u) | ((b & 4u) << 18u) | ((b & 8u) << 25u);
}

fn decode(rb: u32, blk: u32) -> Decoded {
    var out: Decoded;
    let nib = vec4<u32>(0x0f0f0f0fu);
    switch DTYPE {
        case 3u: {
            let base = rb + 34u * blk;
            let d = f16_at(base);
            out.lo = words_at(base + 2u);
            out.hi = words_at(base + 18u);
            out.scale = vec2<f32>(d);
            out.offset = 0.0;
        }
        case 4u: {
            let base = rb + 18u * blk;
            let d = f16_at(base);
            let q = words_at(base + 2u);
            out.lo = q & nib;
            out.hi = (q >> vec4<u32>(4u)) & nib;
            out.scale = vec2<f32>(d);
            out.offset = -8.0 * d;
        }
        case 5u: {
            let base = rb + 20u * blk;
            let dm = unpack2x16float(word_at(base));
            let q = words_at(base + 4u);
            out.lo = q & nib;
            out.hi = (q >> vec4<u32>(4u)) & nib;
            out.scale = vec2<f32>(dm.x);
            out.offset = dm.y;
        }
        case 8u, 9u: {
            // Q5_0 / Q5_1: nibbles as Q4, bit 4 of element j is bit j of a u32 header word.
            let lay = q5_layout();
            let base = rb + lay.x * blk;
            let qh = word_at(base + lay.y);
            let q = words_at(base + lay.y + 4u);
            let hl = vec4<u32>(spread4(qh & 15u), spread4((qh >> 4u) & 15u),
                               spread4((qh >> 8u) & 15u), spread4((qh >> 12u) & 15u));
            let hh = vec4<u32>(spread4((qh >> 16u) & 15u), spread4((qh >> 20u) & 15u),
                               spread4((qh >> 24u) & 15u), spread4((qh >> 28u) & 15u));
            out.lo = (q & nib) | hl;
            out.hi = ((q >> vec4<u32>(4u)) & nib) | hh;
            if DTYPE == 8u {
                let d = f16_at(base);
                out.scale = vec2<f32>(d);
                out.offset = -16.0 * d;
            } else {
                let dm = unpack2x16float(word_at(base));
                out.scale = vec2<f32>(dm.x);
                out.offset = dm.y;
            }
        }
        case 6u: {
            let j = blk % 8u;
            let base = rb + 144u * (blk / 8u);
            let k = q4k_factors(base, j);
            let q0 = base + 16u + 32u * (j / 2u);
            let shift = vec4<u32>((j % 2u) * 4u);
            out.lo = (words_at(q0) >> shift) & nib;
            out.hi = (words_at(q0 + 16u) >> shift) & nib;
            out.scale = vec2<f32>(k.x);
            out.offset = -k.y;
        }
        default: {
            // Q6_K: q = low nibble | 2 high bits << 4, value (q − 32)·scale, a scale per 16.
            // (q + 0x60) ^ 0x80 is q − 32 as a signed byte, with no carry between bytes.
            let sb = blk % 8u;
            let base = rb + 210u * (blk / 8u);
            let n = sb / 4u;
            let j = sb % 4u;
            let lshift = vec4<u32>((j / 2u) * 4u);
            let hshift = vec4<u32>(2u * j);
            let ql = base + 64u * n + 32u * (j % 2u);
            let qh = base + 128u + 32u * n;
            let bias = vec4<u32>(0x60606060u);
            let flip = vec4<u32>(0x80808080u);
            let low_lo = (words_at(ql) >> lshift) & nib;
            let low_hi = (words_at(ql + 16u) >> lshift) & nib;
            let high_lo = (words_at(qh) >> hshift) & vec4<u32>(0x03030303u);
            let high_hi = (words_at(qh + 16u) >> hshift) & vec4<u32>(0x03030303u);
            out.lo = ((low_lo | (high_lo << vec4<u32>(4u))) + bias) ^ flip;
            out.hi = ((low_hi | (high_hi << vec4<u32>(4u))) + bias) ^ flip;
            let d = f16_at(base + 208u);
            out.scale = vec2<f32>(
                d * i8_of(byte_at(base + 192u + 8u * n + 2u * j)),
                d * i8_of(byte_at(base + 192u + 8u * n + 1u + 2u * j)),
            );
            out.offset = 0.0;
        }
    }
    return out;
}

// A decoded block against the quantized activation block at word `xo`.
fn block_dot(k: Decoded, xo: u32) -> f32 {
    let xd = bitcast<f32>(xq[xo]);
    let xsum = bitcast<f32>(xq[xo + 1u]);
    let s_lo = dot4(k.lo.x, xq[xo + 2u]) + dot4(k.lo.y, xq[xo + 3u])
        + dot4(k.lo.z, xq[xo + 4u]) + dot4(k.lo.w, xq[xo + 5u]);
    let s_hi = dot4(k.hi.x, xq[xo + 6u]) + dot4(k.hi.y, xq[xo + 7u])
        + dot4(k.hi.z, xq[xo + 8u]) + dot4(k.hi.w, xq[xo + 9u]);
    return xd * (k.scale.x * f32(s_lo) + k.scale.y * f32(s_hi)) + k.offset * xsum;
}

// y = x · Wᵀ for integer formats: one invocation per (weight row, 4 tokens); each block is
// decoded once for the four.
@compute @workgroup_size(64)
fn matmul_q8(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    let t0 = gid.y * TOKENS;
    if r >= p.rows || t0 >= p.n { return; }
    let nt = min(TOKENS, p.n - t0);
    let blocks = p.cols / 32u;
    let rb = r * p.row_bytes;
    let stride = blocks * XQ_WORDS;
    let x0 = t0 * stride;
    var acc = vec4<f32>(0.0);
    for (var b = 0u; b < blocks; b++) {
        let k = decode(rb, b);
        let xo = x0 + b * XQ_WORDS;
        acc.x += block_dot(k, xo);
        if nt > 1u { acc.y += block_dot(k, xo + stride); }
        if nt > 2u { acc.z += block_dot(k, xo + 2u * stride); }
        if nt > 3u { acc.w += block_dot(k, xo + 3u * stride); }
    }
    for (var tt = 0u; tt < nt; tt++) { y[(t0 + tt) * p.out_cols + p.row0 + r] = acc[tt]; }
}
