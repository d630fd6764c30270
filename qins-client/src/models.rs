//! `qins models`, `qins load MODEL`, `qins unload`.

use std::path::Path;

use anyhow::Result;
use qins_proto::v1::{ListModelsRequest, LoadModelRequest, ModelInfo, UnloadModelRequest};

use crate::connect::{self, Client};
use crate::format::{bytes, count};

pub async fn list(socket: &Path) -> Result<()> {
    let mut client = connect::client(socket).await?;
    let reply = client.list_models(ListModelsRequest {}).await?.into_inner();
    if reply.models.is_empty() {
        outln!(
            "no models in {}; add one with: qins convert SRC",
            reply.models_dir
        )?;
    } else {
        crate::output::print(&table(&reply.models))?;
    }
    Ok(())
}

/// NAME, SIZE, ARCH, PARAMS columns; `*` marks the loaded model.
fn table(models: &[ModelInfo]) -> String {
    let rows: Vec<[String; 4]> = models
        .iter()
        .map(|m| {
            let mark = if m.loaded { "*" } else { " " };
            [
                format!("{mark} {}", m.name),
                bytes(m.file_bytes),
                m.architecture.clone(),
                count(m.parameters),
            ]
        })
        .collect();
    let header = ["  NAME", "SIZE", "ARCH", "PARAMS"].map(String::from);
    let mut widths = [0usize; 4];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub async fn load(socket: &Path, model: String) -> Result<()> {
    let mut client = connect::client(socket).await?;
    load_with(&mut client, model).await
}

pub async fn load_with(client: &mut Client, model: String) -> Result<()> {
    let reply = client
        .load_model(LoadModelRequest { model })
        .await?
        .into_inner();
    match reply.model {
        Some(m) => outln!(
            "loaded {} ({}, {} parameters, {}) in {:.1} s",
            m.name,
            m.architecture,
            count(m.parameters),
            bytes(m.file_bytes),
            reply.load_seconds
        )?,
        None => outln!("loaded in {:.1} s", reply.load_seconds)?,
    }
    Ok(())
}

pub async fn unload(socket: &Path) -> Result<()> {
    let mut client = connect::client(socket).await?;
    let reply = client
        .unload_model(UnloadModelRequest {})
        .await?
        .into_inner();
    if reply.unloaded.is_empty() {
        outln!("no model was loaded")?;
    } else {
        outln!("unloaded {}", reply.unloaded)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_marks_the_loaded_model() {
        let models = [
            ModelInfo {
                name: "smollm2".into(),
                file_bytes: 150_000_000,
                architecture: "llama".into(),
                parameters: 134_515_008,
                loaded: true,
                ..ModelInfo::default()
            },
            ModelInfo {
                name: "tiny".into(),
                file_bytes: 177_719,
                architecture: "phi3".into(),
                parameters: 40_000,
                ..ModelInfo::default()
            },
        ];
        let t = table(&models);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "  NAME     SIZE    ARCH   PARAMS");
        assert_eq!(lines[1], "* smollm2  150 MB  llama  135M");
        assert_eq!(lines[2], "  tiny     178 KB  phi3   40K");
    }
}
