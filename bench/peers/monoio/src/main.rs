//! monoio peer: the nearest runtime to c2m. One monoio runtime per core on the io_uring
//! driver, each thread pinned and with its own SO_REUSEPORT listener (the kernel spreads
//! connections over them), one task per connection with owned (rent) buffers.

use std::io;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};
use rust_peer::protocol::{MAX_FRAME, Session, Verdict};

const NAME: &str = "peer-monoio";

fn main() {
    let args = rust_peer::cli::from_env(NAME);
    rust_peer::raise_nofile_limit();
    // Exit at once on SIGTERM/SIGINT: nothing is worth saving, and the runner wants it quick.
    ctrlc::set_handler(|| std::process::exit(0)).unwrap_or_else(|e| fail("signal handler", io::Error::other(e)));
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    // The first thread binds first, so that port 0 becomes one port that the others then share.
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut addr = args.listen;
    let mut threads = Vec::new();
    for worker in 0..args.workers {
        let core = cores.get(worker % cores.len().max(1)).copied();
        let ready = ready_tx.clone();
        threads.push(std::thread::spawn(move || run_worker(worker, core, addr, ready)));
        match ready_rx.recv() {
            Ok(Ok(bound)) => addr = bound,
            Ok(Err(e)) => fail("binding", e),
            Err(_) => fail("starting a worker", io::Error::other("worker thread died")),
        }
    }
    println!("READY {addr}");
    for t in threads {
        let _ = t.join();
    }
}

fn fail(what: &str, e: io::Error) -> ! {
    eprintln!("{NAME}: {what}: {e}");
    std::process::exit(1)
}

fn run_worker(worker: usize, core: Option<core_affinity::CoreId>, addr: SocketAddr, ready: mpsc::Sender<io::Result<SocketAddr>>) {
    if let Some(core) = core {
        core_affinity::set_for_current(core);
    }
    let built = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().enable_timer().build();
    let mut runtime = match built {
        Ok(r) => r,
        Err(e) => return drop(ready.send(Err(e))),
    };
    runtime.block_on(async move {
        let opts = ListenerOpts::new().reuse_port(true).reuse_addr(true).backlog(4096);
        let listener = match TcpListener::bind_with_config(addr, &opts).and_then(|l| l.local_addr().map(|a| (l, a))) {
            Ok((l, bound)) => {
                let _ = ready.send(Ok(bound));
                l
            }
            Err(e) => return drop(ready.send(Err(e))),
        };
        // Session ids: the worker in the top bits, as c2m serve does.
        let mut next_session = (worker as u64) << 48;
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    next_session += 1;
                    monoio::spawn(connection(stream, next_session));
                }
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning on the same error.
                    eprintln!("{NAME}: accept: {e}");
                    monoio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    });
}

async fn connection(mut stream: TcpStream, session_id: u64) {
    let _ = stream.set_nodelay(true);
    let mut session = Session::new(session_id);
    // A frame is at most MAX_FRAME bytes, so a partial one always leaves room to read into.
    let mut input: Vec<u8> = Vec::with_capacity(MAX_FRAME);
    let mut out: Vec<u8> = Vec::new();
    loop {
        let have = input.len();
        let (got, buf) = stream.read(input.slice_mut(have..)).await;
        input = buf.into_inner();
        match got {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let (used, verdict) = session.on_bytes(&input, &mut out);
        input.drain(..used);
        if !out.is_empty() {
            let (sent, buf) = stream.write_all(out).await;
            out = buf;
            if sent.is_err() {
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
async fn close_after_last_words(mut stream: TcpStream, mut sink: Vec<u8>) {
    let _ = stream.shutdown().await;
    let drain = async move {
        loop {
            sink.clear();
            let (got, buf) = stream.read(sink).await;
            sink = buf;
            if !matches!(got, Ok(n) if n > 0) {
                return;
            }
        }
    };
    let _ = monoio::time::timeout(Duration::from_secs(5), drain).await;
}
