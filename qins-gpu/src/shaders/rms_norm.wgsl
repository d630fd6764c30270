// RMSNorm of rows `first_row .. first_row + n` of x (`dim` wide) into rows
// 0 .. n of out: out = weight * (x / sqrt(mean(x²) + eps)), as the CPU's
// `rms_norm`. One workgroup per row; the sum of squares is a tree
// reduction in workgroup memory.

struct Params {
    dim: u32,
    n: u32,
    first_row: u32,
    eps: f32,
}

const WG: u32 = 128u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let row = group.x;
    if row >= params.n {
        return;
    }
    let dim = params.dim;
    let src = (params.first_row + row) * dim;
    var sum = 0.0;
    for (var i = lane; i < dim; i += WG) {
        let v = x[src + i];
        sum += v * v;
    }
    partial[lane] = sum;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if lane < half {
            partial[lane] += partial[lane + half];
        }
        workgroupBarrier();
    }
    let scale = 1.0 / sqrt(partial[0] / f32(dim) + params.eps);
    let dst = row * dim;
    for (var i = lane; i < dim; i += WG) {
        out[dst + i] = weight[i] * (x[src + i] * scale);
    }
}
