// Causal attention of n new tokens (queries at columns `q_offset` of
// rows first_row .. first_row + n, `q_stride` wide, already rotated) at
// positions start .. start + n
// over one layer's cache (kv_heads x capacity x head_dim, the new
// tokens already stored). Writes rows first_row .. first_row + n of
// out (heads x head_dim each).
//
// One workgroup per (token, head), softmax in one pass over blocks of WG
// positions ("online" softmax: a running maximum and sum, the weighted
// value sum rescaled when the maximum grows), so any context fits in
// fixed workgroup memory. head_dim <= 4 * WG. Prefixed like kv_store.wgsl
// with the cache's element type `kv`.

struct Params {
    n: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    capacity: u32,
    start: u32,
    q_stride: u32,
    q_offset: u32,
    // Row of the segment's first token in qkv and out (batched steps
    // put several sequences' rows in one buffer).
    first_row: u32,
    scale: f32,
}

const WG: u32 = 64u;
const DIMS_PER_LANE: u32 = 4u;
// Below any score; WGSL has no infinity literal.
const LOWEST: f32 = -3.4028235e38;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> keys: array<kv>;
@group(0) @binding(3) var<storage, read> values: array<kv>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> query: array<f32, 256>;
var<workgroup> probs: array<f32, WG>;
var<workgroup> scratch: array<f32, WG>;

fn reduce_max(lane: u32) -> f32 {
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if lane < half {
            scratch[lane] = max(scratch[lane], scratch[lane + half]);
        }
        workgroupBarrier();
    }
    let result = scratch[0];
    workgroupBarrier();
    return result;
}

fn reduce_sum(lane: u32) -> f32 {
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if lane < half {
            scratch[lane] += scratch[lane + half];
        }
        workgroupBarrier();
    }
    let result = scratch[0];
    workgroupBarrier();
    return result;
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let t = group.x;
    let head = group.y;
    let d = params.head_dim;
    let kv_head = head / (params.heads / params.kv_heads);
    let row = params.first_row + t;
    let q_base = row * params.q_stride + params.q_offset + head * d;
    for (var i = lane; i < d; i += WG) {
        query[i] = qkv[q_base + i];
    }
    workgroupBarrier();

    let len = params.start + t + 1u;
    let cache = kv_head * params.capacity * d;
    var running_max = LOWEST;
    var running_sum = 0.0;
    var acc = array<f32, DIMS_PER_LANE>(0.0, 0.0, 0.0, 0.0);
    for (var p0 = 0u; p0 < len; p0 += WG) {
        let p = p0 + lane;
        var score = LOWEST;
        if p < len {
            var dot = 0.0;
            let key = cache + p * d;
            for (var i = 0u; i < d; i++) {
                dot += query[i] * f32(keys[key + i]);
            }
            score = dot * params.scale;
        }
        scratch[lane] = score;
        workgroupBarrier();
        let new_max = max(running_max, reduce_max(lane));
        let prob = select(0.0, exp(score - new_max), p < len);
        probs[lane] = prob;
        scratch[lane] = prob;
        workgroupBarrier();
        let block_sum = reduce_sum(lane);
        let correction = exp(running_max - new_max);
        running_sum = running_sum * correction + block_sum;
        let block = min(WG, len - p0);
        for (var k = 0u; k < DIMS_PER_LANE; k++) {
            let dim = lane + k * WG;
            if dim < d {
                var sum = 0.0;
                for (var j = 0u; j < block; j++) {
                    sum += probs[j] * f32(values[cache + (p0 + j) * d + dim]);
                }
                acc[k] = acc[k] * correction + sum;
            }
        }
        running_max = new_max;
        workgroupBarrier();
    }
    let out_base = (row * params.heads + head) * d;
    for (var k = 0u; k < DIMS_PER_LANE; k++) {
        let dim = lane + k * WG;
        if dim < d {
            out[out_base + dim] = acc[k] / running_sum;
        }
    }
}
