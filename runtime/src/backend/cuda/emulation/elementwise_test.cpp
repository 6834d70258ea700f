// elementwise.cu on the CPU (launch.h) against references written here, independently of the
// WGSL kernels and the CPU backend: no GPU runs these kernels in CI. Additions and scaling must
// match exactly; SiLU and GELU (and their gradients) to 1e-5, computed here in double. The grid
// is folded over y with spare threads, as the host launches large element counts.
#include "launch.h"
#include "elementwise.cu"
#include "check.h"

// tanh-approximated GELU (the form the kernels use) and its derivative.
static void gelu_and_derivative(double g, double& value, double& derivative) {
    const double c = 0.7978845608, a = 0.044715;
    const double t = tanh(c * (g + a * g * g * g));
    value = 0.5 * g * (1 + t);
    derivative = 0.5 * (1 + t) + 0.5 * g * (1 - t * t) * c * (1 + 3 * a * g * g);
}

static double logistic(double g) { return 1 / (1 + exp(-g)); }

int main() {
    const unsigned int n = 1400, cols = 70;
    Params p = {};
    p.n = n;
    p.cols = cols;
    p.factor = 0.37f;
    const std::vector<float> a = random_floats(n, -6, 6), b = random_floats(n), c = random_floats(n);
    const std::vector<float> out0 = random_floats(n);
    std::vector<float> out, out2(n, 0);
    // grid (2, 3) × 256: 1536 threads for 1400 elements.
    auto run = [&](auto kernel) {
        out = out0;
        launch(2, 3, 256, kernel);
    };

    run([&] { add_assign(p, a.data(), out.data()); });
    for (unsigned int i = 0; i < n; i++)
        CHECK(out[i] == out0[i] + a[i], "add_assign %u: got %g, want %g", i, out[i], out0[i] + a[i]);

    run([&] { add_row(p, a.data(), out.data()); });
    for (unsigned int i = 0; i < n; i++)
        CHECK(out[i] == out0[i] + a[i % cols], "add_row %u: got %g, want %g", i, out[i], out0[i] + a[i % cols]);

    run([&] { scale(p, out.data()); });
    for (unsigned int i = 0; i < n; i++)
        CHECK(out[i] == out0[i] * 0.37f, "scale %u: got %g, want %g", i, out[i], out0[i] * 0.37f);

    run([&] { silu_mul(p, a.data(), b.data(), out.data()); });
    for (unsigned int i = 0; i < n; i++) {
        const double want = a[i] * logistic(a[i]) * b[i];
        CHECK(near(out[i], want, 1e-5), "silu_mul %u: got %g, want %g", i, out[i], want);
    }

    run([&] { silu_mul_backward(p, a.data(), b.data(), c.data(), out.data(), out2.data()); });
    for (unsigned int i = 0; i < n; i++) {
        const double g = a[i], s = logistic(g);
        const double d_gate = c[i] * b[i] * s * (1 + g * (1 - s)), d_up = c[i] * g * s;
        CHECK(near(out[i], d_gate, 1e-5), "silu_mul_backward d_gate %u: got %g, want %g", i, out[i], d_gate);
        CHECK(near(out2[i], d_up, 1e-5), "silu_mul_backward d_up %u: got %g, want %g", i, out2[i], d_up);
    }

    run([&] { gelu_mul(p, a.data(), b.data(), out.data()); });
    for (unsigned int i = 0; i < n; i++) {
        double v, d;
        gelu_and_derivative(a[i], v, d);
        CHECK(near(out[i], v * b[i], 1e-5), "gelu_mul %u: got %g, want %g", i, out[i], v * b[i]);
    }

    run([&] { gelu_mul_backward(p, a.data(), b.data(), c.data(), out.data(), out2.data()); });
    for (unsigned int i = 0; i < n; i++) {
        double v, d;
        gelu_and_derivative(a[i], v, d);
        const double d_gate = c[i] * b[i] * d, d_up = c[i] * v;
        CHECK(near(out[i], d_gate, 1e-5), "gelu_mul_backward d_gate %u: got %g, want %g", i, out[i], d_gate);
        CHECK(near(out2[i], d_up, 1e-5), "gelu_mul_backward d_up %u: got %g, want %g", i, out2[i], d_up);
    }
    return finish("elementwise");
}
