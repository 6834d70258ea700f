// CUDA port of wgpu/matmul.wgsl: y = x · Wᵀ for one row-range part of W, its transpose
// dx += dy · W, embedding lookup, and 8-bit activation quantization.
// Compiled as "#define DTYPE N\n" + quant.cu + matmul.cu (quant.cu: the weight decoders).
//
// Kernels (args in WGSL binding order: p=0, w=1, x=2, y=3, tokens=4, xq=5):
// matmul: block 64; args p, w, x, y
// matmul_backward: block 64; args p, w, x, y
// embed: block 64; args p, w, y, tokens
// quantize_q8: block 64; args p, x, xq
// matmul_q8: block 64; args p, w, y, xq
//
// Grids as the wgpu host dispatches them: matmul, matmul_q8 (ceil(rows/64), ceil(n/4));
// matmul_backward (ceil(ceil(cols/4)/64), ceil(n/8)); embed (ceil(cols/64), n);
// quantize_q8 (ceil((cols/32)/64), n).
//
// Floating-point order follows the WGSL; compile with --fmad=false to keep a·b + c from
// contracting into fma (the cpu backend does not fuse).

struct Params {
    unsigned int rows;      // weight rows in this part
    unsigned int cols;      // elements per weight row
    unsigned int n;         // tokens
    unsigned int row_bytes;
    unsigned int out_cols;  // all weight rows (width of y and dy)
    unsigned int row0;      // first weight row of this part
    unsigned int _pad[10];
};
static_assert(sizeof(Params) == 64, "matmul Params must be 64 bytes");

#define TOKENS 4u
#define BACKWARD_TOKENS 8u
#define XQ_WORDS 10u

static __device__ __forceinline__ unsigned int min_u32(unsigned int a, unsigned int b) { return a < b ? a : b; }

// y = x · Wᵀ element by element (float formats, and block formats without an integer decoder),
// in f32 like the cpu backend: one invocation per (weight row, 4 tokens).
extern "C" __global__ void __launch_bounds__(64) matmul(const Params p, const unsigned int* w,
                                                        const float* x, float* y) {
    const unsigned int r = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned int t0 = (blockIdx.y * blockDim.y + threadIdx.y) * TOKENS;
    if (r >= p.rows || t0 >= p.n) { return; }
    const unsigned int nt = min_u32(TOKENS, p.n - t0);
    const unsigned int rb = r * p.row_bytes;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (unsigned int c = 0u; c < p.cols; c++) {
        const float v = weight_at(w, rb, c);
#pragma unroll
        for (unsigned int tt = 0u; tt < TOKENS; tt++) {
            if (tt < nt) { acc[tt] += v * x[(t0 + tt) * p.cols + c]; }
        }
    }
#pragma unroll
    for (unsigned int tt = 0u; tt < TOKENS; tt++) {
        if (tt < nt) { y[(t0 + tt) * p.out_cols + p.row0 + r] = acc[tt]; }
    }
}

// y[t, c..c+4] += v, within the row.
static __device__ __forceinline__ void add_columns(const Params& p, float* y, unsigned int t, unsigned int c,
                                                   const float v[4]) {
    const unsigned int m = min_u32(4u, p.cols - c);
#pragma unroll
    for (unsigned int j = 0u; j < 4u; j++) {
        if (j < m) { y[t * p.cols + c + j] += v[j]; }
    }
}

// dx[t, c] += Σ_r dy[t, row0 + r] · W[r, c]: one invocation per (4 columns, 8 tokens), so a
// block header and a word of quants are decoded once for 32 products. x holds dy here and y
// accumulates dx, so parts of a split weight add up in turn.
extern "C" __global__ void __launch_bounds__(64) matmul_backward(const Params p, const unsigned int* w,
                                                                 const float* x, float* y) {
    const unsigned int c = (blockIdx.x * blockDim.x + threadIdx.x) * 4u;
    const unsigned int t0 = (blockIdx.y * blockDim.y + threadIdx.y) * BACKWARD_TOKENS;
    if (c >= p.cols || t0 >= p.n) { return; }
    // Rows of dy for tokens past the end repeat the last one; their sums are not stored.
    const unsigned int last = p.n - 1u;
    unsigned int g[BACKWARD_TOKENS];
    g[0] = t0 * p.out_cols + p.row0;
#pragma unroll
    for (unsigned int tt = 1u; tt < BACKWARD_TOKENS; tt++) {
        g[tt] = min_u32(t0 + tt, last) * p.out_cols + p.row0;
    }
    float a[BACKWARD_TOKENS][4];
#pragma unroll
    for (unsigned int tt = 0u; tt < BACKWARD_TOKENS; tt++) {
#pragma unroll
        for (unsigned int i = 0u; i < 4u; i++) { a[tt][i] = 0.0f; }
    }
    for (unsigned int r = 0u; r < p.rows; r++) {
        float v[4];
        weight_at4(w, r * p.row_bytes, c, p.cols, v);
#pragma unroll
        for (unsigned int tt = 0u; tt < BACKWARD_TOKENS; tt++) {
            const float xv = x[g[tt] + r];
#pragma unroll
            for (unsigned int i = 0u; i < 4u; i++) { a[tt][i] += xv * v[i]; }
        }
    }
    const unsigned int nt = min_u32(BACKWARD_TOKENS, p.n - t0);
    add_columns(p, y, t0, c, a[0]);
#pragma unroll
    for (unsigned int tt = 1u; tt < BACKWARD_TOKENS; tt++) {
        if (nt > tt) { add_columns(p, y, t0 + tt, c, a[tt]); }
    }
}

// One invocation per (column, token): the token's row, if it lies in this part.
extern "C" __global__ void __launch_bounds__(64) embed(const Params p, const unsigned int* w, float* y,
                                                       const unsigned int* tokens) {
    const unsigned int c = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned int t = blockIdx.y * blockDim.y + threadIdx.y;
    if (c >= p.cols || t >= p.n) { return; }
    const unsigned int tok = tokens[t];
    if (tok < p.row0 || tok >= p.row0 + p.rows) { return; }
    y[t * p.cols + c] = weight_at(w, (tok - p.row0) * p.row_bytes, c);
}

// ---- Integer path: activations quantized to 8 bits in blocks of 32, as the cpu backend does
// (runtime/src/quant/dot.rs), so both backends compute the same block sums.
// A quantized block is 10 words: scale d, d·Σq (both rounded to f16 precision), 32 × i8.

// quantizeToF16: x rounded to the nearest f16 value (ties to even), as an f32; past the f16
// range it rounds to ±inf (as F16C does; WGSL leaves that case indeterminate).
static __device__ __forceinline__ float quantize_to_f16(float x) {
    const unsigned int u = __float_as_uint(x);
    const unsigned int sign = u & 0x80000000u;
    unsigned int a = u ^ sign;
    if (a >= 0x7f800000u) { return x; }  // inf, nan
    if (a < 0x38800000u) {               // below 2^-14: f16 subnormal steps of 2^-24
        return rintf(x * 16777216.0f) / 16777216.0f;
    }
    a = (a + 0x0fffu + ((a >> 13u) & 1u)) & ~0x1fffu;
    if (a > 0x477fe000u) { a = 0x7f800000u; }  // past 65504 after rounding
    return __uint_as_float(sign | a);
}

// x rounded to the nearest f16 value, subnormals included (as the cpu's F16C conversion does):
// GPUs may flush quantizeToF16's subnormal results to zero, and an activation block of small
// values (a GeLU's near-zero outputs) would then vanish from the product.
static __device__ __forceinline__ float round_to_f16(float x) {
    // WGSL round() rounds half to even: rintf.
    if (fabsf(x) < 6.103515625e-5f) { return rintf(x * 16777216.0f) / 16777216.0f; }
    return quantize_to_f16(x);
}

// One invocation per (block, token): amax/127 scale, round half to even, like ggml.
extern "C" __global__ void __launch_bounds__(64) quantize_q8(const Params p, const float* x, unsigned int* xq) {
    const unsigned int b = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned int t = blockIdx.y * blockDim.y + threadIdx.y;
    const unsigned int blocks = p.cols / 32u;
    if (b >= blocks || t >= p.n) { return; }
    const unsigned int x0 = t * p.cols + b * 32u;
    float amax = 0.0f;
    for (unsigned int i = 0u; i < 32u; i++) { amax = fmaxf(amax, fabsf(x[x0 + i])); }
    const float d = amax / 127.0f;
    float id = 0.0f;
    if (amax > 0.0f) { id = 127.0f / amax; }
    const unsigned int o = (t * blocks + b) * XQ_WORDS;
    int sum = 0;
    for (unsigned int k = 0u; k < 8u; k++) {
        unsigned int packed = 0u;
#pragma unroll
        for (unsigned int i = 0u; i < 4u; i++) {
            const int q = (int)rintf(x[x0 + 4u * k + i] * id);
            sum += q;
            packed |= ((unsigned int)q & 0xffu) << (8u * i);
        }
        xq[o + 2u + k] = packed;
    }
    xq[o] = __float_as_uint(round_to_f16(d));
    xq[o + 1u] = __float_as_uint(round_to_f16(d * (float)sum));
}

// Σ of four signed byte products (dot4I8Packed). __dp4a is the same exact integer sum.
static __device__ __forceinline__ int dot4(unsigned int a, unsigned int b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 610
    return __dp4a((int)a, (int)b, 0);
#else
    int s = 0;
#pragma unroll
    for (unsigned int i = 0u; i < 4u; i++) {
        s += (((int)(a << (24u - 8u * i))) >> 24) * (((int)(b << (24u - 8u * i))) >> 24);
    }
    return s;
#endif
}

// One weight block decoded for the integer dot: 32 values as signed bytes (elements 0..15 in
// `lo`, 16..31 in `hi`, four to a word, in the activation block's order) and the factors of
// Σ(lo·x) and Σ(hi·x) and of the activation block's sum (for formats with an offset).
struct Decoded {
    unsigned int lo[4];
    unsigned int hi[4];
    float scale_x;
    float scale_y;
    float offset;
};

// Four bits of a Q5 block's high-bit word as bit 4 of four bytes.
static __device__ __forceinline__ unsigned int spread4(unsigned int b) {
    return ((b & 1u) << 4u) | ((b & 2u) << 11u) | ((b & 4u) << 18u) | ((b & 8u) << 25u);
}

static __device__ __forceinline__ Decoded decode(const unsigned int* w, unsigned int rb, unsigned int blk) {
    Decoded out = {};
    const unsigned int nib = 0x0f0f0f0fu;
    switch (DTYPE) {
        case 3u: {
            const unsigned int base = rb + 34u * blk;
            const float d = f16_at(w, base);
#pragma unroll
            for (unsigned int i = 0u; i < 4u; i++) {
                out.lo[i] = word_at(w, base + 2u + 4u * i);
                out.hi[i] = word_at(w, base + 18u + 4u * i);
            }
            out.scale_x = d;
            out.scale_y = d;
            out.offset = 0.0f;
            break;
        }
        case 4u: {
            const unsigned int base = rb + 18u * blk;
            const float d = f16_at(w, base);
#pragma unroll
            for (unsigned int i = 0u; i < 4u; i++) {
                const unsigned int q = word_at(w, base + 2u + 4u * i);
                out.lo[i] = q & nib;
                out.hi[i] = (q >> 4u) & nib;
            }
            out.scale_x = d;
            out.scale_y = d;
            out.offset = -8.0f * d;
            break;
        }
        case 5u: {
            const unsigned int base = rb + 20u * blk;
            const unsigned int dmw = word_at(w, base);
#pragma unroll
            for (unsigned int i = 0u; i < 4u; i++) {
                const unsigned int q = word_at(w, base + 4u + 4u * i);
                out.lo[i] = q & nib;
                out.hi[i] = (q >> 4u) & nib;
            }
            out.scale_x = unpack_lo(dmw);
            out.scale_y = unpack_lo(dmw);
            out.offset = unpack_hi(dmw);
            break;
        }
        case 8u: case 9u: {
            // Q5_0 / Q5_1: nibbles as Q4, bit 4 of element j is bit j of a u32 header word.
            const unsigned int base = rb + q5_bytes() * blk;
            const unsigned int qh = word_at(w, base + q5_high());
#pragma unroll
            for (unsigned int i = 0u; i < 4u; i++) {
                const unsigned int q = word_at(w, base + q5_high() + 4u + 4u * i);
                out.lo[i] = (q & nib) | spread4((qh >> (4u * i)) & 15u);
                out.hi[i] = ((q >> 4u) & nib) | spread4((qh >> (16u + 4u * i)) & 15u);
            }
            if (DTYPE == 8u) {
                const float d = f16_at(w, base);
                out.scale_x = d;
                out.scale_y = d;
                out.offset = -16.0f * d;
            } else {
                const unsigned int dmw = word_at(w, base);
                out.scale_x = unpack_lo(dmw);
                out.scale_y = unpack_lo(dmw);
                out.offset = unpack_hi(dmw);
            }
            break;
        }
        case 6u: {
            const unsigned int j = blk % 8u;
            const unsigned int base = rb + 144u * (blk / 8u);
            float kx, ky;
            q4k_factors(w, base, j, kx, ky);
            const unsigned int q0 = base + 16u + 32u * (j / 2u);
            const unsigned int shift = (j % 2u) * 4u;
#pragma unroll
            for (unsigned int i = 0u; i < 4u; i++) {
                out.lo[i] = (word_at(w, q0 + 4u * i) >> shift) & nib;
                out.hi[i] = (word_at(w, q0 + 16u + 4u * i) >> shift) & nib;
            }
            out.scale_x = kx;
            out.scale_y = kx;
            out.offset = -ky;
            break;
        }
        default: {
            // Q6_K: q = low nibble | 2 high bits << 4, value (q − 32)·scale, a scale per 16.
            // (q + 0x60) ^ 0x80 is q − 32 as a signed byte, with no carry between bytes.
            const unsigned int sb = blk % 8u;
            const unsigned int base = rb + 210u * (blk / 8u);
            const unsigned int n = sb / 4u;
            const unsigned int j = sb % 4u;
            const unsigned int lshift = (j / 2u) * 4u;
            const unsigned int hshift = 2u * j;
            const unsigned int ql = base + 64u * n + 32u * (j % 2u);
            const unsigned int qh = base + 128u + 32u * n;
            const unsigned int bias = 0x60606060u;
            const unsigned int flip = 0x80808080u;
#pragma unroll
            for (unsigned int i = 0u; i < 4u; i++) {
                const unsigned int low_lo = (word_at(w, ql + 4u * i) >> lshift) & nib;
                const unsigned int low_hi = (word_at(w, ql + 16u + 4u * i) >> lshift) & nib;
                const unsigned int high_lo = (word_at(w, qh + 4u * i) >> hshift) & 0x03030303u;
                const unsigned int high_hi = (word_at(w, qh + 16u + 4u * i) >> hshift) & 0x03030303u;
                out.lo[i] = ((low_lo | (high_lo << 4u)) + bias) ^ flip;
                out.hi[i] = ((low_hi | (high_hi << 4u)) + bias) ^ flip;
            }
            const float d = f16_at(w, base + 208u);
            out.scale_x = d * i8_of(byte_at(w, base + 192u + 8u * n + 2u * j));
            out.scale_y = d * i8_of(byte_at(w, base + 192u + 8u * n + 1u + 2u * j));
            out.offset = 0.0f;
            break;
        }
    }
    return out;
}

// A decoded block against the quantized activation block at word `xo`.
static __device__ __forceinline__ float block_dot(const unsigned int* xq, const Decoded& k, unsigned int xo) {
    const float xd = __uint_as_float(xq[xo]);
    const float xsum = __uint_as_float(xq[xo + 1u]);
    const int s_lo = dot4(k.lo[0], xq[xo + 2u]) + dot4(k.lo[1], xq[xo + 3u])
        + dot4(k.lo[2], xq[xo + 4u]) + dot4(k.lo[3], xq[xo + 5u]);
    const int s_hi = dot4(k.hi[0], xq[xo + 6u]) + dot4(k.hi[1], xq[xo + 7u])
        + dot4(k.hi[2], xq[xo + 8u]) + dot4(k.hi[3], xq[xo + 9u]);
    return xd * (k.scale_x * (float)s_lo + k.scale_y * (float)s_hi) + k.offset * xsum;
}

// y = x · Wᵀ for integer formats: one invocation per (weight row, 4 tokens); each block is
// decoded once for the four.
extern "C" __global__ void __launch_bounds__(64) matmul_q8(const Params p, const unsigned int* w, float* y,
                                                           unsigned int* xq) {
    const unsigned int r = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned int t0 = (blockIdx.y * blockDim.y + threadIdx.y) * TOKENS;
    if (r >= p.rows || t0 >= p.n) { return; }
    const unsigned int nt = min_u32(TOKENS, p.n - t0);
    const unsigned int blocks = p.cols / 32u;
    const unsigned int rb = r * p.row_bytes;
    const unsigned int stride = blocks * XQ_WORDS;
    const unsigned int x0 = t0 * stride;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (unsigned int b = 0u; b < blocks; b++) {
        const Decoded k = decode(w, rb, b);
        const unsigned int xo = x0 + b * XQ_WORDS;
        acc[0] += block_dot(xq, k, xo);
        if (nt > 1u) { acc[1] += block_dot(xq, k, xo + stride); }
        if (nt > 2u) { acc[2] += block_dot(xq, k, xo + 2u * stride); }
        if (nt > 3u) { acc[3] += block_dot(xq, k, xo + 3u * stride); }
    }
#pragma unroll
    for (unsigned int tt = 0u; tt < TOKENS; tt++) {
        if (tt < nt) { y[(t0 + tt) * p.out_cols + p.row0 + r] = acc[tt]; }
    }
}
