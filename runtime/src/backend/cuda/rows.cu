// CUDA port of wgpu/rows.wgsl: row-wise ops: RMSNorm and its gradient, RoPE, cross-entropy,
// argmax. One block of 64 per row, row = blockIdx.x + blockIdx.y·gridDim.x (grid(rows));
// RoPE: one thread per rotated pair, grid(ceil(rows·n_heads·half_dims/64)).
//
// Kernels (args in WGSL binding order: p=0, x=1, weight=2, dy=3, out=4, targets=5,
// losses=6, indices=7):
// rms_norm: block 64; args p, x, weight, out
// rms_norm_backward: block 64; args p, x, weight, dy, out
// cross_entropy: block 64; args p, out, targets, losses
// rope: block 64; args p, out
// argmax_rows: block 64; args p, x, indices
//
// Floating-point order follows the WGSL; compile with --fmad=false to keep a·b + c from
// contracting into fma (the cpu backend does not fuse).

struct Params {
    unsigned int rows;
    unsigned int cols;
    float eps;
    // RoPE
    unsigned int n_heads;
    unsigned int head_dim;
    unsigned int half_dims;  // rotated pairs per head
    unsigned int pos0;
    float step;              // base^(−2/dims)
    float direction;         // 1 forward, −1 for the gradient
    unsigned int halves;     // 1: pairs (i, i + dims/2); 0: pairs (2i, 2i+1)
    unsigned int _pad[6];
};
static_assert(sizeof(Params) == 64, "rows Params must be 64 bytes");

__shared__ float red[64];
__shared__ unsigned int red_index[64];

static __device__ __forceinline__ unsigned int row_of() {
    return blockIdx.x + blockIdx.y * gridDim.x;
}

static __device__ __forceinline__ float reduce_sum(float v, unsigned int lid) {
    red[lid] = v;
    __syncthreads();
    for (unsigned int s = 32u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        __syncthreads();
    }
    const float total = red[0];
    __syncthreads();
    return total;
}

static __device__ __forceinline__ float reduce_max(float v, unsigned int lid) {
    red[lid] = v;
    __syncthreads();
    for (unsigned int s = 32u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] = fmaxf(red[lid], red[lid + s]); }
        __syncthreads();
    }
    const float total = red[0];
    __syncthreads();
    return total;
}

extern "C" __global__ void __launch_bounds__(64) rms_norm(const Params p, const float* x, const float* weight,
                                                          float* out) {
    const unsigned int lid = threadIdx.x;
    const unsigned int r = row_of();
    if (r >= p.rows) { return; }  // uniform across the block
    const unsigned int base = r * p.cols;
    float ss = 0.0f;
    for (unsigned int i = lid; i < p.cols; i += 64u) { ss += x[base + i] * x[base + i]; }
    const float total = reduce_sum(ss, lid);
    const float scale = 1.0f / sqrtf(total / (float)p.cols + p.eps);
    for (unsigned int i = lid; i < p.cols; i += 64u) { out[base + i] = (x[base + i] * scale) * weight[i]; }
}

// y = x·s·w  ⇒  dx = s·(w⊙dy) − x·s³/d·Σ(w⊙dy⊙x)
extern "C" __global__ void __launch_bounds__(64) rms_norm_backward(const Params p, const float* x,
                                                                   const float* weight, const float* dy,
                                                                   float* out) {
    const unsigned int lid = threadIdx.x;
    const unsigned int r = row_of();
    if (r >= p.rows) { return; }  // uniform across the block
    const unsigned int base = r * p.cols;
    float ss = 0.0f;
    float dot = 0.0f;
    for (unsigned int i = lid; i < p.cols; i += 64u) {
        const float v = x[base + i];
        ss += v * v;
        dot += dy[base + i] * weight[i] * v;
    }
    const float sum_sq = reduce_sum(ss, lid);
    const float sum_dot = reduce_sum(dot, lid);
    const float s = 1.0f / sqrtf(sum_sq / (float)p.cols + p.eps);
    const float k = s * s * s * sum_dot / (float)p.cols;
    for (unsigned int i = lid; i < p.cols; i += 64u) {
        out[base + i] = s * (dy[base + i] * weight[i]) - k * x[base + i];
    }
}

// Losses and d loss_sum / d logits: out starts as a copy of the logits.
extern "C" __global__ void __launch_bounds__(64) cross_entropy(const Params p, float* out,
                                                               const unsigned int* targets, float* losses) {
    const unsigned int lid = threadIdx.x;
    const unsigned int r = row_of();
    if (r >= p.rows) { return; }  // uniform across the block
    const unsigned int base = r * p.cols;
    float m = -3.4e38f;
    for (unsigned int i = lid; i < p.cols; i += 64u) { m = fmaxf(m, out[base + i]); }
    const float mx = reduce_max(m, lid);
    float s = 0.0f;
    for (unsigned int i = lid; i < p.cols; i += 64u) { s += expf(out[base + i] - mx); }
    const float lse = logf(reduce_sum(s, lid)) + mx;
    const unsigned int target_index = targets[r];
    if (lid == 0u) { losses[r] = lse - out[base + target_index]; }
    __syncthreads();
    for (unsigned int i = lid; i < p.cols; i += 64u) {
        float g = expf(out[base + i] - lse);
        if (i == target_index) { g -= 1.0f; }
        out[base + i] = g;
    }
}

// sin/cos after reducing the angle by 2π in two parts, so positions in the thousands keep
// the accuracy the CPU's f32 sin_cos has (GPU sin is only accurate near zero).
static __device__ __forceinline__ void cos_sin(float theta, float& c, float& s) {
    const float k = rintf(theta * 0.15915494f);  // WGSL round(): half to even
    const float r = (theta - k * 6.28125f) - k * 0.0019353071795864769f;
    c = cosf(r);
    s = sinf(r);
}

// In place on `out`; one thread per (row, head, pair).
extern "C" __global__ void __launch_bounds__(64) rope(const Params p, float* out) {
    const unsigned int idx = (blockIdx.x * blockDim.x + threadIdx.x)
        + (blockIdx.y * blockDim.y + threadIdx.y) * gridDim.x * 64u;  // gid.x + gid.y·nwg.x·64
    const unsigned int per_row = p.n_heads * p.half_dims;
    if (idx >= p.rows * per_row) { return; }
    const unsigned int r = idx / per_row;
    const unsigned int h = (idx % per_row) / p.half_dims;
    const unsigned int i = idx % p.half_dims;
    // pos·step^i by repeated f32 multiplication, as ggml builds its cache.
    float theta = (float)(p.pos0 + r);
    for (unsigned int k = 0u; k < i; k++) { theta *= p.step; }
    float cs_x, cs_y;
    cos_sin(theta, cs_x, cs_y);
    const float s = p.direction * cs_y;
    unsigned int a = 2u * i;
    unsigned int b = 2u * i + 1u;
    if (p.halves == 1u) {
        a = i;
        b = i + p.half_dims;
    }
    const unsigned int base = r * p.cols + h * p.head_dim;
    const float x0 = out[base + a];
    const float x1 = out[base + b];
    out[base + a] = x0 * cs_x - x1 * s;
    out[base + b] = x0 * s + x1 * cs_x;
}

// Index of each row's largest value, the first one on ties (as the cpu sampler's argmax), so
// greedy decoding reads back one word per token instead of the whole vocabulary.
extern "C" __global__ void __launch_bounds__(64) argmax_rows(const Params p, const float* x,
                                                             unsigned int* indices) {
    const unsigned int lid = threadIdx.x;
    const unsigned int r = row_of();
    if (r >= p.rows) { return; }  // uniform across the block
    const unsigned int base = r * p.cols;
    unsigned int best = lid < p.cols - 1u ? lid : p.cols - 1u;
    for (unsigned int i = lid; i < p.cols; i += 64u) {
        if (x[base + i] > x[base + best]) { best = i; }
    }
    red[lid] = x[base + best];
    red_index[lid] = best;
    __syncthreads();
    for (unsigned int s = 32u; s > 0u; s >>= 1u) {
        if (lid < s) {
            const float v = red[lid + s];
            const unsigned int j = red_index[lid + s];
            if (v > red[lid] || (v == red[lid] && j < red_index[lid])) {
                red[lid] = v;
                red_index[lid] = j;
            }
        }
        __syncthreads();
    }
    if (lid == 0u) { indices[r] = red_index[0]; }
}
