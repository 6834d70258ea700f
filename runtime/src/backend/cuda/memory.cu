// CUDA port of wgpu/memory.wgsl: the memory layer: product-key top-k, value gather, and the
// sparse row ops of learning. The value table may be split into row-range parts; every op
// that touches it runs once per part, on the rows inside [row0, row0 + part_rows).
// product_key_topk: one block per (token, head), grid(n·heads), item = blockIdx.x +
// blockIdx.y·gridDim.x. The others: one thread per element of n × dim, grid(ceil(n·dim/64)).
//
// Kernels (args in WGSL binding order: p=0, query=1, keys=2, slot_ids=3, slot_weights=4,
// ids=5, weights=6, src=7, dst=8, offsets=9):
// product_key_topk: block 64; args p, query, keys, slot_ids, slot_weights
// gather_values: block 64; args p, ids, weights, src, dst
// value_grads: block 64; args p, ids, weights, src, dst, offsets
// read_rows: block 64; args p, ids, src, dst
// write_rows: block 64; args p, ids, src, dst
// sgd_rows: block 64; args p, ids, src, dst
//
// Floating-point order follows the WGSL; compile with --fmad=false to keep a·b + c from
// contracting into fma (the cpu backend does not fuse).

struct Params {
    unsigned int n;          // tokens (top-k, gather) or selected rows (row ops)
    unsigned int dim;        // value width
    unsigned int picks;      // slots per token (all heads)
    unsigned int row0;       // first value row of this part
    unsigned int part_rows;  // value rows in this part
    float lr;
    // product-key shape
    unsigned int heads;
    unsigned int n_keys;
    unsigned int top_k;
    unsigned int k_dim;
    unsigned int _pad[6];
};
static_assert(sizeof(Params) == 64, "memory Params must be 64 bytes");

#define MAX_KEYS 512u
#define MAX_TOP_K 32u

__shared__ float s1[MAX_KEYS];
__shared__ float s2[MAX_KEYS];
__shared__ float best1_s[MAX_TOP_K];
__shared__ unsigned int best1_i[MAX_TOP_K];
__shared__ float best2_s[MAX_TOP_K];
__shared__ unsigned int best2_i[MAX_TOP_K];
__shared__ float cand_s[1024];  // MAX_TOP_K²
__shared__ unsigned int cand_i[1024];
__shared__ float top_s[MAX_TOP_K];
__shared__ unsigned int top_i[MAX_TOP_K];

static __device__ __forceinline__ unsigned int min_u32(unsigned int a, unsigned int b) { return a < b ? a : b; }

// The ranking rule of the CPU lookup: higher score first, then the smaller index.
// A NaN score ranks as -inf: the order must stay strict and total, or items share a rank and
// some top-k slots are never written — which wgpu would read as zeros, but CUDA's shared
// memory keeps whatever an earlier block left there.
static __device__ __forceinline__ float rank_score(float s) { return s != s ? __uint_as_float(0xff800000u) : s; }

static __device__ __forceinline__ bool better(float sa, unsigned int ia, float sb, unsigned int ib) {
    sa = rank_score(sa);
    sb = rank_score(sb);
    return sa > sb || (sa == sb && ia < ib);
}

// One block per (token, head). Ranks are counted, not sorted: the rule is a strict total
// order, so every kept item gets a distinct place.
extern "C" __global__ void __launch_bounds__(64) product_key_topk(const Params p, const float* query,
                                                                  const float* keys, unsigned int* slot_ids,
                                                                  float* slot_weights) {
    const unsigned int lid = threadIdx.x;
    const unsigned int it = blockIdx.x + blockIdx.y * gridDim.x;
    if (it >= p.n * p.heads) { return; }  // uniform across the block
    const unsigned int t = it / p.heads;
    const unsigned int h = it % p.heads;
    const unsigned int half_k = p.k_dim / 2u;
    const unsigned int qb = t * p.heads * p.k_dim + h * p.k_dim;
    const unsigned int kb = h * 2u * p.n_keys * half_k;
    for (unsigned int i = lid; i < p.n_keys; i += 64u) {
        float a = 0.0f;
        float b = 0.0f;
        for (unsigned int d = 0u; d < half_k; d++) {
            a += query[qb + d] * keys[kb + i * half_k + d];
            b += query[qb + half_k + d] * keys[kb + (p.n_keys + i) * half_k + d];
        }
        s1[i] = a;
        s2[i] = b;
    }
    __syncthreads();
    const unsigned int ka = min_u32(p.top_k, p.n_keys);
    for (unsigned int i = lid; i < p.n_keys; i += 64u) {
        unsigned int r1 = 0u;
        unsigned int r2 = 0u;
        for (unsigned int j = 0u; j < p.n_keys; j++) {
            if (better(s1[j], j, s1[i], i)) { r1++; }
            if (better(s2[j], j, s2[i], i)) { r2++; }
        }
        if (r1 < ka) { best1_s[r1] = s1[i]; best1_i[r1] = i; }
        if (r2 < ka) { best2_s[r2] = s2[i]; best2_i[r2] = i; }
    }
    __syncthreads();
    const unsigned int nc = ka * ka;
    for (unsigned int c = lid; c < nc; c += 64u) {
        const unsigned int i = c / ka;
        const unsigned int j = c % ka;
        cand_s[c] = best1_s[i] + best2_s[j];
        cand_i[c] = best1_i[i] * p.n_keys + best2_i[j];
    }
    __syncthreads();
    const unsigned int kept = min_u32(p.top_k, nc);
    for (unsigned int c = lid; c < nc; c += 64u) {
        unsigned int r = 0u;
        for (unsigned int j = 0u; j < nc; j++) {
            if (better(cand_s[j], cand_i[j], cand_s[c], cand_i[c])) { r++; }
        }
        if (r < kept) { top_s[r] = cand_s[c]; top_i[r] = cand_i[c]; }
    }
    __syncthreads();
    if (lid == 0u) {
        const float mx = top_s[0];
        float sum = 0.0f;
        for (unsigned int r = 0u; r < kept; r++) { sum += expf(top_s[r] - mx); }
        const float inv = 1.0f / sum;
        const unsigned int ob = (t * p.heads + h) * p.top_k;
        for (unsigned int r = 0u; r < kept; r++) {
            slot_ids[ob + r] = top_i[r];
            slot_weights[ob + r] = expf(top_s[r] - mx) * inv;
        }
    }
}

static __device__ __forceinline__ unsigned int flat() {
    // gid.x + gid.y·nwg.x·64
    return (blockIdx.x * blockDim.x + threadIdx.x) + (blockIdx.y * blockDim.y + threadIdx.y) * gridDim.x * 64u;
}

// dst[t] += Σ_j weights[t, j] · values[ids[t, j]] for the ids in this part (src = values).
extern "C" __global__ void __launch_bounds__(64) gather_values(const Params p, const unsigned int* ids,
                                                               const float* weights, const float* src,
                                                               float* dst) {
    const unsigned int i = flat();
    if (i >= p.n * p.dim) { return; }
    const unsigned int t = i / p.dim;
    const unsigned int c = i % p.dim;
    float acc = 0.0f;
    for (unsigned int j = 0u; j < p.picks; j++) {
        const unsigned int id = ids[t * p.picks + j];
        if (id >= p.row0 && id < p.row0 + p.part_rows) {
            acc += weights[t * p.picks + j] * src[(id - p.row0) * p.dim + c];
        }
    }
    dst[i] += acc;
}

// Gradient of selected row r: Σ over its hits e (offsets[r]..offsets[r+1] into `ids`, which
// holds flat (token·picks + pick) positions) of weights[e] · dy[token]. src = dy.
extern "C" __global__ void __launch_bounds__(64) value_grads(const Params p, const unsigned int* ids,
                                                             const float* weights, const float* src,
                                                             float* dst, const unsigned int* offsets) {
    const unsigned int i = flat();
    if (i >= p.n * p.dim) { return; }
    const unsigned int r = i / p.dim;
    const unsigned int c = i % p.dim;
    float acc = 0.0f;
    for (unsigned int e = offsets[r]; e < offsets[r + 1u]; e++) {
        const unsigned int hit = ids[e];
        acc += weights[hit] * src[(hit / p.picks) * p.dim + c];
    }
    dst[i] = acc;
}

// dst row r = table row ids[r] (src = the table part).
extern "C" __global__ void __launch_bounds__(64) read_rows(const Params p, const unsigned int* ids,
                                                           const float* src, float* dst) {
    const unsigned int i = flat();
    if (i >= p.n * p.dim) { return; }
    const unsigned int id = ids[i / p.dim];
    if (id >= p.row0 && id < p.row0 + p.part_rows) {
        dst[i] = src[(id - p.row0) * p.dim + i % p.dim];
    }
}

// Table row ids[r] (dst = the table part) = src row r.
extern "C" __global__ void __launch_bounds__(64) write_rows(const Params p, const unsigned int* ids,
                                                            const float* src, float* dst) {
    const unsigned int i = flat();
    if (i >= p.n * p.dim) { return; }
    const unsigned int id = ids[i / p.dim];
    if (id >= p.row0 && id < p.row0 + p.part_rows) {
        dst[(id - p.row0) * p.dim + i % p.dim] = src[i];
    }
}

// Table row ids[r] −= lr · src row r: the sparse SGD step.
extern "C" __global__ void __launch_bounds__(64) sgd_rows(const Params p, const unsigned int* ids,
                                                          const float* src, float* dst) {
    const unsigned int i = flat();
    if (i >= p.n * p.dim) { return; }
    const unsigned int id = ids[i / p.dim];
    if (id >= p.row0 && id < p.row0 + p.part_rows) {
        const unsigned int o = (id - p.row0) * p.dim + i % p.dim;
        dst[o] = dst[o] - p.lr * src[i];
    }
}
