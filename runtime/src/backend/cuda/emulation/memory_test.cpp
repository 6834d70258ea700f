// memory.cu on the CPU (launch.h) against references written here, independently of the WGSL
// kernels and the CPU backend: no GPU runs these kernels in CI. The top-k reference scores all
// n_keys² products and sorts them (the kernel combines two per-half top-k lists); the row ops run
// on one part of a split value table, with ids on both sides of each of its bounds.
#include "launch.h"
#include "memory.cu"
#include "check.h"

#include <algorithm>
#include <utility>

int main() {
    // product_key_topk: 3 tokens, 2 heads, 100 keys per half, top 8, k_dim 16.
    const unsigned int N = 3, H = 2, K = 100, TOP = 8, KD = 16, HALF = KD / 2;
    Params p = {};
    p.n = N;
    p.heads = H;
    p.n_keys = K;
    p.top_k = TOP;
    p.k_dim = KD;
    p.picks = H * TOP;
    const std::vector<float> query = random_floats(N * H * KD), keys = random_floats(H * 2 * K * HALF);
    std::vector<unsigned int> ids(N * H * TOP, 0);
    std::vector<float> weights(N * H * TOP, 0);
    // 8 blocks for the 6 (token, head) items
    launch(2, 4, 64, [&] { product_key_topk(p, query.data(), keys.data(), ids.data(), weights.data()); });
    for (unsigned int t = 0; t < N; t++) {
        for (unsigned int h = 0; h < H; h++) {
            const float* q = &query[t * H * KD + h * KD];
            const float* first_half = &keys[h * 2 * K * HALF];
            const float* second_half = first_half + K * HALF;
            std::vector<std::pair<double, unsigned int>> scored;  // (score, id = i·K + j)
            for (unsigned int i = 0; i < K; i++) {
                for (unsigned int j = 0; j < K; j++) {
                    double a = 0, b = 0;
                    for (unsigned int d = 0; d < HALF; d++) {
                        a += (double)q[d] * first_half[i * HALF + d];
                        b += (double)q[HALF + d] * second_half[j * HALF + d];
                    }
                    scored.push_back({a + b, i * K + j});
                }
            }
            // Higher score first, then the smaller id (the CPU lookup's rule).
            std::sort(scored.begin(), scored.end(), [](const auto& x, const auto& y) {
                return x.first > y.first || (x.first == y.first && x.second < y.second);
            });
            double z = 0;
            for (unsigned int r = 0; r < TOP; r++) z += exp(scored[r].first - scored[0].first);
            for (unsigned int r = 0; r < TOP; r++) {
                const unsigned int o = (t * H + h) * TOP + r;
                const double want = exp(scored[r].first - scored[0].first) / z;
                CHECK(ids[o] == scored[r].second, "product_key_topk id t%u h%u rank %u: got %u, want %u", t, h, r,
                      ids[o], scored[r].second);
                CHECK(near(weights[o], want, 1e-5), "product_key_topk weight t%u h%u rank %u: got %g, want %g", t, h,
                      r, weights[o], want);
            }
        }
    }

    // gather_values over the part [4000, 7000) of a value table of width 20, with the ids and
    // weights just picked (ids range over 0..9999).
    const unsigned int DIM = 20, ROW0 = 4000, PART = 3000;
    const std::vector<float> table = random_floats((size_t)PART * DIM);
    Params g = {};
    g.n = N;
    g.dim = DIM;
    g.picks = H * TOP;
    g.row0 = ROW0;
    g.part_rows = PART;
    const std::vector<float> dst0 = random_floats(N * DIM);
    std::vector<float> dst = dst0;
    launch((N * DIM + 63) / 64, 1, 64,
           [&] { gather_values(g, ids.data(), weights.data(), table.data(), dst.data()); });
    for (unsigned int t = 0; t < N; t++) {
        for (unsigned int c = 0; c < DIM; c++) {
            double want = dst0[t * DIM + c];
            for (unsigned int j = 0; j < g.picks; j++) {
                const unsigned int id = ids[t * g.picks + j];
                if (id >= ROW0 && id < ROW0 + PART)
                    want += (double)weights[t * g.picks + j] * table[(id - ROW0) * DIM + c];
            }
            const float got = dst[t * DIM + c];
            CHECK(near(got, want, 1e-5), "gather_values t%u c%u: got %g, want %g", t, c, got, want);
        }
    }

    // value_grads: 4 selected rows, each with its list of hits (flat indices t·picks + j into
    // ids/weights), one list empty.
    const std::vector<unsigned int> offsets = {0, 2, 2, 5, 6}, hits = {0, 17, 3, 40, 47, 1};
    const std::vector<float> dy = random_floats(N * DIM);
    Params vg = {};
    vg.n = 4;
    vg.dim = DIM;
    vg.picks = g.picks;
    std::vector<float> grads(4 * DIM, -1);
    launch(1, 2, 64, [&] { value_grads(vg, hits.data(), weights.data(), dy.data(), grads.data(), offsets.data()); });
    for (unsigned int r = 0; r < 4; r++) {
        for (unsigned int c = 0; c < DIM; c++) {
            double want = 0;
            for (unsigned int e = offsets[r]; e < offsets[r + 1]; e++)
                want += (double)weights[hits[e]] * dy[(hits[e] / vg.picks) * DIM + c];
            const float got = grads[r * DIM + c];
            CHECK(near(got, want, 1e-6), "value_grads r%u c%u: got %g, want %g", r, c, got, want);
        }
    }

    // read_rows, write_rows, sgd_rows on the same part: ids at its first row, inside, at its last
    // row, one past it, and far below.
    const std::vector<unsigned int> rows = {4100, 10, 6999, 7000, 4000};
    auto in_part = [&](unsigned int id) { return id >= ROW0 && id < ROW0 + PART; };
    Params rp = {};
    rp.n = 5;
    rp.dim = DIM;
    rp.row0 = ROW0;
    rp.part_rows = PART;
    rp.lr = 0.1f;
    std::vector<float> read(5 * DIM, -2);
    launch(2, 1, 64, [&] { read_rows(rp, rows.data(), table.data(), read.data()); });
    for (unsigned int r = 0; r < 5; r++) {
        for (unsigned int c = 0; c < DIM; c++) {
            const float want = in_part(rows[r]) ? table[(rows[r] - ROW0) * DIM + c] : -2.f;
            const float got = read[r * DIM + c];
            CHECK(got == want, "read_rows id %u c%u: got %g, want %g", rows[r], c, got, want);
        }
    }
    const std::vector<float> src = random_floats(5 * DIM);
    std::vector<float> written = table, stepped = table;
    launch(2, 1, 64, [&] { write_rows(rp, rows.data(), src.data(), written.data()); });
    launch(1, 2, 64, [&] { sgd_rows(rp, rows.data(), src.data(), stepped.data()); });
    std::vector<float> want_written = table, want_stepped = table;
    for (unsigned int r = 0; r < 5; r++) {
        if (!in_part(rows[r])) continue;
        for (unsigned int c = 0; c < DIM; c++) {
            const size_t o = (size_t)(rows[r] - ROW0) * DIM + c;
            want_written[o] = src[r * DIM + c];
            want_stepped[o] = table[o] - 0.1f * src[r * DIM + c];
        }
    }
    for (size_t o = 0; o < table.size(); o++) {
        const size_t row = ROW0 + o / DIM, c = o % DIM;
        CHECK(written[o] == want_written[o], "write_rows table row %zu c%zu: got %g, want %g", row, c, written[o],
              want_written[o]);
        CHECK(stepped[o] == want_stepped[o], "sgd_rows table row %zu c%zu: got %g, want %g", row, c, stepped[o],
              want_stepped[o]);
    }
    return finish("memory");
}
