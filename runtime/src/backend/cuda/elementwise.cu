// CUDA port of wgpu/elementwise.wgsl: per-element ops; one thread per element, 256 per block,
// blocks laid out 2-D (grid(ceil(n/256)): x up to 65535, then y) so large tensors fit one launch.
//
// Kernels (args in WGSL binding order: p=0, a=1, b=2, c=3, out=4, out2=5):
// add_assign: block 256; args p, a, out
// add_row: block 256; args p, a, out
// silu_mul: block 256; args p, a, b, out
// silu_mul_backward: block 256; args p, a, b, c, out, out2
// gelu_mul: block 256; args p, a, b, out
// gelu_mul_backward: block 256; args p, a, b, c, out, out2
// scale: block 256; args p, out
//
// Floating-point order follows the WGSL; compile with --fmad=false to keep a·b + c from
// contracting into fma (the cpu backend does not fuse).

struct Params {
    unsigned int n;     // elements
    unsigned int cols;  // row width (add_row)
    float factor;       // multiplier (scale)
    unsigned int _pad[13];
};
static_assert(sizeof(Params) == 64, "elementwise Params must be 64 bytes");

static __device__ __forceinline__ unsigned int index() {
    return (blockIdx.x + blockIdx.y * gridDim.x) * 256u + threadIdx.x;
}

static __device__ __forceinline__ float sigmoid(float g) {
    return 1.0f / (1.0f + expf(-g));
}

extern "C" __global__ void __launch_bounds__(256) add_assign(const Params p, const float* a, float* out) {
    const unsigned int i = index();
    if (i < p.n) { out[i] += a[i]; }
}

extern "C" __global__ void __launch_bounds__(256) add_row(const Params p, const float* a, float* out) {
    const unsigned int i = index();
    if (i < p.n) { out[i] += a[i % p.cols]; }
}

extern "C" __global__ void __launch_bounds__(256) silu_mul(const Params p, const float* a, const float* b,
                                                           float* out) {
    const unsigned int i = index();
    if (i < p.n) {
        const float g = a[i];
        out[i] = g * sigmoid(g) * b[i];
    }
}

// a = gate, b = up, c = dy; out = d gate, out2 = d up.
extern "C" __global__ void __launch_bounds__(256) silu_mul_backward(const Params p, const float* a,
                                                                    const float* b, const float* c,
                                                                    float* out, float* out2) {
    const unsigned int i = index();
    if (i < p.n) {
        const float g = a[i];
        const float s = sigmoid(g);
        out[i] = c[i] * b[i] * s * (1.0f + g * (1.0f - s));
        out2[i] = c[i] * g * s;
    }
}

// GELU, tanh approximation, and its derivative: (gelu(g), gelu'(g)).
static __device__ __forceinline__ void gelu(float g, float& value, float& deriv) {
    // tanh saturates to ±1 in f32 past |10|; clamping first keeps a GPU's exp-based tanh
    // from overflowing to inf/inf on large gates.
    const float inner = fminf(fmaxf(0.7978846f * (g + 0.044715f * g * g * g), -10.0f), 10.0f);
    const float t = tanhf(inner);
    // WGSL folds the abstract-float constant 3.0 * 0.044715 before converting it to f32.
    const float d_inner = 0.7978846f * (1.0f + (float)(3.0 * 0.044715) * g * g);
    value = 0.5f * g * (1.0f + t);
    deriv = 0.5f * (1.0f + t) + 0.5f * g * (1.0f - t * t) * d_inner;
}

extern "C" __global__ void __launch_bounds__(256) gelu_mul(const Params p, const float* a, const float* b,
                                                           float* out) {
    const unsigned int i = index();
    if (i < p.n) {
        float v, d;
        gelu(a[i], v, d);
        out[i] = v * b[i];
    }
}

// a = gate, b = up, c = dy; out = d gate, out2 = d up.
extern "C" __global__ void __launch_bounds__(256) gelu_mul_backward(const Params p, const float* a,
                                                                    const float* b, const float* c,
                                                                    float* out, float* out2) {
    const unsigned int i = index();
    if (i < p.n) {
        float v, d;
        gelu(a[i], v, d);
        out[i] = c[i] * b[i] * d;
        out2[i] = c[i] * v;
    }
}

extern "C" __global__ void __launch_bounds__(256) scale(const Params p, float* out) {
    const unsigned int i = index();
    if (i < p.n) { out[i] *= p.factor; }
}
