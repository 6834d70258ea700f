// Row-wise ops: RMSNorm and its gradient, RoPE, cross-entropy. One workgroup of 64 per row
// (RoPE: one invocation per rotated pair).

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    // RoPE
    n_heads: u32,
    head_dim: u32,
    half_dims: u32,   // rotated pairs per head
    pos0: u32,
    step: f32,        // base^(−2/dims)
    direction: f32,   // 1 forward, −1 for the gradient
    halves: u32,      // 1: pairs (i, i + dims/2); 0: pairs (2i, 2i+1)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> targets: array<u32>;
@group(0) @binding(6) var<storage, read_write> losses: array<f32>;
@group(0) @binding(7) var<storage, read_write> indices: array<u32>;

var<workgroup> red: array<f32, 64>;
var<workgroup> red_index: array<u32, 64>;

fn row_of(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

fn reduce_sum(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if lid < s { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

fn reduce_max(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if lid < s { red[lid] = max(red[lid], red[lid + s]); }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(64)
fn rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let r = row_of(wid, nwg);
    if r >= p.rows { return; }
    let base = r * p.cols;
    var ss = 0.0;
    for (var i = lid; i < p.cols; i += 64u) { ss += x[base + i] * x[base + i]; }
    let total = reduce_sum(ss, lid);
    let scale = 1.0 / sqrt(total / f32(p.cols) + p.eps);
    for (var i = lid; i < p.cols; i += 64u) { out[base + i] = (x[base + i] * scale) * weight[i]; }
}

// y = x·s·w  ⇒  dx = s·(w⊙dy) − x·s³/d·Σ(w⊙dy⊙x)
@compute @workgroup_size(64)
fn rms_norm_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let r = row_of(wid, nwg);
    if r >= p.rows { return; }
    let base = r * p.cols;
    var ss = 0.0;
    var dot = 0.0;
    for (var i = lid; i < p.cols; i += 64u) {
        let v = x[base + i];
        ss += v * v;
        dot += dy[base + i] * weight[i] * v;
    }
    let sum_sq = reduce_sum(ss, lid);
    let sum_dot = reduce_sum(dot, lid);
    let s = 1.0 / sqrt(sum_sq / f32(p.cols) + p.eps);
    let k = s * s * s * sum_dot / f32(p.cols);
    for (var i = lid; i < p.cols; i += 64u) {
        out[base + i] = s * (dy[base + i] * weight[i]) - k * x[base + i];
    }
}

// Losses and d loss_sum / d logits: out starts as a copy of the logits.
@compute @workgroup_size(64)
fn cross_entropy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let r = row_of(wid, nwg);
    if r >= p.rows { return; }
    let base = r * p.cols;
    var m = -3.4e38;
    for (var i = lid; i < p.cols; i += 64u) { m = max(m, out[base + i]); }
    let mx = reduce_max(m, lid);
    var s = 0.0;
    for (var i = lid; i < p.cols; i += 64u) { s += exp(out[base + i] - mx); }
    let lse = log(reduce_sum(s, lid)) + mx;
    let target_index = targets[r];
    if lid == 0u { losses[r] = lse - out[base + target_index]; }
    workgroupBarrier();
    for (var i = lid; i < p.cols; i += 64u) {
        var g = exp(out[base + i] - lse);
        if i == target_index { g -= 1.0; }
        out[base + i] = g;
    }
}

// sin/cos after reducing the angle by 2π in two parts, so positions in the thousands keep
// the accuracy the CPU's f32 sin_cos has (GPU sin is only accurate near zero).
fn cos_sin(theta: f32) -> vec2<f32> {
    let k = round(theta * 0.15915494);
    let r = (theta - k * 6.28125) - k * 0.0019353071795864769;
    return vec2<f32>(cos(r), sin(r));
}

// In place on `out`; one invocation per (row, head, pair).
@compute @workgroup_size(64)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    let per_row = p.n_heads * p.half_dims;
    if idx >= p.rows * per_row { return; }
    let r = idx / per_row;
    let h = (idx % per_row) / p.half_dims;
    let i = idx % p.half_dims;
    // pos·step^i by repeated f32 multiplication, as ggml builds its cache.
    var theta = f32(p.pos0 + r);
    for (var k = 0u; k < i; k++) { theta *= p.step; }
    let cs = cos_sin(theta);
    let s = p.direction * cs.y;
    var a = 2u * i;
    var b = 2u * i + 1u;
    if p.halves == 1u {
        a = i;
        b = i + p.half_dims;
    }
    let base = r * p.cols + h * p.head_dim;
    let x0 = out[base + a];
    let x1 = out[base + b];
    out[base + a] = x0 * cs.x - x1 * s;
    out[base + b] = x0 * s + x1 * cs.x;
}

// Index of each row's largest value, the first one on ties (as the cpu sampler's argmax), so
// greedy decoding reads back one word per token instead of the whole vocabulary.
@compute @workgroup_size(64)
fn argmax_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let r = row_of(wid, nwg);
    if r >= p.rows { return; }
    let base = r * p.cols;
    var best = min(lid, p.cols - 1u);
    for (var i = lid; i < p.cols; i += 64u) {
        if x[base + i] > x[base + best] { best = i; }
    }
    red[lid] = x[base + best];
    red_index[lid] = best;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if lid < s {
            let v = red[lid + s];
            let j = red_index[lid + s];
            if v > red[lid] || (v == red[lid] && j < red_index[lid]) {
                red[lid] = v;
                red_index[lid] = j;
            }
        }
        workgroupBarrier();
    }
    if lid == 0u { indices[r] = red_index[0]; }
}
