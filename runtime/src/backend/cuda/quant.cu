// CUDA port of wgpu/quant.wgsl: reads weights stored in a ggml block format.
// Kernels: none (helpers only; the kernels are in matmul.cu).
//
// No kernels here: this file is the front half of the matmul module, which the host compiles
// with NVRTC as   "#define DTYPE N\n" + quant.cu + matmul.cu   (one module per block format).
// DTYPE is a preprocessor MACRO (not a constexpr), the weight block format code:
// 0 F32, 1 F16, 2 BF16, 3 Q8_0, 4 Q4_0, 5 Q4_1, 6 Q4_K, 7 Q6_K, 8 Q5_0, 9 Q5_1, 10 Q2_K,
// 11 Q3_K, 12 Q5_K.
//
// The WGSL module-scope binding `w` (binding 1, the weight bytes as u32 words) is passed to
// every helper as its first argument. No #include: f16 conversions are done with bit operations.
// Weight buffers must be allocated rounded up to a multiple of 4 bytes (as the wgpu host does):
// word_at reads the word after an unaligned offset.

#ifndef DTYPE
#error "DTYPE (the weight block format code) must be defined before quant.cu"
#endif

// unpack2x16float(h).x: the f16 in the low 16 bits of h, exactly (subnormals, inf, nan kept).
static __device__ __forceinline__ float f16_to_f32(unsigned int h) {
    const unsigned int sign = (h & 0x8000u) << 16;
    const unsigned int e = (h >> 10) & 0x1fu;
    const unsigned int m = h & 0x3ffu;
    if (e == 0u) {
        // Zero or subnormal: m · 2^-24, exact in f32 (and a normal f32 when m > 0).
        return __uint_as_float(__float_as_uint((float)m * 5.9604644775390625e-8f) | sign);
    }
    if (e == 31u) { return __uint_as_float(sign | 0x7f800000u | (m << 13)); }
    return __uint_as_float(sign | ((e + 112u) << 23) | (m << 13));
}

// unpack2x16float(u).x / .y
static __device__ __forceinline__ float unpack_lo(unsigned int u) { return f16_to_f32(u & 0xffffu); }
static __device__ __forceinline__ float unpack_hi(unsigned int u) { return f16_to_f32(u >> 16); }

static __device__ __forceinline__ unsigned int byte_at(const unsigned int* w, unsigned int o) {
    return (w[o >> 2u] >> ((o & 3u) * 8u)) & 0xffu;
}

static __device__ __forceinline__ unsigned int half_at(const unsigned int* w, unsigned int o) {
    return byte_at(w, o) | (byte_at(w, o + 1u) << 8u);
}

static __device__ __forceinline__ float f16_at(const unsigned int* w, unsigned int o) {
    return f16_to_f32(half_at(w, o));
}

// Four bytes starting at any 2-aligned byte offset (blocks of 18, 34 or 210 bytes are).
static __device__ __forceinline__ unsigned int word_at(const unsigned int* w, unsigned int o) {
    const unsigned int i = o >> 2u;
    const unsigned int s = (o & 3u) * 8u;
    if (s == 0u) { return w[i]; }
    return (w[i] >> s) | (w[i + 1u] << (32u - s));
}

// One float-format weight element: F32, F16 or BF16.
static __device__ __forceinline__ float float_at(const unsigned int* w, unsigned int rb, unsigned int c) {
    if (DTYPE == 0u) { return __uint_as_float(w[(rb >> 2u) + c]); }
    const unsigned int o = rb + 2u * c;
    const unsigned int h = (w[o >> 2u] >> ((o & 2u) * 8u)) & 0xffffu;
    if (DTYPE == 1u) { return f16_to_f32(h); }
    return __uint_as_float(h << 16u);
}

static __device__ __forceinline__ float i8_of(unsigned int b) {
    return (float)(((int)(b << 24u)) >> 24);
}

// Q4_K sub-block `s` of the super-block at byte `base`: (d·scale, dmin·min), from the 6-bit
// scales and mins packed in 12 bytes.
static __device__ __forceinline__ void q4k_factors(const unsigned int* w, unsigned int base, unsigned int s,
                                                   float& kx, float& ky) {
    const unsigned int dmw = w[base >> 2u];
    const float dm_x = unpack_lo(dmw);
    const float dm_y = unpack_hi(dmw);
    const unsigned int sc = base + 4u;
    unsigned int scale;
    unsigned int mn;
    if (s < 4u) {
        scale = byte_at(w, sc + s) & 63u;
        mn = byte_at(w, sc + s + 4u) & 63u;
    } else {
        scale = (byte_at(w, sc + s + 4u) & 15u) | ((byte_at(w, sc + s - 4u) >> 6u) << 4u);
        mn = (byte_at(w, sc + s + 4u) >> 4u) | ((byte_at(w, sc + s) >> 6u) << 4u);
    }
    kx = dm_x * (float)scale;
    ky = dm_y * (float)mn;
}

// Q5_0 / Q5_1 block: (block bytes, offset of its 32 high bits).
static __device__ __forceinline__ unsigned int q5_bytes() { return DTYPE == 8u ? 22u : 24u; }
static __device__ __forceinline__ unsigned int q5_high() { return DTYPE == 8u ? 2u : 4u; }

// Value of a 5-bit quant `q` of the Q5_0 / Q5_1 block at byte `base` (one lane of q5_value).
static __device__ __forceinline__ float q5_value(const unsigned int* w, unsigned int base, float q) {
    if (DTYPE == 8u) { return f16_at(w, base) * (q - 16.0f); }
    const unsigned int dmw = word_at(w, base);
    return unpack_lo(dmw) * q + unpack_hi(dmw);
}

// Element `e` (0..256) of the Q2_K / Q3_K / Q5_K super-block at byte `base` (see more_k.rs:
// halves of 128, runs of 32 sharing a column of quant bytes).
static __device__ __forceinline__ float low_k_at(const unsigned int* w, unsigned int base, unsigned int e) {
    const unsigned int hf = e / 128u;
    const unsigned int run = (e % 128u) / 32u;
    const unsigned int l = e % 32u;
    if (DTYPE == 10u) {
        const unsigned int sc = byte_at(w, base + e / 16u);
        const unsigned int q = (byte_at(w, base + 16u + hf * 32u + l) >> (2u * run)) & 3u;
        return f16_at(w, base + 80u) * (float)(sc & 15u) * (float)q
            - f16_at(w, base + 82u) * (float)(sc >> 4u);
    }
    if (DTYPE == 11u) {
        const unsigned int i = e / 16u;
        unsigned int low;
        if (i < 8u) { low = byte_at(w, base + 96u + i) & 15u; } else { low = byte_at(w, base + 88u + i) >> 4u; }
        const unsigned int high = (byte_at(w, base + 104u + i % 4u) >> (2u * (i / 4u))) & 3u;
        const float scale = (float)((int)(low | (high << 4u)) - 32);
        const unsigned int q2 = (byte_at(w, base + 32u + hf * 32u + l) >> (2u * run)) & 3u;
        const unsigned int hbit = (byte_at(w, base + l) >> (4u * hf + run)) & 1u;
        return f16_at(w, base + 108u) * scale * (float)((int)q2 - 4 + 4 * (int)hbit);
    }
    // Q5_K
    const unsigned int chunk = e / 64u;
    const unsigned int w64 = e % 64u;
    float kx, ky;
    q4k_factors(w, base, e / 32u, kx, ky);
    const unsigned int nib = (byte_at(w, base + 48u + chunk * 32u + l) >> (4u * (w64 / 32u))) & 15u;
    const unsigned int high = (byte_at(w, base + 16u + l) >> (2u * chunk + w64 / 32u)) & 1u;
    return kx * (float)(nib | (high << 4u)) - ky;
}

// Element `c` of the weight row starting at byte `rb`, decoded on its own: the transposed
// matmul and the embedding walk weights by column, so no block is decoded whole.
static __device__ __forceinline__ float weight_at(const unsigned int* w, unsigned int rb, unsigned int c) {
    const unsigned int blk = c / 32u;
    const unsigned int l = c % 32u;
    switch (DTYPE) {
        case 0u: case 1u: case 2u: { return float_at(w, rb, c); }
        case 3u: {
            const unsigned int base = rb + 34u * blk;
            return f16_at(w, base) * i8_of(byte_at(w, base + 2u + l));
        }
        case 4u: {
            const unsigned int base = rb + 18u * blk;
            const unsigned int q = (byte_at(w, base + 2u + l % 16u) >> (4u * (l / 16u))) & 15u;
            return f16_at(w, base) * ((float)q - 8.0f);
        }
        case 5u: {
            const unsigned int base = rb + 20u * blk;
            const unsigned int dmw = word_at(w, base);
            const unsigned int q = (byte_at(w, base + 4u + l % 16u) >> (4u * (l / 16u))) & 15u;
            return unpack_lo(dmw) * (float)q + unpack_hi(dmw);
        }
        case 10u: case 11u: case 12u: {
            const unsigned int bytes = DTYPE == 10u ? 84u : (DTYPE == 11u ? 110u : 176u);
            return low_k_at(w, rb + bytes * (c / 256u), c % 256u);
        }
        case 8u: case 9u: {
            const unsigned int base = rb + q5_bytes() * blk;
            const unsigned int low = (byte_at(w, base + q5_high() + 4u + l % 16u) >> (4u * (l / 16u))) & 15u;
            const unsigned int high = (word_at(w, base + q5_high()) >> l) & 1u;
            return q5_value(w, base, (float)(low | (high << 4u)));
        }
        case 6u: {
            // 256-element super-block: 8 sub-blocks of 32 with 6-bit scales and mins.
            const unsigned int s = blk % 8u;
            const unsigned int base = rb + 144u * (blk / 8u);
            float kx, ky;
            q4k_factors(w, base, s, kx, ky);
            const unsigned int q = (byte_at(w, base + 16u + 32u * (s / 2u) + l) >> ((s % 2u) * 4u)) & 15u;
            return kx * (float)q - ky;
        }
        default: {
            // Q6_K: ql[128], qh[64], i8 scales[16], f16 d; sub-block s covers y[128n + 32j ..].
            const unsigned int s = blk % 8u;
            const unsigned int base = rb + 210u * (blk / 8u);
            const unsigned int n = s / 4u;
            const unsigned int j = s % 4u;
            const unsigned int qlb = byte_at(w, base + 64u * n + l + 32u * (j % 2u));
            const unsigned int low = (qlb >> (4u * (j / 2u))) & 15u;
            const unsigned int hb = (byte_at(w, base + 128u + 32u * n + l) >> (2u * j)) & 3u;
            const float q = (float)((int)(low | (hb << 4u)) - 32);
            const float scale = i8_of(byte_at(w, base + 192u + 8u * n + l / 16u + 2u * j));
            return f16_at(w, base + 208u) * scale * q;
        }
    }
}

// Elements c..c+3 (c a multiple of 4) of the weight row at byte `rb` into v[0..4]: one block
// header and one word of quants serve four columns of the transposed matmul.
// `cols` (p.cols) is an addition to the WGSL signature: float formats return 0 for columns at
// or past the row's end instead of reading them (WGSL's robust buffer access made those reads
// harmless; the values are never stored either way). Block formats have whole 32-blocks.
static __device__ __forceinline__ void weight_at4(const unsigned int* w, unsigned int rb, unsigned int c,
                                                  unsigned int cols, float v[4]) {
    const unsigned int blk = c / 32u;
    const unsigned int l = c % 32u;
    switch (DTYPE) {
        case 0u: case 1u: case 2u: {
#pragma unroll
            for (unsigned int i = 0u; i < 4u; i++) { v[i] = c + i < cols ? float_at(w, rb, c + i) : 0.0f; }
            return;
        }
        case 3u: {
            const unsigned int base = rb + 34u * blk;
            const unsigned int word = word_at(w, base + 2u + l);
            const float d = f16_at(w, base);
#pragma unroll
            for (unsigned int i = 0u; i < 4u; i++) {
                v[i] = d * (float)(((int)(word << (24u - 8u * i))) >> 24);
            }
            return;
        }
        case 4u: case 5u: {
            unsigned int base = rb + 18u * blk;
            unsigned int head = 2u;
            if (DTYPE == 5u) {
                base = rb + 20u * blk;
                head = 4u;
            }
            const unsigned int word = word_at(w, base + head + l % 16u) >> (4u * (l / 16u));
            float q[4];
#pragma unroll
            for (unsigned int i = 0u; i < 4u; i++) { q[i] = (float)((word >> (8u * i)) & 15u); }
            if (DTYPE == 4u) {
                const float d = f16_at(w, base);
#pragma unroll
                for (unsigned int i = 0u; i < 4u; i++) { v[i] = d * (q[i] - 8.0f); }
                return;
            }
            const unsigned int dmw = word_at(w, base);
            const float dm_x = unpack_lo(dmw);
            const float dm_y = unpack_hi(dmw);
#pragma unroll
            for (unsigned int i = 0u; i < 4u; i++) { v[i] = dm_x * q[i] + dm_y; }
            return;
        }
        case 10u: case 11u: case 12u: {
#pragma unroll
            for (unsigned int i = 0u; i < 4u; i++) { v[i] = weight_at(w, rb, c + i); }
            return;
        }
        case 8u: case 9u: {
            const unsigned int base = rb + q5_bytes() * blk;
            const unsigned int word = word_at(w, base + q5_high() + 4u + l % 16u) >> (4u * (l / 16u));
            const unsigned int hw = word_at(w, base + q5_high()) >> l;
#pragma unroll
            for (unsigned int i = 0u; i < 4u; i++) {
                const unsigned int low = (word >> (8u * i)) & 15u;
                const unsigned int high = (hw >> i) & 1u;
                v[i] = q5_value(w, base, (float)(low | (high << 4u)));
            }
            return;
        }
        case 6u: {
            const unsigned int s = blk % 8u;
            const unsigned int base = rb + 144u * (blk / 8u);
            float kx, ky;
            q4k_factors(w, base, s, kx, ky);
            const unsigned int word = word_at(w, base + 16u + 32u * (s / 2u) + l) >> ((s % 2u) * 4u);
#pragma unroll
            for (unsigned int i = 0u; i < 4u; i++) { v[i] = kx * (float)((word >> (8u * i)) & 15u) - ky; }
            return;
        }
        default: {
            const unsigned int s = blk % 8u;
            const unsigned int base = rb + 210u * (blk / 8u);
            const unsigned int n = s / 4u;
            const unsigned int j = s % 4u;
            const unsigned int lw = word_at(w, base + 64u * n + l + 32u * (j % 2u)) >> (4u * (j / 2u));
            const unsigned int hw = word_at(w, base + 128u + 32u * n + l) >> (2u * j);
            const float ds = f16_at(w, base + 208u) * i8_of(byte_at(w, base + 192u + 8u * n + l / 16u + 2u * j));
#pragma unroll
            for (unsigned int i = 0u; i < 4u; i++) {
                const unsigned int low = (lw >> (8u * i)) & 15u;
                const unsigned int high = (hw >> (8u * i)) & 3u;
                const float q = (float)((int)(low | (high << 4u)) - 32);
                v[i] = ds * q;
            }
            return;
        }
    }
}
