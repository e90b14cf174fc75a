//! A fault-injecting TCP proxy on loopback, in process, on tokio: put it
//! between a client and `redis-server`, and switch what it does to the bytes
//! while the test runs.
//!
//! | fault | what the client sees |
//! | --- | --- |
//! | `Pass` | Redis |
//! | `Latency(d)` | each chunk, either way, held `d` first |
//! | `Blackhole` | connections stay open, nothing comes back (bytes held, delivered when the fault ends) |
//! | `Reset` | every connection reset (RST), new ones too |
//! | `CloseAfter(n)` | each connection closed after `n` bytes, both ways together |
//! | `DropReplies` | requests reach Redis; a connection that an answer comes back on is closed, the answer lost (the command applied) |

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Pass,
    Latency(Duration),
    Blackhole,
    Reset,
    CloseAfter(usize),
    DropReplies,
}

pub struct FaultProxy {
    pub port: u16,
    fault: watch::Sender<Fault>,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy on a free loopback port in front of `127.0.0.1:upstream`,
    /// passing bytes through until told otherwise.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy port");
        let port = listener.local_addr().expect("proxy address").port();
        let (fault, faults) = watch::channel(Fault::Pass);
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let accepted = Arc::clone(&accepted);
            async move {
                // Dropped with the accept loop: every connection goes too.
                let mut connections = JoinSet::new();
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    accepted.fetch_add(1, Ordering::Relaxed);
                    connections.spawn(relay(client, upstream, faults.clone()));
                    while connections.try_join_next().is_some() {}
                }
            }
        });
        Self {
            port,
            fault,
            accepted,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Switches the fault, for every connection, at once.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Closing a socket with a zero linger sends RST, what `Reset` is (and
/// blocks nothing: the deprecation is about a non-zero linger).
#[allow(deprecated)]
fn reset_on_close(socket: &TcpStream) {
    let _ = socket.set_linger(Some(Duration::ZERO));
}

async fn relay(client: TcpStream, upstream: u16, faults: watch::Receiver<Fault>) {
    reset_on_close(&client);
    if *faults.borrow() == Fault::Reset {
        return;
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    reset_on_close(&server);
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (from_client, to_client) = client.into_split();
    let (from_server, to_server) = server.into_split();
    let moved = AtomicUsize::new(0);
    // Either direction ending ends the connection.
    tokio::select! {
        () = pump(from_client, to_server, faults.clone(), &moved, false) => {}
        () = pump(from_server, to_client, faults, &moved, true) => {}
    }
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut faults: watch::Receiver<Fault>,
    moved: &AtomicUsize,
    replies: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = faults.changed() => {
                if changed.is_err() || *faults.borrow_and_update() == Fault::Reset {
                    return;
                }
                continue;
            }
        };
        let mut end = n;
        loop {
            let fault = *faults.borrow_and_update();
            match fault {
                Fault::Pass => break,
                // The answer is lost with its connection.
                Fault::DropReplies if replies => return,
                Fault::DropReplies => break,
                Fault::Latency(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                Fault::Blackhole => {
                    if faults.changed().await.is_err() {
                        return;
                    }
                }
                Fault::Reset => return,
                Fault::CloseAfter(limit) => {
                    let before = moved.fetch_add(n, Ordering::Relaxed);
                    if before + n > limit {
                        end = limit.saturating_sub(before);
                        let _ = to.write_all(&buf[..end]).await;
                        return;
                    }
                    break;
                }
            }
        }
        if to.write_all(&buf[..end]).await.is_err() {
            return;
        }
    }
}
