//! An instant-answer protocol child in Rust: the floor for what the host side costs per call.
//!
//! It speaks protocol v1 on fd `PLUGD_FD` (default 3) with blocking I/O, says `hello` with one
//! action `echo` (unless `--no-hello`), and answers `call` with
//! `{"jsonrpc":"2.0","id":N,"result":{"value":<payload>}}`, like `bench/raw_pipe_child.py`.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;

use serde::Deserialize;
use serde_json::value::RawValue;

const HELLO: &[u8] = br#"{"jsonrpc":"2.0","id":1,"method":"hello","params":{"protocol":1,"sdk":"rust-fake/0","actions":[{"name":"echo","description":"Echo"}]}}
"#;

#[derive(Deserialize)]
struct Frame<'a> {
    id: Option<u64>,
    #[serde(borrow)]
    method: Option<&'a str>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Call<'a> {
    #[serde(borrow)]
    payload: &'a RawValue,
}

pub(crate) fn run(hello: bool) -> anyhow::Result<()> {
    let fd: i32 = std::env::var("PLUGD_FD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    // SAFETY: the parent handed us this descriptor as our protocol socket; nothing else owns it.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(256 * 1024, stream);
    if hello {
        writer.write_all(HELLO)?;
    }
    let mut line = Vec::with_capacity(4096);
    let mut out = Vec::with_capacity(4096);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let frame: Frame<'_> = serde_json::from_slice(&line)?;
        match (frame.method, frame.id) {
            (Some("call"), Some(id)) => {
                let params = frame.params.map(RawValue::get).unwrap_or("{}");
                let call: Call<'_> = serde_json::from_str(params)?;
                write!(
                    out,
                    r#"{{"jsonrpc":"2.0","id":{id},"result":{{"value":{}}}}}"#,
                    call.payload.get()
                )?;
                out.push(b'\n');
            }
            (Some("ping"), Some(id)) => {
                writeln!(out, r#"{{"jsonrpc":"2.0","id":{id},"result":"pong"}}"#)?
            }
            (Some("shutdown"), _) => return Ok(()),
            _ => {}
        }
        // While whole frames are already buffered, their replies are batched into one write, so a
        // burst of calls costs few system calls (as the Python SDK does with its read callback).
        if !out.is_empty() && !reader.buffer().contains(&b'\n') {
            writer.write_all(&out)?;
            out.clear();
        }
    }
}
