//! tokio peer: what most Rust users would write. A multi-thread runtime (`--workers` worker
//! threads, work stealing), one listener, one task per connection reading into a `BytesMut`
//! (4 KiB, as in tokio's mini-redis) and writing its replies with `write_all`.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rust_peer::protocol::{MAX_FRAME, Session, Verdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::signal::unix::{SignalKind, signal};

const NAME: &str = "peer-tokio";

fn main() {
    let args = rust_peer::cli::from_env(NAME);
    rust_peer::raise_nofile_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail("starting the runtime", e));
    if let Err(e) = runtime.block_on(serve(args.listen)) {
        fail("serving", e);
    }
    // Open connections' tasks are dropped, not awaited: exit at once.
    runtime.shutdown_background();
}

fn fail(what: &str, e: io::Error) -> ! {
    eprintln!("{NAME}: {what}: {e}");
    std::process::exit(1)
}

/// SO_REUSEPORT, so several processes can share the port when one cannot hold enough fds.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Accepts until SIGTERM or SIGINT.
async fn serve(addr: SocketAddr) -> io::Result<()> {
    let listener = listen(addr)?;
    println!("READY {}", listener.local_addr()?);
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut next_session = 0u64;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    next_session += 1;
                    tokio::spawn(connection(stream, next_session));
                }
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning on the same error.
                    eprintln!("{NAME}: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = terminate.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
        }
    }
}

async fn connection(mut stream: TcpStream, session_id: u64) {
    let _ = stream.set_nodelay(true);
    let mut session = Session::new(session_id);
    let mut input = BytesMut::with_capacity(MAX_FRAME);
    let mut out = Vec::new();
    loop {
        match stream.read_buf(&mut input).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let (used, verdict) = session.on_bytes(&input, &mut out);
        input.advance(used);
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if verdict == Verdict::Close {
            return close_after_last_words(stream, input).await;
        }
    }
}

/// After ERROR or BYE: send FIN, then read and drop what the client still sends until it
/// closes (at most 5 s), so the close never meets unread data and becomes a RST that could
/// destroy the ERROR in flight. c2m serve does the same.
async fn close_after_last_words(mut stream: TcpStream, mut sink: BytesMut) {
    let _ = stream.shutdown().await;
    let drain = async {
        loop {
            sink.clear();
            match stream.read_buf(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
}
