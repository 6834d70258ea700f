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

// One invocation per (weight row, 4 tokens): each block is decoded once for four tokens.
@compute @workgroup_size(64)
fn matmul(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    let t0 = gid.y * TOKENS;
    if r >= p.rows || t0 >= p.n { return; }
    var acc = vec4<f32>(0.0);
    let blocks = (p.cols + 31u) / 32u;
    for (var b = 0u; b < blocks; b++) {
        let v = dequant32(r * p.row_bytes, b, p.cols);
        let c0 = b * 32u;
        let width = min(32u, p.cols - c0);
        for (var tt = 0u; tt < TOKENS; tt++) {
            let t = t0 + tt;
            if t < p.n {
                var s = 0.0;
                for (var i = 0u; i < width; i++) { s += v[i] * x[t * p.cols + c0 + i]; }
                acc[tt] += s;
            }
        }
    }
    for (var tt = 0u; tt < TOKENS; tt++) {
        let t = t0 + tt;
        if t < p.n { y[t * p.out_cols + p.row0 + r] = acc[tt]; }
    }
}

// One invocation per (32-column block, token): dx[t, block] += Σ_r dy[t, row0 + r] · W[r, block].
// x holds dy here and y accumulates dx, so parts of a split weight add up in turn.
@compute @workgroup_size(64)
fn matmul_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = gid.x;
    let t = gid.y;
    let blocks = (p.cols + 31u) / 32u;
    if b >= blocks || t >= p.n { return; }
    var acc: array<f32, 32>;
    for (var r = 0u; r < p.rows; r++) {
        let g = x[t * p.out_cols + p.row0 + r];
        if g != 0.0 {
            let v = dequant32(r * p.row_bytes, b, p.cols);
            for (var i = 0u; i < 32u; i++) { acc[i] += g * v[i]; }
        }
    }
    let c0 = b * 32u;
    for (var i = 0u; i < 32u; i++) {
        if c0 + i < p.cols { y[t * p.cols + c0 + i] += acc[i]; }
    }
}

// One invocation per (32-column block, token): the token's row, if it lies in this part.
@compute @workgroup_size(64)
fn embed(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = gid.x;
    let t = gid.y;
    let blocks = (p.cols + 31u) / 32u;
    if b >= blocks || t >= p.n { return; }
    let tok = tokens[t];
    if tok < p.row0 || tok >= p.row0 + p.rows { return; }
    let v = dequant32((tok - p.row0) * p.row_bytes, b, p.cols);
    let c0 = b * 32u;
    for (var i = 0u; i < 32u; i++) {
        if c0 + i < p.cols { y[t * p.cols + c0 + i] = v[i]; }
    }
}
