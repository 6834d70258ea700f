// The memory layer: product-key top-k, value gather, and the sparse row ops of learning.
// The value table may be split into row-range parts (storage bindings are limited); every op
// that touches it runs once per part, on the rows inside [row0, row0 + part_rows).

struct Params {
    n: u32,          // tokens (top-k, gather) or selected rows (row ops)
    dim: u32,        // value width
    picks: u32,      // slots per token (all heads)
    row0: u32,       // first value row of this part
    part_rows: u32,  // value rows in this part
    lr: f32,
    // product-key shape
    heads: u32,
    n_keys: u32,
    top_k: u32,
    k_dim: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> query: array<f32>;
@group(0) @binding(2) var<storage, read> keys: array<f32>;
@group(0) @binding(3) var<storage, read_write> slot_ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> slot_weights: array<f32>;
@group(0) @binding(5) var<storage, read> ids: array<u32>;
@group(0) @binding(6) var<storage, read> weights: array<f32>;
@group(0) @binding(7) var<storage, read> src: array<f32>;
@group(0) @binding(8) var<storage, read_write> dst: array<f32>;
@group(0) @binding(9) var<storage, read> offsets: array<u32>;

const MAX_KEYS: u32 = 512u;
const MAX_TOP_K: u32 = 32u;

var<workgroup> s1: array<f32, MAX_KEYS>;
var<workgroup> s2: array<f32, MAX_KEYS>;
var<workgroup> best1_s: array<f32, MAX_TOP_K>;
var<workgroup> best1_i: array<u32, MAX_TOP_K>;
var<workgroup> best2_s: array<f32, MAX_TOP_K>;
var<workgroup> best2_i: array<u32, MAX_TOP_K>;
var<workgroup> cand_s: array<f32, 1024>; // MAX_TOP_K²
var<workgroup> cand_i: array<u32, 1024>;
var<workgroup> top_s: array<f32, MAX_TOP_K>;
var<workgroup> top_i: array<u32, MAX_TOP_K>;

// The ranking rule of the CPU lookup: higher score first, then the smaller index.
fn better(sa: f32, ia: u32, sb: f32, ib: u32) -> bool {
    return sa > sb || (sa == sb && ia < ib);
}

// One workgroup per (token, head). Ranks are counted, not sorted: the rule is a strict total
// order, so every kept item gets a distinct place.
@compute @workgroup_size(64)
fn product_key_topk(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let it = wid.x + wid.y * nwg.x;
    if it >= p.n * p.heads { return; }
    let t = it / p.heads;
    let h = it % p.heads;
    let half = p.k_dim / 2u;
    let qb = t * p.heads * p.k_dim + h * p.k_dim;
    let kb = h * 2u * p.n_keys * half;
    for (var i = lid; i < p.n_keys; i += 64u) {
        var a = 0.0;
        var b = 0.0;
        for (var d = 0u; d < half; d++) {
            a += query[qb + d] * keys[kb + i * half + d];
            b += query[qb + half + d] * keys[kb + (p.n_keys + i) * half + d];
        }
        s1[i] = a;
        s2[i] = b;
    }
    workgroupBarrier();
    let ka = min(p.top_k, p.n_keys);
    for (var i = lid; i < p.n_keys; i += 64u) {
        var r1 = 0u;
        var r2 = 0u;
        for (var j = 0u; j < p.n_keys; j++) {
            if better(s1[j], j, s1[i], i) { r1++; }
            if better(s2[j], j, s2[i], i) { r2++; }
        }
        if r1 < ka { best1_s[r1] = s1[i]; best1_i[r1] = i; }
        if r2 < ka { best2_s[r2] = s2[i]; best2_i[r2] = i; }
    }
    workgroupBarrier();
    let nc = ka * ka;
    for (var c = lid; c < nc; c += 64u) {
        let i = c / ka;
        let j = c % ka;
        cand_s[c] = best1_s[i] + best2_s[j];
        cand_i[c] = best1_i[i] * p.n_keys + best2_i[j];
    }
    workgroupBarrier();
    let kept = min(p.top_k, nc);
    for (var c = lid; c < nc; c += 64u) {
        var r = 0u;
        for (var j = 0u; j < nc; j++) {
            if better(cand_s[j], cand_i[j], cand_s[c], cand_i[c]) { r++; }
        }
        if r < kept { top_s[r] = cand_s[c]; top_i[r] = cand_i[c]; }
    }
    workgroupBarrier();
    if lid == 0u {
        let mx = top_s[0];
        var sum = 0.0;
        for (var r = 0u; r < kept; r++) { sum += exp(top_s[r] - mx); }
        let inv = 1.0 / sum;
        let ob = (t * p.heads + h) * p.top_k;
        for (var r = 0u; r < kept; r++) {
            slot_ids[ob + r] = top_i[r];
            slot_weights[ob + r] = exp(top_s[r] - mx) * inv;
        }
    }
}

fn flat(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 64u;
}

// dst[t] += Σ_j weights[t, j] · values[ids[t, j]] for the ids in this part (src = values).
@compute @workgroup_size(64)
fn gather_values(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if i >= p.n * p.dim { return; }
    let t = i / p.dim;
    let c = i % p.dim;
    var acc = 0.0;
    for (var j = 0u; j < p.picks; j++) {
        let id = ids[t * p.picks + j];
        if id >= p.row0 && id < p.row0 + p.part_rows {
            acc += weights[t * p.picks + j] * src[(id - p.row0) * p.dim + c];
        }
    }
    dst[i] += acc;
}

// Gradient of selected row r: Σ over its hits e (offsets[r]..offsets[r+1] into `ids`, which
// holds flat (token·picks + pick) positions) of weights[e] · dy[token]. src = dy.
@compute @workgroup_size(64)
fn value_grads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if i >= p.n * p.dim { return; }
    let r = i / p.dim;
    let c = i % p.dim;
    var acc = 0.0;
    for (var e = offsets[r]; e < offsets[r + 1u]; e++) {
        let hit = ids[e];
        acc += weights[hit] * src[(hit / p.picks) * p.dim + c];
    }
    dst[i] = acc;
}

// dst row r = table row ids[r] (src = the table part).
@compute @workgroup_size(64)
fn read_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if i >= p.n * p.dim { return; }
    let id = ids[i / p.dim];
    if id >= p.row0 && id < p.row0 + p.part_rows {
        dst[i] = src[(id - p.row0) * p.dim + i % p.dim];
    }
}

// Table row ids[r] (dst = the table part) = src row r.
@compute @workgroup_size(64)
fn write_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if i >= p.n * p.dim { return; }
    let id = ids[i / p.dim];
    if id >= p.row0 && id < p.row0 + p.part_rows {
        dst[(id - p.row0) * p.dim + i % p.dim] = src[i];
    }
}

// Table row ids[r] −= lr · src row r: the sparse SGD step.
@compute @workgroup_size(64)
fn sgd_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if i >= p.n * p.dim { return; }
    let id = ids[i / p.dim];
    if id >= p.row0 && id < p.row0 + p.part_rows {
        let o = (id - p.row0) * p.dim + i % p.dim;
        dst[o] = dst[o] - p.lr * src[i];
    }
}
