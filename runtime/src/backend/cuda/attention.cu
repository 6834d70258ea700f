// CUDA port of wgpu/attention.wgsl: causal attention over the KV cache (forward), and its
// gradient over one whole sequence. One block of 64 per item, item = blockIdx.x +
// blockIdx.y·gridDim.x: attention and attention_backward_rows grid(n·n_heads),
// attention_backward_keys grid(n·n_kv_heads).
//
// Kernels (args in WGSL binding order: p=0, q=1, k=2, v=3, out=4, dout=5, probs=6, dscore=7,
// dk=8, dv=9):
// attention: block 64; args p, q, k, v, out
// attention_backward_rows: block 64; args p, q, k, v, out, dout, probs, dscore
// attention_backward_keys: block 64; args p, q, dout, probs, dscore, dk, dv
//
// Floating-point order follows the WGSL; compile with --fmad=false to keep a·b + c from
// contracting into fma (the cpu backend does not fuse).

struct Params {
    unsigned int n;        // query tokens
    unsigned int pos0;     // position of the first query (cached tokens before it)
    unsigned int q_cols;   // n_heads · head_dim
    unsigned int kv_cols;  // n_kv_heads · head_dim
    unsigned int n_heads;
    unsigned int group;    // query heads per kv head
    unsigned int head_dim;
    float scale;           // 1/√head_dim
    unsigned int window;   // sliding window (positions a query sees, itself included); 0: all
    unsigned int _pad[7];
};
static_assert(sizeof(Params) == 64, "attention Params must be 64 bytes");

#define MAX_DIMS_PER_THREAD 4u  // head_dim ≤ 256

__shared__ float tile[64];
__shared__ float red[64];

static __device__ __forceinline__ unsigned int item() {
    return blockIdx.x + blockIdx.y * gridDim.x;
}

static __device__ __forceinline__ unsigned int min_u32(unsigned int a, unsigned int b) { return a < b ? a : b; }

static __device__ __forceinline__ float reduce(float v, unsigned int lid, bool take_max) {
    red[lid] = v;
    __syncthreads();
    for (unsigned int s = 32u; s > 0u; s >>= 1u) {
        if (lid < s) {
            if (take_max) { red[lid] = fmaxf(red[lid], red[lid + s]); } else { red[lid] += red[lid + s]; }
        }
        __syncthreads();
    }
    const float r = red[0];
    __syncthreads();
    return r;
}

// The first key position a query at `pos` sees.
static __device__ __forceinline__ unsigned int first_visible(const Params& p, unsigned int pos) {
    if (p.window == 0u || pos + 1u <= p.window) { return 0u; }
    return pos + 1u - p.window;
}

// One past the last query position that sees key `j` (queries of one whole sequence).
static __device__ __forceinline__ unsigned int last_seeing(const Params& p, unsigned int j) {
    if (p.window == 0u) { return p.n; }
    return min_u32(p.n, j + p.window);
}

static __device__ __forceinline__ float dot_qk(const Params& p, const float* q, const float* k,
                                               unsigned int qb, unsigned int kb) {
    float s = 0.0f;
    for (unsigned int d = 0u; d < p.head_dim; d++) { s += q[qb + d] * k[kb + d]; }
    return s;
}

// One block per (query, head); keys in tiles of 64 with a running (online) softmax.
extern "C" __global__ void __launch_bounds__(64) attention(const Params p, const float* q, const float* k,
                                                           const float* v, float* out) {
    const unsigned int lid = threadIdx.x;
    const unsigned int it = item();
    if (it >= p.n * p.n_heads) { return; }  // uniform across the block
    const unsigned int t = it / p.n_heads;
    const unsigned int h = it % p.n_heads;
    const unsigned int kvh = h / p.group;
    const unsigned int visible = p.pos0 + t + 1u;
    const unsigned int qb = t * p.q_cols + h * p.head_dim;
    float m = -3.4e38f;
    float l = 0.0f;
    float acc[MAX_DIMS_PER_THREAD];
#pragma unroll
    for (unsigned int e = 0u; e < MAX_DIMS_PER_THREAD; e++) { acc[e] = 0.0f; }
    for (unsigned int j0 = first_visible(p, p.pos0 + t); j0 < visible; j0 += 64u) {
        const unsigned int j = j0 + lid;
        float s = -3.4e38f;
        if (j < visible) { s = dot_qk(p, q, k, qb, j * p.kv_cols + kvh * p.head_dim) * p.scale; }
        tile[lid] = s;
        __syncthreads();
        const unsigned int count = min_u32(64u, visible - j0);
        float tmax = m;
        for (unsigned int i = 0u; i < count; i++) { tmax = fmaxf(tmax, tile[i]); }
        const float corr = expf(m - tmax);
        l *= corr;
#pragma unroll
        for (unsigned int e = 0u; e < MAX_DIMS_PER_THREAD; e++) { acc[e] *= corr; }
        for (unsigned int i = 0u; i < count; i++) {
            const float pj = expf(tile[i] - tmax);
            l += pj;
            const unsigned int vb = (j0 + i) * p.kv_cols + kvh * p.head_dim;
#pragma unroll
            for (unsigned int e = 0u; e < MAX_DIMS_PER_THREAD; e++) {
                const unsigned int d = lid + 64u * e;
                if (d < p.head_dim) { acc[e] += pj * v[vb + d]; }
            }
        }
        m = tmax;
        __syncthreads();
    }
#pragma unroll
    for (unsigned int e = 0u; e < MAX_DIMS_PER_THREAD; e++) {
        const unsigned int d = lid + 64u * e;
        if (d < p.head_dim) { out[qb + d] = acc[e] / l; }
    }
}

// Backward, step 1 — one block per (query t, head h): the softmax row, the score
// gradients ds_j = p_j·(dout·v_j − Σ p·dp)·scale, and dq_t = Σ_j ds_j·k_j.
extern "C" __global__ void __launch_bounds__(64) attention_backward_rows(
    const Params p, const float* q, const float* k, const float* v, float* out, const float* dout,
    float* probs, float* dscore) {
    const unsigned int lid = threadIdx.x;
    const unsigned int it = item();
    if (it >= p.n * p.n_heads) { return; }  // uniform across the block
    const unsigned int t = it / p.n_heads;
    const unsigned int h = it % p.n_heads;
    const unsigned int kvh = h / p.group;
    const unsigned int qb = t * p.q_cols + h * p.head_dim;
    const unsigned int sb = (h * p.n + t) * p.n;
    const unsigned int first = first_visible(p, t);
    float m = -3.4e38f;
    for (unsigned int j = first + lid; j <= t; j += 64u) {
        const float s = dot_qk(p, q, k, qb, j * p.kv_cols + kvh * p.head_dim) * p.scale;
        probs[sb + j] = s;
        m = fmaxf(m, s);
    }
    const float mx = reduce(m, lid, true);
    float sum = 0.0f;
    for (unsigned int j = first + lid; j <= t; j += 64u) {
        const float e = expf(probs[sb + j] - mx);
        probs[sb + j] = e;
        sum += e;
    }
    const float total = reduce(sum, lid, false);
    float weighted = 0.0f;
    for (unsigned int j = first + lid; j <= t; j += 64u) {
        const float pj = probs[sb + j] / total;
        probs[sb + j] = pj;
        const unsigned int vb = j * p.kv_cols + kvh * p.head_dim;
        float dp = 0.0f;
        for (unsigned int d = 0u; d < p.head_dim; d++) { dp += dout[qb + d] * v[vb + d]; }
        dscore[sb + j] = dp;
        weighted += pj * dp;
    }
    const float w = reduce(weighted, lid, false);
    for (unsigned int j = first + lid; j <= t; j += 64u) {
        dscore[sb + j] = probs[sb + j] * (dscore[sb + j] - w) * p.scale;
    }
    // storageBarrier(); workgroupBarrier(): the block's global writes to dscore are visible
    // to the whole block after __syncthreads (the fence only makes that explicit).
    __threadfence_block();
    __syncthreads();
    for (unsigned int d = lid; d < p.head_dim; d += 64u) {
        float acc = 0.0f;
        for (unsigned int j = first; j <= t; j++) { acc += dscore[sb + j] * k[j * p.kv_cols + kvh * p.head_dim + d]; }
        out[qb + d] = acc;
    }
}

// Backward, step 2 — one block per (key j, kv head): dk_j = Σ ds·q, dv_j = Σ p·dout over
// the queries t ≥ j of every query head that shares this kv head.
extern "C" __global__ void __launch_bounds__(64) attention_backward_keys(
    const Params p, const float* q, const float* dout, float* probs, float* dscore, float* dk, float* dv) {
    const unsigned int lid = threadIdx.x;
    const unsigned int n_kv = p.n_heads / p.group;
    const unsigned int it = item();
    if (it >= p.n * n_kv) { return; }
    const unsigned int j = it / n_kv;
    const unsigned int kvh = it % n_kv;
    for (unsigned int d = lid; d < p.head_dim; d += 64u) {
        float gk = 0.0f;
        float gv = 0.0f;
        for (unsigned int g = 0u; g < p.group; g++) {
            const unsigned int h = kvh * p.group + g;
            for (unsigned int t = j; t < last_seeing(p, j); t++) {
                const unsigned int s = (h * p.n + t) * p.n + j;
                const unsigned int qb = t * p.q_cols + h * p.head_dim + d;
                gk += dscore[s] * q[qb];
                gv += probs[s] * dout[qb];
            }
        }
        dk[j * p.kv_cols + kvh * p.head_dim + d] = gk;
        dv[j * p.kv_cols + kvh * p.head_dim + d] = gv;
    }
}
