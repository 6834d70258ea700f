// Per-element ops; one invocation per element, 256 per workgroup, workgroups laid out 2-D
// so tensors past 65,535 workgroups still fit one dispatch.

struct Params {
    n: u32,     // elements
    cols: u32,  // row width (add_row)
    factor: f32, // multiplier (scale)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> c: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> out2: array<f32>;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid.x;
}

fn sigmoid(g: f32) -> f32 {
    return 1.0 / (1.0 + exp(-g));
}

@compute @workgroup_size(256)
fn add_assign(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if i < p.n { out[i] += a[i]; }
}

@compute @workgroup_size(256)
fn add_row(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if i < p.n { out[i] += a[i % p.cols]; }
}

@compute @workgroup_size(256)
fn silu_mul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if i < p.n {
        let g = a[i];
        out[i] = g * sigmoid(g) * b[i];
    }
}

// a = gate, b = up, c = dy; out = d gate, out2 = d up.
@compute @workgroup_size(256)
fn silu_mul_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if i < p.n {
        let g = a[i];
        let s = sigmoid(g);
        out[i] = c[i] * b[i] * s * (1.0 + g * (1.0 - s));
        out2[i] = c[i] * g * s;
    }
}

// GELU, tanh approximation, and its derivative: (gelu(g), gelu'(g)).
fn gelu(g: f32) -> vec2<f32> {
    // tanh saturates to ±1 in f32 past |10|; clamping first keeps a GPU's exp-based tanh
    // from overflowing to inf/inf on large gates.
    let inner = clamp(0.7978846 * (g + 0.044715 * g * g * g), -10.0, 10.0);
    let t = tanh(inner);
    let d_inner = 0.7978846 * (1.0 + 3.0 * 0.044715 * g * g);
    return vec2<f32>(0.5 * g * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * d_inner);
}

@compute @workgroup_size(256)
fn gelu_mul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if i < p.n { out[i] = gelu(a[i]).x * b[i]; }
}

// a = gate, b = up, c = dy; out = d gate, out2 = d up.
@compute @workgroup_size(256)
fn gelu_mul_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if i < p.n {
        let g = gelu(a[i]);
        out[i] = c[i] * b[i] * g.y;
        out2[i] = c[i] * g.x;
    }
}

@compute @workgroup_size(256)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if i < p.n { out[i] *= p.factor; }
}
