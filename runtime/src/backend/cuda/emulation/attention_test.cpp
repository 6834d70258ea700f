// attention.cu on the CPU (launch.h) against a reference written here in double, independently
// of the WGSL kernels and the CPU backend: no GPU runs these kernels in CI. Covers grouped
// kv heads, head dims below and above the block width (16, 80), with and without a sliding
// window, decoding after a long cache (forward) and the gradient over a whole sequence
// (backward: dq, dk, dv from the two backward kernels together).
#include "launch.h"
#include "attention.cu"
#include "check.h"

#include <algorithm>

// Softmax-weighted values for query t (at absolute position pos) of head h over keys
// first..pos; the attention probabilities into probs when asked.
static void reference_attention(const Params& p, const std::vector<float>& q, const std::vector<float>& k,
                                const std::vector<float>& v, unsigned int t, unsigned int h, unsigned int pos,
                                unsigned int first, std::vector<double>& out, std::vector<double>* probs = nullptr) {
    const unsigned int kvh = h / p.group, D = p.head_dim;
    std::vector<double> s;
    for (unsigned int j = first; j <= pos; j++) {
        double dot = 0;
        for (unsigned int e = 0; e < D; e++)
            dot += (double)q[t * p.q_cols + h * D + e] * k[j * p.kv_cols + kvh * D + e];
        s.push_back(dot * p.scale);
    }
    const double m = *std::max_element(s.begin(), s.end());
    double z = 0;
    for (double& x : s) {
        x = exp(x - m);
        z += x;
    }
    for (double& x : s) x /= z;
    out.assign(D, 0);
    for (unsigned int j = first; j <= pos; j++)
        for (unsigned int e = 0; e < D; e++) out[e] += s[j - first] * v[j * p.kv_cols + kvh * D + e];
    if (probs) *probs = s;
}

static unsigned int first_seen(unsigned int window, unsigned int pos) {
    return window == 0 || pos + 1 <= window ? 0 : pos + 1 - window;
}

int main() {
    const unsigned int keys = 70;
    for (unsigned int D : {16u, 80u}) {
        for (unsigned int window : {0u, 50u}) {
            // Forward: 3 queries at positions 67..69 over a 70-key cache; 4 heads on 2 kv heads.
            Params p = {};
            p.n = 3;
            p.pos0 = 67;
            p.n_heads = 4;
            p.group = 2;
            p.head_dim = D;
            p.q_cols = 4 * D;
            p.kv_cols = 2 * D;
            p.scale = 1 / sqrtf((float)D);
            p.window = window;
            const std::vector<float> q = random_floats(p.n * p.q_cols, -2, 2);
            const std::vector<float> k = random_floats(keys * p.kv_cols, -2, 2), v = random_floats(keys * p.kv_cols);
            std::vector<float> out(p.n * p.q_cols, 0);
            launch(5, 3, 64, [&] { attention(p, q.data(), k.data(), v.data(), out.data()); });  // 15 blocks, 12 items
            for (unsigned int t = 0; t < p.n; t++) {
                for (unsigned int h = 0; h < 4; h++) {
                    const unsigned int pos = 67 + t;
                    std::vector<double> want;
                    reference_attention(p, q, k, v, t, h, pos, first_seen(window, pos), want);
                    for (unsigned int e = 0; e < D; e++) {
                        const float got = out[t * p.q_cols + h * D + e];
                        CHECK(near(got, want[e], 1e-5), "attention D%u window %u t%u h%u e%u: got %g, want %g", D,
                              window, t, h, e, got, want[e]);
                    }
                }
            }

            // Backward over one sequence of 70 tokens (pos0 0), the same keys and values.
            Params b = p;
            b.n = keys;
            b.pos0 = 0;
            const std::vector<float> qb = random_floats(keys * b.q_cols, -2, 2);
            const std::vector<float> dout = random_floats(keys * b.q_cols);
            std::vector<float> dq(keys * b.q_cols, 0), dk(keys * b.kv_cols, 0), dv(keys * b.kv_cols, 0);
            std::vector<float> probs(4 * keys * keys, 0), dscore(4 * keys * keys, 0);
            launch(4 * keys, 1, 64, [&] {
                attention_backward_rows(b, qb.data(), k.data(), v.data(), dq.data(), dout.data(), probs.data(),
                                        dscore.data());
            });
            launch(2 * keys, 1, 64, [&] {
                attention_backward_keys(b, qb.data(), dout.data(), probs.data(), dscore.data(), dk.data(), dv.data());
            });
            std::vector<double> want_dq(dq.size(), 0), want_dk(dk.size(), 0), want_dv(dv.size(), 0);
            for (unsigned int t = 0; t < keys; t++) {
                for (unsigned int h = 0; h < 4; h++) {
                    const unsigned int first = first_seen(window, t), kvh = h / 2;
                    std::vector<double> o, pr;
                    reference_attention(b, qb, k, v, t, h, t, first, o, &pr);
                    // d score_j = p_j · (dout·v_j − Σ_i p_i · dout·v_i) · scale
                    std::vector<double> dp(pr.size());
                    double weighted = 0;
                    for (unsigned int j = first; j <= t; j++) {
                        double dot = 0;
                        for (unsigned int e = 0; e < D; e++)
                            dot += (double)dout[t * b.q_cols + h * D + e] * v[j * b.kv_cols + kvh * D + e];
                        dp[j - first] = dot;
                        weighted += pr[j - first] * dot;
                    }
                    for (unsigned int j = first; j <= t; j++) {
                        const double ds = pr[j - first] * (dp[j - first] - weighted) * b.scale;
                        for (unsigned int e = 0; e < D; e++) {
                            const unsigned int qi = t * b.q_cols + h * D + e, ki = j * b.kv_cols + kvh * D + e;
                            want_dq[qi] += ds * k[ki];
                            want_dk[ki] += ds * qb[qi];
                            want_dv[ki] += pr[j - first] * dout[qi];
                        }
                    }
                }
            }
            auto compare = [&](const char* what, const std::vector<float>& got, const std::vector<double>& want) {
                for (size_t i = 0; i < got.size(); i++)
                    CHECK(near(got[i], want[i], 1e-4), "%s D%u window %u [%zu]: got %g, want %g", what, D, window, i,
                          got[i], want[i]);
            };
            compare("attention_backward_rows dq", dq, want_dq);
            compare("attention_backward_keys dk", dk, want_dk);
            compare("attention_backward_keys dv", dv, want_dv);
        }
    }
    return finish("attention");
}
