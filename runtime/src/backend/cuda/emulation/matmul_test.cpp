// quant.cu + matmul.cu on the CPU (launch.h) for one weight format, DTYPE (-DDTYPE=Nu, as the
// host prepends "#define DTYPE Nu"): scripts/test-cuda-emulated builds it 13 times. No GPU runs
// these kernels in CI. The reference dequantizes each block the way ggml's dequantize_row_*
// does, written here independently of the WGSL kernels and the CPU backend, and the products
// are summed in double. Weights are random bytes with sane f16 scales, so every bit pattern of
// the quantized fields is exercised; the weight matrix is one row-range part (rows 40..110 of
// 150), as when a matrix is split across buffers.
#include "launch.h"
#include "quant.cu"
#include "matmul.cu"
#include "check.h"

#include <stdint.h>

struct Format {
    const char* name;
    unsigned int block_bytes, block_elements;
};
static const Format formats[13] = {  // indexed by DTYPE
    {"F32", 4, 1},      {"F16", 2, 1},      {"BF16", 2, 1},     {"Q8_0", 34, 32},  {"Q4_0", 18, 32},
    {"Q4_1", 20, 32},   {"Q4_K", 144, 256}, {"Q6_K", 210, 256}, {"Q5_0", 22, 32},  {"Q5_1", 24, 32},
    {"Q2_K", 84, 256},  {"Q3_K", 110, 256}, {"Q5_K", 176, 256},
};
static const Format format = formats[DTYPE];
// The formats matmul_q8 multiplies with integer dots (decode() in matmul.cu); the rest go
// through matmul in f32.
static const bool integer_dot = DTYPE >= 3 && DTYPE <= 9;

static uint16_t f32_to_f16(float f) {
    const _Float16 h = (_Float16)f;
    uint16_t u;
    memcpy(&u, &h, 2);
    return u;
}
static float f16_to_f32_reference(uint16_t u) {
    _Float16 h;
    memcpy(&h, &u, 2);
    return (float)h;
}
static void put_f16(uint8_t* p, float f) {
    const uint16_t h = f32_to_f16(f);
    p[0] = h & 255;
    p[1] = h >> 8;
}
static float get_f16(const uint8_t* p) { return f16_to_f32_reference((uint16_t)(p[0] | (p[1] << 8))); }

// Q4_K / Q5_K: the 6-bit scale and min of sub-block j (ggml's get_scale_min_k4).
static void scale_min_k4(const uint8_t* sc, int j, int& s, int& m) {
    if (j < 4) {
        s = sc[j] & 63;
        m = sc[j + 4] & 63;
    } else {
        s = (sc[j + 4] & 15) | ((sc[j - 4] >> 6) << 4);
        m = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
    }
}

// One block of the format into y (block_elements values), as ggml dequantizes it.
static void dequantize(const uint8_t* b, float* y) {
    switch (DTYPE) {
        case 0: memcpy(y, b, 4); return;
        case 1: y[0] = get_f16(b); return;
        case 2: {
            const uint32_t u = (uint32_t)(b[0] | (b[1] << 8)) << 16;
            memcpy(y, &u, 4);
            return;
        }
        case 3: {  // Q8_0
            const float d = get_f16(b);
            for (int j = 0; j < 32; j++) y[j] = d * (float)(int8_t)b[2 + j];
            return;
        }
        case 4: {  // Q4_0
            const float d = get_f16(b);
            for (int j = 0; j < 16; j++) {
                y[j] = (float)((b[2 + j] & 15) - 8) * d;
                y[j + 16] = (float)((b[2 + j] >> 4) - 8) * d;
            }
            return;
        }
        case 5: {  // Q4_1
            const float d = get_f16(b), m = get_f16(b + 2);
            for (int j = 0; j < 16; j++) {
                y[j] = (float)(b[4 + j] & 15) * d + m;
                y[j + 16] = (float)(b[4 + j] >> 4) * d + m;
            }
            return;
        }
        case 8:
        case 9: {  // Q5_0, Q5_1
            const bool q5_0 = DTYPE == 8;
            const float d = get_f16(b), m = q5_0 ? 0 : get_f16(b + 2);
            uint32_t qh;
            memcpy(&qh, b + (q5_0 ? 2 : 4), 4);
            const uint8_t* qs = b + (q5_0 ? 6 : 8);
            for (int j = 0; j < 16; j++) {
                const int xh0 = ((qh >> j) << 4) & 0x10, xh1 = (qh >> (j + 12)) & 0x10;
                const int x0 = (qs[j] & 15) | xh0, x1 = (qs[j] >> 4) | xh1;
                if (q5_0) {
                    y[j] = (float)(x0 - 16) * d;
                    y[j + 16] = (float)(x1 - 16) * d;
                } else {
                    y[j] = (float)x0 * d + m;
                    y[j + 16] = (float)x1 * d + m;
                }
            }
            return;
        }
        case 6:
        case 12: {  // Q4_K, Q5_K
            const float d = get_f16(b), dmin = get_f16(b + 2);
            const uint8_t* scales = b + 4;
            const uint8_t* qh = b + 16;  // Q5_K only
            const uint8_t* q = b + (DTYPE == 6 ? 16 : 48);
            unsigned int u1 = 1, u2 = 2;
            for (int j = 0, is = 0; j < 256; j += 64, is += 2, q += 32, u1 <<= 2, u2 <<= 2) {
                int s, m;
                scale_min_k4(scales, is, s, m);
                const float d1 = d * (float)s, m1 = dmin * (float)m;
                scale_min_k4(scales, is + 1, s, m);
                const float d2 = d * (float)s, m2 = dmin * (float)m;
                for (int l = 0; l < 32; l++) {
                    const int h1 = DTYPE == 12 && (qh[l] & u1) ? 16 : 0, h2 = DTYPE == 12 && (qh[l] & u2) ? 16 : 0;
                    y[j + l] = d1 * (float)((q[l] & 15) + h1) - m1;
                    y[j + l + 32] = d2 * (float)((q[l] >> 4) + h2) - m2;
                }
            }
            return;
        }
        case 7: {  // Q6_K
            const uint8_t* ql = b;
            const uint8_t* qh = b + 128;
            const int8_t* sc = (const int8_t*)(b + 192);
            const float d = get_f16(b + 208);
            for (int n = 0; n < 256; n += 128, ql += 64, qh += 32, sc += 8) {
                for (int l = 0; l < 32; l++) {
                    const int is = l / 16;
                    const int q1 = ((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32;
                    const int q2 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32;
                    const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                    const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                    y[n + l] = d * sc[is] * (float)q1;
                    y[n + l + 32] = d * sc[is + 2] * (float)q2;
                    y[n + l + 64] = d * sc[is + 4] * (float)q3;
                    y[n + l + 96] = d * sc[is + 6] * (float)q4;
                }
            }
            return;
        }
        case 10: {  // Q2_K
            const uint8_t* sc = b;
            const uint8_t* q = b + 16;
            const float d = get_f16(b + 80), dmin = get_f16(b + 82);
            int is = 0;
            for (int n = 0; n < 256; n += 128, q += 32) {
                for (int shift = 0; shift < 8; shift += 2) {
                    for (int half = 0; half < 2; half++) {
                        const int s = sc[is++];
                        const float dl = d * (float)(s & 15), ml = dmin * (float)(s >> 4);
                        for (int l = 0; l < 16; l++) *y++ = dl * (float)((q[l + 16 * half] >> shift) & 3) - ml;
                    }
                }
            }
            return;
        }
        default: {  // 11, Q3_K
            const uint8_t* hmask = b;
            const uint8_t* q = b + 32;
            const float d = get_f16(b + 108);
            // The 16 6-bit scales, unpacked from 12 bytes as ggml does.
            uint32_t aux[4];
            memcpy(aux, b + 96, 12);
            const uint32_t k1 = 0x03030303, k2 = 0x0f0f0f0f, tmp = aux[2];
            aux[2] = ((aux[0] >> 4) & k2) | (((tmp >> 4) & k1) << 4);
            aux[3] = ((aux[1] >> 4) & k2) | (((tmp >> 6) & k1) << 4);
            aux[0] = (aux[0] & k2) | (((tmp >> 0) & k1) << 4);
            aux[1] = (aux[1] & k2) | (((tmp >> 2) & k1) << 4);
            const int8_t* scales = (const int8_t*)aux;
            int is = 0;
            uint8_t m = 1;
            for (int n = 0; n < 256; n += 128, q += 32) {
                for (int shift = 0; shift < 8; shift += 2, m <<= 1) {
                    for (int half = 0; half < 2; half++) {
                        const float dl = d * (float)(scales[is++] - 32);
                        for (int l = 16 * half; l < 16 * half + 16; l++)
                            *y++ = dl * (float)((int)((q[l] >> shift) & 3) - ((hmask[l] & m) ? 0 : 4));
                    }
                }
            }
            return;
        }
    }
}

// Random bytes, then f16 scales (and minimums) of a realistic size: random bits there would
// make infinities and NaNs that no model has.
static void random_block(uint8_t* b) {
    for (unsigned int i = 0; i < format.block_bytes; i++) b[i] = (uint8_t)rng();
    switch (DTYPE) {
        case 0: {
            const float f = urand(-1, 1);
            memcpy(b, &f, 4);
            break;
        }
        case 1: put_f16(b, urand(-1, 1)); break;
        case 2: {
            const float f = urand(-1, 1);
            uint32_t u;
            memcpy(&u, &f, 4);
            b[0] = (u >> 16) & 255;
            b[1] = u >> 24;
            break;
        }
        case 3: case 4: case 8: put_f16(b, urand(-0.1f, 0.1f)); break;
        case 5: case 9: put_f16(b, urand(-0.1f, 0.1f)); put_f16(b + 2, urand(-0.5f, 0.5f)); break;
        case 6: case 12: put_f16(b, urand(0, 0.01f)); put_f16(b + 2, urand(0, 0.01f)); break;
        case 7: put_f16(b + 208, urand(-0.01f, 0.01f)); break;
        case 10: put_f16(b + 80, urand(0, 0.05f)); put_f16(b + 82, urand(0, 0.05f)); break;
        default: put_f16(b + 108, urand(-0.01f, 0.01f)); break;
    }
}

// f16_to_f32 on all 65,536 halves and round_to_f16 on 2 million floats, both against the
// compiler's _Float16. Done once (with the F32 build): the helpers do not depend on DTYPE.
static void check_f16_helpers() {
    for (uint32_t h = 0; h < 65536; h++) {
        const float got = f16_to_f32(h), want = f16_to_f32_reference((uint16_t)h);
        // NaNs: the same payload; the reference may set the quiet bit.
        const bool same_nan =
            isnan(got) && isnan(want) && ((__float_as_uint(got) ^ __float_as_uint(want)) & ~0x00400000u) == 0;
        CHECK(memcmp(&got, &want, 4) == 0 || same_nan, "f16_to_f32 %04x: got %a, want %a", h, got, want);
    }
    for (int i = 0; i < 2000000; i++) {
        float x = ldexpf(urand(-1, 1), (int)(rng() % 60) - 40);  // subnormal halves to past the f16 range
        if (i % 1000 == 0) x = urand(65504, 65536) * (i % 2000 ? 1 : -1);  // rounding to ±65504 or ±inf
        const float got = round_to_f16(x), want = (float)(_Float16)x;
        CHECK(memcmp(&got, &want, 4) == 0, "round_to_f16 %a: got %a, want %a", x, got, want);
    }
}

int main() {
    rng.seed(1234 + DTYPE);
    if (DTYPE == 0) check_f16_helpers();

    const unsigned int R = 70, n = 11, all_rows = 150, row0 = 40;  // this part: rows 40..110 of 150
    const unsigned int be = format.block_elements;
    const unsigned int C = be == 1 ? 37 : (be == 32 ? 96 : 512);
    const unsigned int row_bytes = C / be * format.block_bytes;
    // + 4: the host rounds weight buffers up to whole words (word_at may read one past).
    std::vector<uint8_t> bytes((size_t)R * row_bytes + 4, 0);
    std::vector<float> ref((size_t)R * C);
    for (unsigned int r = 0; r < R; r++) {
        for (unsigned int k = 0; k < C / be; k++) {
            uint8_t* b = &bytes[(size_t)r * row_bytes + k * format.block_bytes];
            random_block(b);
            dequantize(b, &ref[(size_t)r * C + k * be]);
        }
    }
    const unsigned int* w = (const unsigned int*)bytes.data();

    for (unsigned int r = 0; r < R; r++) {
        for (unsigned int c = 0; c < C; c++) {
            const float got = weight_at(w, r * row_bytes, c), want = ref[(size_t)r * C + c];
            CHECK(got == want, "weight_at r%u c%u: got %g, want %g", r, c, got, want);
            if (c % 4 == 0) {
                float v[4];
                weight_at4(w, r * row_bytes, c, C, v);
                for (unsigned int i = 0; i < 4; i++) {
                    const float want4 = c + i < C ? ref[(size_t)r * C + c + i] : 0.f;
                    CHECK(v[i] == want4, "weight_at4 r%u c%u: got %g, want %g", r, c + i, v[i], want4);
                }
            }
        }
    }

    // decode(): the block as signed bytes and factors, value = scale · q + offset.
    if (integer_dot) {
        for (unsigned int r = 0; r < R; r++) {
            for (unsigned int blk = 0; blk < C / 32; blk++) {
                const Decoded k = decode(w, r * row_bytes, blk);
                for (unsigned int e = 0; e < 32; e++) {
                    const unsigned int word = e < 16 ? k.lo[e / 4] : k.hi[(e - 16) / 4];
                    const int q = (int8_t)(word >> (8 * (e % 4)));
                    const float s = e < 16 ? k.scale_x : k.scale_y;
                    const float got = s * (float)q + k.offset, want = ref[(size_t)r * C + blk * 32 + e];
                    const float tol = 1e-6f * (fabsf(s * (float)q) + fabsf(k.offset)) + 1e-30f;
                    CHECK(fabsf(got - want) <= tol, "decode r%u block %u e%u: got %g, want %g", r, blk, e, got, want);
                }
            }
        }
    }

    Params p = {};
    p.rows = R;
    p.cols = C;
    p.n = n;
    p.row_bytes = row_bytes;
    p.out_cols = all_rows;
    p.row0 = row0;
    const std::vector<float> x = random_floats((size_t)n * C);
    std::vector<float> y((size_t)n * all_rows, -7.f);
    if (!integer_dot) {
        launch((R + 63) / 64, (n + 3) / 4, 64, [&] { matmul(p, w, x.data(), y.data()); });
    } else {
        // quantize_q8: per 32-value block, ten words: f16-rounded d = amax/127 and d·Σq, then
        // the 32 signed bytes q = round(x/d), half to even.
        const unsigned int blocks = C / 32;
        std::vector<unsigned int> xq((size_t)n * blocks * 10);
        launch((blocks + 63) / 64, n, 64, [&] { quantize_q8(p, x.data(), xq.data()); });
        for (unsigned int t = 0; t < n; t++) {
            for (unsigned int b = 0; b < blocks; b++) {
                const float* xb = &x[t * C + b * 32];
                const unsigned int* q = &xq[(t * blocks + b) * 10];
                float amax = 0;
                for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(xb[i]));
                const float d = amax / 127, id = amax > 0 ? 127 / amax : 0;
                int sum = 0;
                for (int i = 0; i < 32; i++) {
                    const int want = (int)nearbyintf(xb[i] * id), got = (int8_t)(q[2 + i / 4] >> (8 * (i % 4)));
                    sum += want;
                    CHECK(got == want, "quantize_q8 t%u block %u q%d: got %d, want %d", t, b, i, got, want);
                }
                const float want_d = (float)(_Float16)d, want_dsum = (float)(_Float16)(d * (float)sum);
                CHECK(__uint_as_float(q[0]) == want_d, "quantize_q8 t%u block %u d: got %g, want %g", t, b,
                      __uint_as_float(q[0]), want_d);
                CHECK(__uint_as_float(q[1]) == want_dsum, "quantize_q8 t%u block %u d·sum: got %g, want %g", t, b,
                      __uint_as_float(q[1]), want_dsum);
            }
        }
        launch((R + 63) / 64, (n + 3) / 4, 64, [&] { matmul_q8(p, w, y.data(), xq.data()); });
    }
    // y = x · Wᵀ into this part's columns only. The 8-bit activations of matmul_q8 cost about 1%
    // of the sum of magnitudes; f32 accumulation much less.
    const char* kernel = integer_dot ? "matmul_q8" : "matmul";
    for (unsigned int t = 0; t < n; t++) {
        for (unsigned int r = 0; r < all_rows; r++) {
            const float got = y[t * all_rows + r];
            if (r < row0 || r >= row0 + R) {
                CHECK(got == -7.f, "%s t%u r%u: outside the part, got %g, want it untouched", kernel, t, r, got);
                continue;
            }
            double want = 0, magnitude = 0;
            for (unsigned int c = 0; c < C; c++) {
                const double term = (double)ref[(r - row0) * C + c] * x[t * C + c];
                want += term;
                magnitude += fabs(term);
            }
            const double tol = integer_dot ? 2e-2 * magnitude + 1e-6 : 1e-5 * magnitude + 1e-7;
            CHECK(fabs(got - want) <= tol, "%s t%u r%u: got %g, want %g", kernel, t, r, got, want);
        }
    }

    // matmul_backward: dx += dy · W over this part's rows; dy is as wide as all the rows.
    const std::vector<float> dy = random_floats((size_t)n * all_rows), dx0 = random_floats((size_t)n * C);
    std::vector<float> dx = dx0;
    launch(((C + 3) / 4 + 63) / 64, (n + 7) / 8, 64, [&] { matmul_backward(p, w, dy.data(), dx.data()); });
    for (unsigned int t = 0; t < n; t++) {
        for (unsigned int c = 0; c < C; c++) {
            double want = dx0[t * C + c], magnitude = fabs(want);
            for (unsigned int r = 0; r < R; r++) {
                const double term = (double)dy[t * all_rows + row0 + r] * ref[r * C + c];
                want += term;
                magnitude += fabs(term);
            }
            const float got = dx[t * C + c];
            CHECK(fabs(got - want) <= 1e-5 * magnitude + 1e-7, "matmul_backward t%u c%u: got %g, want %g", t, c, got,
                  want);
        }
    }

    // embed: the rows of the tokens that fall in this part; the others left alone.
    std::vector<unsigned int> tokens(n);
    for (unsigned int& token : tokens) token = rng() % all_rows;
    std::vector<float> emb((size_t)n * C, -3.f);
    launch((C + 63) / 64, n, 64, [&] { embed(p, w, emb.data(), tokens.data()); });
    for (unsigned int t = 0; t < n; t++) {
        const bool in_part = tokens[t] >= row0 && tokens[t] < row0 + R;
        for (unsigned int c = 0; c < C; c++) {
            const float want = in_part ? ref[(tokens[t] - row0) * C + c] : -3.f;
            const float got = emb[t * C + c];
            CHECK(got == want, "embed t%u (token %u) c%u: got %g, want %g", t, tokens[t], c, got, want);
        }
    }

    char module[32];
    snprintf(module, sizeof module, "matmul %s", format.name);
    return finish(module);
}
