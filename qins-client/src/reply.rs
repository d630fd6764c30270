//! Streaming one chat reply to a writer, shared by `ask` and `chat`.

use std::io::Write;

use anyhow::{Context as _, Result};
use qins_proto::v1::{ChatDone, ChatRequest, chat_event};
use tokio::signal::unix::Signal;

use crate::connect::Client;

pub struct Reply {
    /// Everything received, also when the reply was interrupted.
    pub text: String,
    /// The daemon's closing event; `None` when interrupted.
    pub done: Option<ChatDone>,
    pub interrupted: bool,
}

/// Sends `request` and writes each delta to `out` as it arrives. When
/// `interrupt` fires (Ctrl-C) the stream is dropped, which makes the daemon
/// cancel the generation, and the text so far is returned.
pub async fn stream(
    client: &mut Client,
    request: ChatRequest,
    out: &mut impl Write,
    interrupt: Option<&mut Signal>,
) -> Result<Reply> {
    let mut text = String::new();
    let result = {
        let receive = receive(client, request, out, &mut text);
        tokio::pin!(receive);
        tokio::select! {
            result = &mut receive => result.map(Some),
            () = interrupted(interrupt) => Ok(None),
        }
    };
    out.flush().context("cannot write the reply")?;
    Ok(match result? {
        Some(done) => Reply {
            text,
            done,
            interrupted: false,
        },
        None => Reply {
            text,
            done: None,
            interrupted: true,
        },
    })
}

async fn receive(
    client: &mut Client,
    request: ChatRequest,
    out: &mut impl Write,
    text: &mut String,
) -> Result<Option<ChatDone>> {
    let mut events = client.chat(request).await?.into_inner();
    let mut done = None;
    while let Some(event) = events.message().await? {
        match event.event {
            Some(chat_event::Event::Delta(delta)) => {
                out.write_all(delta.text.as_bytes())
                    .and_then(|()| out.flush())
                    .context("cannot write the reply")?;
                text.push_str(&delta.text);
            }
            Some(chat_event::Event::Done(d)) => done = Some(d),
            None => {}
        }
    }
    Ok(done)
}

async fn interrupted(signal: Option<&mut Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}
