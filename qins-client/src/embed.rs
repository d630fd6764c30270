//! `qins embed TEXT...`: each text's embedding from the resident model, one
//! JSON array per line (in the order given), or one JSON object with
//! the vectors and the token count (`--json`).

use std::path::Path;

use anyhow::Result;
use qins_proto::v1::{EmbedInput, EmbedRequest};

use crate::connect;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The texts to embed (raw text, no chat template).
    #[arg(required = true)]
    pub texts: Vec<String>,
    /// Cut a text longer than the context instead of failing.
    #[arg(long)]
    pub truncate: bool,
    /// One JSON object: model, dimensions, prompt_tokens, embeddings.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(socket: &Path, args: Args) -> Result<()> {
    let mut client = connect::client(socket).await?;
    let request = EmbedRequest {
        inputs: args
            .texts
            .into_iter()
            .map(|text| EmbedInput {
                text,
                tokens: Vec::new(),
            })
            .collect(),
        truncate: args.truncate,
    };
    let reply = client.embed(request).await?.into_inner();
    let vectors: Vec<&[f32]> = reply
        .embeddings
        .iter()
        .map(|e| e.values.as_slice())
        .collect();
    if args.json {
        let object = serde_json::json!({
            "model": reply.model,
            "dimensions": reply.dimensions,
            "prompt_tokens": reply.prompt_tokens,
            "embeddings": vectors,
        });
        outln!("{object}")?;
    } else {
        for vector in vectors {
            outln!("{}", serde_json::to_string(vector)?)?;
        }
    }
    Ok(())
}
