// Causal attention over the KV cache (forward), and its gradient over one whole sequence.

struct Params {
    n: u32,          // query tokens
    pos0: u32,       // position of the first query (cached tokens before it)
    q_cols: u32,     // n_heads · head_dim
    kv_cols: u32,    // n_kv_heads · head_dim
    n_heads: u32,
    group: u32,      // query heads per kv head
    head_dim: u32,
    scale: f32,      // 1/√head_dim
    window: u32,     // sliding window (positions a query sees, itself included); 0: all
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> dout: array<f32>;
// Backward scratch: probabilities and score gradients, [head][query][key].
@group(0) @binding(6) var<storage, read_write> probs: array<f32>;
@group(0) @binding(7) var<storage, read_write> dscore: array<f32>;
@group(0) @binding(8) var<storage, read_write> dk: array<f32>;
@group(0) @binding(9) var<storage, read_write> dv: array<f32>;

const MAX_DIMS_PER_THREAD: u32 = 4u; // head_dim ≤ 256

var<workgroup> tile: array<f32, 64>;
var<workgroup> red: array<f32, 64>;

fn item(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

fn reduce(v: f32, lid: u32, take_max: bool) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if lid < s {
            if take_max { red[lid] = max(red[lid], red[lid + s]); } else { red[lid] += red[lid + s]; }
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// The first key position a query at `pos` sees.
fn first_visible(pos: u32) -> u32 {
    if p.window == 0u || pos + 1u <= p.window { return 0u; }
    return pos + 1u - p.window;
}

// One past the last query position that sees key `j` (queries of one whole sequence).
fn last_seeing(j: u32) -> u32 {
    if p.window == 0u { return p.n; }
    return min(p.n, j + p.window);
}

fn dot_qk(qb: u32, kb: u32) -> f32 {
    var s = 0.0;
    for (var d = 0u; d < p.head_dim; d++) { s += q[qb + d] * k[kb + d]; }
    return s;
}

// One workgroup per (query, head); keys in tiles of 64 with a running (online) softmax.
@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let it = item(wid, nwg);
    if it >= p.n * p.n_heads { return; }
    let t = it / p.n_heads;
    let h = it % p.n_heads;
    let kvh = h / p.group;
    let visible = p.pos0 + t + 1u;
    let qb = t * p.q_cols + h * p.head_dim;
    var m = -3.4e38;
    var l = 0.0;
    var acc: array<f32, MAX_DIMS_PER_THREAD>;
    for (var j0 = first_visible(p.pos0 + t); j0 < visible; j0 += 64u) {
        let j = j0 + lid;
        var s = -3.4e38;
        if j < visible { s = dot_qk(qb, j * p.kv_cols + kvh * p.head_dim) * p.scale; }
        tile[lid] = s;
        workgroupBarrier();
        let count = min(64u, visible - j0);
        var tmax = m;
        for (var i = 0u; i < count; i++) { tmax = max(tmax, tile[i]); }
        let corr = exp(m - tmax);
        l *= corr;
        for (var e = 0u; e < MAX_DIMS_PER_THREAD; e++) { acc[e] *= corr; }
        for (var i = 0u; i < count; i++) {
            let pj = exp(tile[i] - tmax);
            l += pj;
            let vb = (j0 + i) * p.kv_cols + kvh * p.head_dim;
            for (var e = 0u; e < MAX_DIMS_PER_THREAD; e++) {
                let d = lid + 64u * e;
                if d < p.head_dim { acc[e] += pj * v[vb + d]; }
            }
        }
        m = tmax;
        workgroupBarrier();
    }
    for (var e = 0u; e < MAX_DIMS_PER_THREAD; e++) {
        let d = lid + 64u * e;
        if d < p.head_dim { out[qb + d] = acc[e] / l; }
    }
}

// Backward, step 1 — one workgroup per (query t, head h): the softmax row, the score
// gradients ds_j = p_j·(dout·v_j − Σ p·dp)·scale, and dq_t = Σ_j ds_j·k_j.
@compute @workgroup_size(64)
fn attention_backward_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    let it = item(wid, nwg);
    if it >= p.n * p.n_heads { return; }
    let t = it / p.n_heads;
    let h = it % p.n_heads;
    let kvh = h / p.group;
    let qb = t * p.q_cols + h * p.head_dim;
    let sb = (h * p.n + t) * p.n;
    let first = first_visible(t);
    var m = -3.4e38;
    for (var j = first + lid; j <= t; j += 64u) {
        let s = dot_qk(qb, j * p.kv_cols + kvh * p.head_dim) * p.scale;
        probs[sb + j] = s;
        m = max(m, s);
    }
    let mx = reduce(m, lid, true);
    var sum = 0.0;
    for (var j = first + lid; j <= t; j += 64u) {
        let e = exp(probs[sb + j] - mx);
        probs[sb + j] = e;
        sum += e;
    }
    let total = reduce(sum, lid, false);
    var weighted = 0.0;
    for (var j = first + lid; j <= t; j += 64u) {
        let pj = probs[sb + j] / total;
        probs[sb + j] = pj;
        let vb = j * p.kv_cols + kvh * p.head_dim;
        var dp = 0.0;
        for (var d = 0u; d < p.head_dim; d++) { dp += dout[qb + d] * v[vb + d]; }
        dscore[sb + j] = dp;
        weighted += pj * dp;
    }
    let w = reduce(weighted, lid, false);
    for (var j = first + lid; j <= t; j += 64u) {
        dscore[sb + j] = probs[sb + j] * (dscore[sb + j] - w) * p.scale;
    }
    storageBarrier();
    workgroupBarrier();
    for (var d = lid; d < p.head_dim; d += 64u) {
        var acc = 0.0;
        for (var j = first; j <= t; j++) { acc += dscore[sb + j] * k[j * p.kv_cols + kvh * p.head_dim + d]; }
        out[qb + d] = acc;
    }
}

// Backward, step 2 — one workgroup per (key j, kv head): dk_j = Σ ds·q, dv_j = Σ p·dout over
// the queries t ≥ j of every query head that shares this kv head.
@compute @workgroup_size(64)
fn attention_backward_keys(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    let n_kv = p.n_heads / p.group;
    let it = item(wid, nwg);
    if it >= p.n * n_kv { return; }
    let j = it / n_kv;
    let kvh = it % n_kv;
    for (var d = lid; d < p.head_dim; d += 64u) {
        var gk = 0.0;
        var gv = 0.0;
        for (var g = 0u; g < p.group; g++) {
            let h = kvh * p.group + g;
            for (var t = j; t < last_seeing(j); t++) {
                let s = (h * p.n + t) * p.n + j;
                let qb = t * p.q_cols + h * p.head_dim + d;
                gk += dscore[s] * q[qb];
                gv += probs[s] * dout[qb];
            }
        }
        dk[j * p.kv_cols + kvh * p.head_dim + d] = gk;
        dv[j * p.kv_cols + kvh * p.head_dim + d] = gv;
    }
}
