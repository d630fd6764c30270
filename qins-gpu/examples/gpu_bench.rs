//! Prefill and decode speed of a .qins model on the GPU (the best adapter,
//! software ones included), without the daemon (`qinsd bench --device gpu
//! MODEL` is the same measurement from the installed binary):
//!
//!     cargo run --release -p qins-gpu --example gpu_bench -- MODEL.qins [PROMPT] [DECODE] [f16|f32]
//!
//! PROMPT tokens (default 512) are prefilled, then DECODE greedy steps
//! (default 128) are timed; the cache is f16 where the GPU has
//! shader-f16 unless `f32` is given.

use std::path::PathBuf;
use std::sync::Arc;

use qins_core::container::QinsFile;
use qins_core::model::Model;
use qins_gpu::device::{DeviceChoice, open};
use qins_gpu::shaders::KvType;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(
        args.next()
            .ok_or("usage: gpu_bench MODEL.qins [PROMPT] [DECODE] [f16|f32]")?,
    );
    let prompt: usize = args.next().map_or(Ok(512), |a| a.parse())?;
    let decode: usize = args.next().map_or(Ok(128), |a| a.parse())?;
    let kv_arg = args.next();
    let file = QinsFile::open(&path)?;
    let model = Model::load(&file.header.config, file.load()?)?;
    let ctx = Arc::new(open(DeviceChoice::Gpu)?.ok_or("no GPU")?);
    let kv = match kv_arg.as_deref() {
        Some("f32") => KvType::F32,
        Some("f16") if ctx.has_shader_f16() => KvType::F16,
        Some("f16") => return Err("this GPU has no shader-f16".into()),
        None if ctx.has_shader_f16() => KvType::F16,
        None => KvType::F32,
        Some(other) => return Err(format!("unknown cache type {other} (f16 or f32)").into()),
    };
    let report = qins_gpu::bench::bench(ctx, &model, kv, prompt, decode, 1)?;
    println!("{}", path.display());
    println!("{report}");
    Ok(())
}
