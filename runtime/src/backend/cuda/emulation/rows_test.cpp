// rows.cu on the CPU (launch.h) against references written here in double, independently of the
// WGSL kernels and the CPU backend: no GPU runs these kernels in CI. The awkward cases are
// deliberate: a row width that is no multiple of the block (150 = 2·64 + 22), a folded grid with
// an idle block, argmax ties and a maximum in the last column, RoPE at positions in the
// thousands in both pair layouts and both directions.
#include "launch.h"
#include "rows.cu"
#include "check.h"

#include <algorithm>

int main() {
    const unsigned int R = 5, C = 150;
    Params p = {};
    p.rows = R;
    p.cols = C;
    p.eps = 1e-5f;
    const std::vector<float> x = random_floats(R * C, -3, 3), w = random_floats(C), dy = random_floats(R * C);
    std::vector<float> out(R * C, 0);

    launch(2, 3, 64, [&] { rms_norm(p, x.data(), w.data(), out.data()); });  // 6 blocks, 5 rows
    for (unsigned int r = 0; r < R; r++) {
        double ss = 0;
        for (unsigned int i = 0; i < C; i++) ss += (double)x[r * C + i] * x[r * C + i];
        const double s = 1 / sqrt(ss / C + 1e-5);
        for (unsigned int i = 0; i < C; i++) {
            const double want = x[r * C + i] * s * w[i];
            CHECK(near(out[r * C + i], want, 1e-5), "rms_norm r%u i%u: got %g, want %g", r, i, out[r * C + i], want);
        }
    }

    launch(R, 1, 64, [&] { rms_norm_backward(p, x.data(), w.data(), dy.data(), out.data()); });
    for (unsigned int r = 0; r < R; r++) {
        double ss = 0, dot = 0;
        for (unsigned int i = 0; i < C; i++) {
            ss += (double)x[r * C + i] * x[r * C + i];
            dot += (double)dy[r * C + i] * w[i] * x[r * C + i];
        }
        const double s = 1 / sqrt(ss / C + 1e-5), k = s * s * s * dot / C;
        for (unsigned int i = 0; i < C; i++) {
            const double want = s * dy[r * C + i] * w[i] - k * x[r * C + i];
            CHECK(near(out[r * C + i], want, 1e-4), "rms_norm_backward r%u i%u: got %g, want %g", r, i,
                  out[r * C + i], want);
        }
    }

    // cross_entropy: out holds the logits on entry and d loss / d logits on exit.
    const std::vector<float> logits = random_floats(R * C, -5, 5);
    std::vector<unsigned int> targets(R);
    for (unsigned int& t : targets) t = rng() % C;
    std::vector<float> grad = logits, losses(R, 0);
    launch(R, 1, 64, [&] { cross_entropy(p, grad.data(), targets.data(), losses.data()); });
    for (unsigned int r = 0; r < R; r++) {
        const double m = *std::max_element(logits.begin() + r * C, logits.begin() + (r + 1) * C);
        double z = 0;
        for (unsigned int i = 0; i < C; i++) z += exp(logits[r * C + i] - m);
        const double lse = log(z) + m, loss = lse - logits[r * C + targets[r]];
        CHECK(near(losses[r], loss, 1e-5), "cross_entropy loss r%u: got %g, want %g", r, losses[r], loss);
        for (unsigned int i = 0; i < C; i++) {
            const double want = exp(logits[r * C + i] - lse) - (i == targets[r]);
            CHECK(fabs(grad[r * C + i] - want) < 1e-6, "cross_entropy grad r%u i%u: got %g, want %g", r, i,
                  grad[r * C + i], want);
        }
    }

    // argmax_rows: the maximum planted twice per row (the first wins), and once in the last column.
    std::vector<float> scores = random_floats(R * C);
    for (unsigned int r = 0; r < R; r++) {
        scores[r * C + rng() % C] = 5;
        scores[r * C + rng() % C] = 5;
    }
    scores[C - 1] = 9;
    std::vector<unsigned int> indices(R, 99);
    launch(R, 1, 64, [&] { argmax_rows(p, scores.data(), indices.data()); });
    for (unsigned int r = 0; r < R; r++) {
        const auto row = scores.begin() + r * C;
        const unsigned int want = (unsigned int)(std::max_element(row, row + C) - row);
        CHECK(indices[r] == want, "argmax_rows r%u: got %u, want %u", r, indices[r], want);
    }
    {  // fewer columns than threads
        Params q = p;
        q.rows = 1;
        q.cols = 3;
        const std::vector<float> three = {1, 7, 7};
        unsigned int index = 99;
        launch(1, 1, 64, [&] { argmax_rows(q, three.data(), &index); });
        CHECK(index == 1, "argmax_rows of 3 columns: got %u, want 1", index);
    }

    // rope: 3 heads of 16 dims, the first 12 rotated (6 pairs), 2 unrotated columns after the
    // heads; positions 3000..3004.
    for (unsigned int halves = 0; halves < 2; halves++) {
        for (float direction : {1.f, -1.f}) {
            Params q = {};
            q.rows = R;
            q.n_heads = 3;
            q.head_dim = 16;
            q.cols = 3 * 16 + 2;
            q.half_dims = 6;
            q.pos0 = 3000;
            q.step = powf(10000.f, -2.f / 12);
            q.direction = direction;
            q.halves = halves;
            const std::vector<float> v = random_floats(R * q.cols);
            std::vector<float> o = v;
            const unsigned int pairs = R * 3 * 6;
            launch(1, (pairs + 63) / 64, 64, [&] { rope(q, o.data()); });  // folded over y, gridDim.x = 1
            for (unsigned int r = 0; r < R; r++) {
                for (unsigned int h = 0; h < 3; h++) {
                    for (unsigned int i = 0; i < 6; i++) {
                        const double theta = (3000.0 + r) * pow(pow(10000.0, -2.0 / 12), i);
                        const double cs = cos(theta), sn = direction * sin(theta);
                        const unsigned int base = r * q.cols + h * 16;
                        const unsigned int a = base + (halves ? i : 2 * i), b = base + (halves ? i + 6 : 2 * i + 1);
                        const double want_a = v[a] * cs - v[b] * sn, want_b = v[a] * sn + v[b] * cs;
                        CHECK(fabs(o[a] - want_a) < 2e-3 && fabs(o[b] - want_b) < 2e-3,
                              "rope halves=%u direction=%g r%u h%u pair %u: got (%g, %g), want (%g, %g)", halves,
                              direction, r, h, i, o[a], o[b], want_a, want_b);
                    }
                }
                for (unsigned int c = 48; c < 50; c++)
                    CHECK(o[r * q.cols + c] == v[r * q.cols + c], "rope r%u c%u: changed, past the heads", r, c);
            }
        }
    }
    return finish("rows");
}
