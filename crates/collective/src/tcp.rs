//! Host-side collectives over plain TCP, and the `torchrun` environment they start from.
//!
//! Rank 0 is the hub of a star: it listens, every other rank connects to it once, and each
//! operation is one round trip. Every rank sends rank 0 its part (its values, its bytes, or
//! nothing), rank 0 combines the parts in rank order and sends the result back. A star is
//! simple and deterministic (sums are added in rank order, so every rank ends with the
//! same bits), and rank 0 sees every rank in every operation: a rank that went away or
//! called something else is reported, by name, on every rank, instead of leaving the
//! others waiting. Its cost is that rank 0 moves `world_size` times the data, which is
//! nothing for the messages it is meant for (an NCCL id, evaluation results, loss sums,
//! barriers) and too much for the gradients of a large model: those go through NCCL.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::{check_root, Collective, CollectiveError};

const ENGINE: &str = "tcp";

/// Sent by every joining rank first, so that rank 0 can tell its ranks from strangers.
const MAGIC: &[u8] = b"coconut-collective/tcp/1";

/// Pause between two tries to reach rank 0, and between two looks for a joining rank.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Longest a single connection attempt may take, so that retries happen.
const CONNECT_ATTEMPT: Duration = Duration::from_secs(2);

/// Where `torchrun` (and launchers that copy it) tells a worker who it is.
///
/// Read with [`TorchrunEnv::from_env`]; the fields are public so that a test or another
/// launcher can fill them in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchrunEnv {
    /// `RANK`: this worker's rank over all nodes.
    pub rank: usize,
    /// `WORLD_SIZE`: the number of workers over all nodes.
    pub world_size: usize,
    /// `LOCAL_RANK`: this worker's rank on its node, the CUDA device to use.
    pub local_rank: usize,
    /// `MASTER_ADDR`: the host of rank 0, as the other ranks reach it.
    pub master_addr: String,
    /// `MASTER_PORT`: the port torchrun chose for the workers' rendezvous.
    pub master_port: u16,
    /// The port [`Tcp::connect`] listens on (rank 0) and connects to (the others):
    /// `COCONUT_RENDEZVOUS_PORT` if set; otherwise `MASTER_PORT + 1` when
    /// `TORCHELASTIC_USE_AGENT_STORE=True`, because then torchrun's own agent already
    /// serves its key-value store on `MASTER_PORT` (recent torchrun does this by default);
    /// otherwise `MASTER_PORT`.
    pub rendezvous_port: u16,
}

impl TorchrunEnv {
    /// Reads `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT` (and the two
    /// variables that choose [`TorchrunEnv::rendezvous_port`]).
    ///
    /// `None` when `WORLD_SIZE` is not set: not started by torchrun. Once it is set, the
    /// others must be too: an error names the first one missing or malformed.
    pub fn from_env() -> Option<Result<TorchrunEnv, CollectiveError>> {
        Self::from_vars(|name| {
            std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
        })
    }

    /// [`TorchrunEnv::from_env`] over any source of variables.
    fn from_vars(
        var: impl Fn(&str) -> Option<String>,
    ) -> Option<Result<TorchrunEnv, CollectiveError>> {
        var("WORLD_SIZE")?;
        let required = |name: &'static str| {
            var(name).ok_or_else(|| CollectiveError::Environment {
                variable: name,
                message: "not set, though WORLD_SIZE is (torchrun sets both)".into(),
            })
        };
        let number = |name: &'static str| -> Result<usize, CollectiveError> {
            let value = required(name)?;
            value.trim().parse().map_err(|_| CollectiveError::Environment {
                variable: name,
                message: format!("{value:?} is not a non-negative integer"),
            })
        };
        let port = |name: &'static str, value: String| -> Result<u16, CollectiveError> {
            match value.trim().parse::<u16>() {
                Ok(port) if port > 0 => Ok(port),
                _ => Err(CollectiveError::Environment {
                    variable: name,
                    message: format!("{value:?} is not a port (1 to 65535)"),
                }),
            }
        };
        Some((|| {
            let world_size = number("WORLD_SIZE")?;
            if world_size == 0 {
                return Err(CollectiveError::Environment {
                    variable: "WORLD_SIZE",
                    message: "is 0: a world has at least one rank".into(),
                });
            }
            let rank = number("RANK")?;
            if rank >= world_size {
                return Err(CollectiveError::Environment {
                    variable: "RANK",
                    message: format!("{rank} is not below WORLD_SIZE {world_size}"),
                });
            }
            let local_rank = number("LOCAL_RANK")?;
            let master_addr = required("MASTER_ADDR")?.trim().to_string();
            if master_addr.is_empty() {
                return Err(CollectiveError::Environment {
                    variable: "MASTER_ADDR",
                    message: "is empty".into(),
                });
            }
            let master_port = port("MASTER_PORT", required("MASTER_PORT")?)?;
            let rendezvous_port = if let Some(value) = var("COCONUT_RENDEZVOUS_PORT") {
                port("COCONUT_RENDEZVOUS_PORT", value)?
            } else if var("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True") {
                master_port.checked_add(1).ok_or_else(|| CollectiveError::Environment {
                    variable: "MASTER_PORT",
                    message: "is 65535 and taken by torchrun's store, so the rendezvous has \
                              no port: set COCONUT_RENDEZVOUS_PORT"
                        .into(),
                })?
            } else {
                master_port
            };
            Ok(TorchrunEnv {
                rank,
                world_size,
                local_rank,
                master_addr,
                master_port,
                rendezvous_port,
            })
        })())
    }

    /// `host:port` of the rendezvous, with an IPv6 literal in brackets.
    pub fn rendezvous_address(&self) -> String {
        if self.master_addr.contains(':') && !self.master_addr.starts_with('[') {
            format!("[{}]:{}", self.master_addr, self.rendezvous_port)
        } else {
            format!("{}:{}", self.master_addr, self.rendezvous_port)
        }
    }
}

/// What one frame is about. Every frame is `tag: u8, arg: u64, len: u64` (little-endian)
/// followed by `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Hello = 1,
    SumF32 = 2,
    SumF64 = 3,
    Broadcast = 4,
    Gather = 5,
    Barrier = 6,
    /// Rank 0 gave up on the operation; `arg` is the rank at fault (`u64::MAX`: none), the
    /// bytes say why.
    Abort = 0xff,
}

impl Op {
    fn from_tag(tag: u8) -> Option<Op> {
        [Op::Hello, Op::SumF32, Op::SumF64, Op::Broadcast, Op::Gather, Op::Barrier, Op::Abort]
            .into_iter()
            .find(|op| *op as u8 == tag)
    }

    /// The trait method a frame belongs to, for messages.
    fn operation(self) -> &'static str {
        match self {
            Op::Hello => "connect",
            Op::SumF32 => "all_reduce_sum",
            Op::SumF64 => "all_reduce_sum_f64",
            Op::Broadcast => "broadcast_bytes",
            Op::Gather => "all_gather_bytes",
            Op::Barrier => "barrier",
            Op::Abort => "abort",
        }
    }

    /// What the `arg` of an operation means, for messages about ranks that disagree.
    fn describe(self, arg: u64) -> String {
        match self {
            Op::SumF32 | Op::SumF64 => format!("{arg} values"),
            Op::Broadcast => format!("root {arg}"),
            _ => format!("argument {arg}"),
        }
    }
}

const NO_RANK: u64 = u64::MAX;

struct Frame {
    op: Op,
    arg: u64,
    payload: Vec<u8>,
}

fn write_frame(stream: &mut TcpStream, op: Op, arg: u64, payload: &[u8]) -> io::Result<()> {
    let mut header = [0u8; 17];
    header[0] = op as u8;
    header[1..9].copy_from_slice(&arg.to_le_bytes());
    header[9..17].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    if payload.len() <= 4096 {
        // One segment for the small messages, which are most of them.
        let mut message = Vec::with_capacity(header.len() + payload.len());
        message.extend_from_slice(&header);
        message.extend_from_slice(payload);
        stream.write_all(&message)
    } else {
        stream.write_all(&header)?;
        stream.write_all(payload)
    }
}

/// Reads one frame; `limit` bounds its length (for frames from a peer not yet known).
fn read_frame(stream: &mut TcpStream, limit: u64) -> io::Result<Frame> {
    let mut header = [0u8; 17];
    stream.read_exact(&mut header)?;
    let op = Op::from_tag(header[0]).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, format!("unknown frame tag {}", header[0]))
    })?;
    let arg = u64::from_le_bytes(header[1..9].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(header[9..17].try_into().expect("8 bytes"));
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes, more than the {limit} expected"),
        ));
    }
    let mut payload = Vec::new();
    stream.take(len).read_to_end(&mut payload)?;
    if payload.len() as u64 != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Frame { op, arg, payload })
}

/// How this rank reaches the others.
enum Link {
    /// A world of one.
    Alone,
    /// Rank 0: the stream of rank `r` at `r - 1`.
    Hub(Vec<TcpStream>),
    /// Any other rank: the stream to rank 0.
    Spoke(TcpStream),
    /// An earlier operation failed and the streams are closed; the message says how.
    Broken(String),
}

/// The host-side operations over TCP, rank 0 the hub of a star. Made by [`Tcp::connect`]
/// from the `torchrun` environment, or by [`Tcp::rank_zero`] and [`Tcp::join`] directly.
///
/// Every operation is one round trip through rank 0, which adds sums in rank order (every
/// rank ends with the same bits) and hears from every rank in every call. Rank 0 moves
/// `world_size` times the data: right for the small host messages of an NCCL run (the id,
/// evaluation results, loss sums, barriers), not for the gradients of a large model.
///
/// Once connected, operations wait for the other ranks without a time limit (a rank may
/// spend minutes evaluating before the next barrier). A rank whose process ends closes
/// its connection, and the operation fails on every rank with an error naming it; a rank
/// that is alive but never calls leaves the others waiting, as with MPI or NCCL. After a
/// failure the engine is closed: every later call returns an error.
/// [`Collective::all_reduce_sum_device`] is not supported (use [`crate::Nccl`]).
pub struct Tcp {
    rank: usize,
    world_size: usize,
    link: Link,
}

impl Tcp {
    /// Rendezvous from the `torchrun` environment: rank 0 listens on
    /// [`TorchrunEnv::rendezvous_address`] and the others connect to it, retrying until
    /// `timeout`. Returns on every rank once all `world_size` ranks have joined.
    pub fn connect(env: &TorchrunEnv, timeout: Duration) -> Result<Tcp, CollectiveError> {
        let address = env.rendezvous_address();
        if env.world_size == 1 {
            return Ok(Tcp { rank: 0, world_size: 1, link: Link::Alone });
        }
        if env.rank == 0 {
            let listener = TcpListener::bind(&address).map_err(|err| CollectiveError::Failed {
                engine: ENGINE,
                operation: "connect",
                rank: Some(0),
                message: format!(
                    "could not listen on {address}: {err} (if torchrun's own store holds this \
                     port, set COCONUT_RENDEZVOUS_PORT to a free one on every node)"
                ),
            })?;
            Tcp::rank_zero(listener, env.world_size, timeout)
        } else {
            Tcp::join(&address, env.rank, env.world_size, timeout)
        }
    }

    /// Rank 0 of a world of `world_size`: accepts the other ranks on `listener` until all
    /// have joined, or fails after `timeout` naming the ranks that did not.
    pub fn rank_zero(
        listener: TcpListener,
        world_size: usize,
        timeout: Duration,
    ) -> Result<Tcp, CollectiveError> {
        let deadline = Instant::now() + timeout;
        let address = listener
            .local_addr()
            .map(|address| address.to_string())
            .unwrap_or_else(|_| "its listener".into());
        let fail = |message: String, rank: Option<usize>| CollectiveError::Failed {
            engine: ENGINE,
            operation: "connect",
            rank,
            message,
        };
        if world_size == 0 {
            return Err(fail("a world has at least one rank".into(), None));
        }
        let mut joined: Vec<Option<TcpStream>> = (1..world_size).map(|_| None).collect();
        let abort = |joined: &mut Vec<Option<TcpStream>>, culprit: Option<usize>, message: &str| {
            for stream in joined.iter_mut().flatten() {
                let culprit = culprit.map_or(NO_RANK, |rank| rank as u64);
                let _ = write_frame(stream, Op::Abort, culprit, message.as_bytes());
            }
        };
        listener.set_nonblocking(true).map_err(|err| {
            fail(format!("cannot poll the listener on {address}: {err}"), Some(0))
        })?;
        while joined.iter().any(Option::is_none) {
            let (mut stream, _) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        let missing: Vec<String> = joined
                            .iter()
                            .enumerate()
                            .filter(|(_, stream)| stream.is_none())
                            .map(|(index, _)| (index + 1).to_string())
                            .collect();
                        let message = format!(
                            "rank(s) {} did not join rank 0 on {address} within {timeout:?}",
                            missing.join(", ")
                        );
                        abort(&mut joined, None, &message);
                        return Err(fail(message, None));
                    }
                    std::thread::sleep(RETRY_PAUSE);
                    continue;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    let message = format!("accepting on {address}: {err}");
                    abort(&mut joined, None, &message);
                    return Err(fail(message, Some(0)));
                }
            };
            // A connection that is not one of our ranks (a port scanner, a stale worker of
            // another run) is dropped, and the wait goes on.
            let Some((rank, their_world)) = greeting(&mut stream, deadline) else {
                continue;
            };
            let problem = if their_world != world_size {
                Some(format!("rank {rank} was told the world has {their_world} ranks, rank 0 has {world_size}"))
            } else if rank == 0 || rank >= world_size {
                Some(format!("a rank {rank} joined a world of {world_size}"))
            } else if joined[rank - 1].is_some() {
                Some(format!("rank {rank} joined twice"))
            } else {
                None
            };
            if let Some(message) = problem {
                let _ = write_frame(&mut stream, Op::Abort, rank as u64, message.as_bytes());
                abort(&mut joined, Some(rank), &message);
                return Err(fail(message, Some(rank)));
            }
            joined[rank - 1] = Some(stream);
        }
        let mut streams: Vec<TcpStream> = joined.into_iter().flatten().collect();
        // Everyone has joined: tell them, so that `join` returns only in a complete world.
        for (index, stream) in streams.iter_mut().enumerate() {
            write_frame(stream, Op::Hello, 0, &[]).map_err(|err| {
                fail(format!("rank {} went away while joining: {err}", index + 1), Some(index + 1))
            })?;
        }
        Ok(Tcp { rank: 0, world_size, link: Link::Hub(streams) })
    }

    /// Rank `rank` (not 0) of a world of `world_size`: connects to rank 0 at `address`
    /// (`host:port`), retrying until `timeout`, then waits, within the same `timeout`, for
    /// every other rank to join. The error names the address.
    pub fn join(
        address: &str,
        rank: usize,
        world_size: usize,
        timeout: Duration,
    ) -> Result<Tcp, CollectiveError> {
        let deadline = Instant::now() + timeout;
        let fail = |message: String| CollectiveError::Failed {
            engine: ENGINE,
            operation: "connect",
            rank: Some(rank),
            message,
        };
        if rank == 0 || rank >= world_size {
            return Err(fail(format!(
                "rank {rank} cannot join a world of {world_size} (rank 0 listens, it does not join)"
            )));
        }
        let mut last_error = String::from("no attempt finished");
        let mut stream = 'connected: loop {
            match address.to_socket_addrs() {
                Ok(candidates) => {
                    for candidate in candidates {
                        let left = deadline.saturating_duration_since(Instant::now());
                        let attempt = left.min(CONNECT_ATTEMPT).max(Duration::from_millis(1));
                        match TcpStream::connect_timeout(&candidate, attempt) {
                            Ok(stream) => break 'connected stream,
                            Err(err) => last_error = format!("{candidate}: {err}"),
                        }
                    }
                }
                Err(err) => last_error = format!("cannot resolve: {err}"),
            }
            if Instant::now() >= deadline {
                return Err(fail(format!(
                    "could not reach rank 0 at {address} within {timeout:?} (last error: {last_error})"
                )));
            }
            std::thread::sleep(RETRY_PAUSE.min(deadline.saturating_duration_since(Instant::now())));
        };
        let mut hello = MAGIC.to_vec();
        hello.extend_from_slice(&(world_size as u64).to_le_bytes());
        let _ = stream.set_nodelay(true);
        write_frame(&mut stream, Op::Hello, rank as u64, &hello)
            .map_err(|err| fail(format!("rank 0 at {address} went away while joining: {err}")))?;
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        let _ = stream.set_read_timeout(Some(left));
        let frame = read_frame(&mut stream, 1 << 20).map_err(|err| {
            fail(if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
                format!("connected to rank 0 at {address}, but the world was not complete within {timeout:?}")
            } else {
                format!("rank 0 at {address} went away while joining: {err}")
            })
        })?;
        match frame.op {
            Op::Hello => {}
            Op::Abort => {
                return Err(fail(format!(
                    "rank 0 at {address} refused: {}",
                    String::from_utf8_lossy(&frame.payload)
                )))
            }
            other => return Err(fail(format!("rank 0 at {address} answered {other:?}"))),
        }
        let _ = stream.set_read_timeout(None);
        Ok(Tcp { rank, world_size, link: Link::Spoke(stream) })
    }

    /// One round trip: every rank's `payload` to rank 0, `combine` of them all (in rank
    /// order) back to every rank. `arg` must be equal on every rank (a length, a root).
    fn exchange(
        &mut self,
        op: Op,
        arg: u64,
        payload: Vec<u8>,
        combine: impl FnOnce(Vec<Vec<u8>>) -> Vec<u8>,
    ) -> Result<Vec<u8>, CollectiveError> {
        let operation = op.operation();
        let rank = self.rank;
        let result = match &mut self.link {
            Link::Alone => return Ok(combine(vec![payload])),
            Link::Broken(why) => {
                return Err(CollectiveError::Failed {
                    engine: ENGINE,
                    operation,
                    rank: None,
                    message: format!("closed after an earlier failure: {why}"),
                })
            }
            Link::Hub(streams) => hub_exchange(streams, op, arg, payload, combine),
            Link::Spoke(stream) => spoke_exchange(stream, op, arg, &payload),
        };
        result.map_err(|(culprit, message)| {
            self.close(&message);
            CollectiveError::Failed {
                engine: ENGINE,
                operation,
                rank: culprit.or(Some(rank)),
                message,
            }
        })
    }

    /// Closes every stream after a failure, so that later calls fail at once.
    fn close(&mut self, why: &str) {
        let link = std::mem::replace(&mut self.link, Link::Broken(why.to_string()));
        match link {
            Link::Hub(streams) => {
                for stream in streams {
                    let _ = stream.shutdown(Shutdown::Both);
                }
            }
            Link::Spoke(stream) => {
                let _ = stream.shutdown(Shutdown::Both);
            }
            Link::Alone | Link::Broken(_) => {}
        }
    }

    fn unsupported_device(&self) -> CollectiveError {
        CollectiveError::Unsupported {
            engine: ENGINE,
            operation: "all_reduce_sum_device",
            hint: "device buffers are summed by the nccl engine, which wraps this one",
        }
    }
}

/// Reads a joining rank's hello within the rendezvous deadline: `(rank, world_size)`, or
/// `None` for anything that is not one of our ranks.
fn greeting(stream: &mut TcpStream, deadline: Instant) -> Option<(usize, usize)> {
    stream.set_nonblocking(false).ok()?;
    let _ = stream.set_nodelay(true);
    // A stranger that says nothing must not hold the rendezvous for long.
    let left = deadline.saturating_duration_since(Instant::now());
    stream
        .set_read_timeout(Some(left.clamp(Duration::from_millis(100), Duration::from_secs(10))))
        .ok()?;
    let frame = read_frame(stream, (MAGIC.len() + 8) as u64).ok()?;
    stream.set_read_timeout(None).ok()?;
    let world = frame.payload.strip_prefix(MAGIC)?;
    let world = u64::from_le_bytes(world.try_into().ok()?);
    (frame.op == Op::Hello).then_some((frame.arg as usize, world as usize))
}

/// Rank 0's side of [`Tcp::exchange`]. On failure, every rank still connected is told why
/// (an `Abort` frame naming the rank at fault), so that no rank is left waiting.
fn hub_exchange(
    streams: &mut [TcpStream],
    op: Op,
    arg: u64,
    own: Vec<u8>,
    combine: impl FnOnce(Vec<Vec<u8>>) -> Vec<u8>,
) -> Result<Vec<u8>, (Option<usize>, String)> {
    // Every rank is told, the one at fault too: a rank that disagreed is alive and waiting
    // (writing to one that went away fails, which is ignored).
    let abort = |streams: &mut [TcpStream], culprit: usize, message: &str| {
        for stream in streams.iter_mut() {
            let _ = write_frame(stream, Op::Abort, culprit as u64, message.as_bytes());
        }
    };
    let mut parts = Vec::with_capacity(streams.len() + 1);
    parts.push(own);
    for index in 0..streams.len() {
        let rank = index + 1;
        let problem = match read_frame(&mut streams[index], u64::MAX) {
            Ok(frame) if frame.op == op && frame.arg == arg => {
                parts.push(frame.payload);
                continue;
            }
            Ok(frame) if frame.op == op => format!(
                "rank {rank} passed {} to {}, rank 0 passed {}",
                op.describe(frame.arg),
                op.operation(),
                op.describe(arg)
            ),
            Ok(frame) => format!(
                "rank {rank} called {} while rank 0 called {}",
                frame.op.operation(),
                op.operation()
            ),
            Err(err) => format!("lost rank {rank} during {}: {err}", op.operation()),
        };
        abort(streams, rank, &problem);
        return Err((Some(rank), problem));
    }
    let reply = combine(parts);
    for index in 0..streams.len() {
        if let Err(err) = write_frame(&mut streams[index], op, 0, &reply) {
            let rank = index + 1;
            let problem = format!("lost rank {rank} during {}: {err}", op.operation());
            abort(streams, rank, &problem);
            return Err((Some(rank), problem));
        }
    }
    Ok(reply)
}

/// Any other rank's side of [`Tcp::exchange`].
fn spoke_exchange(
    stream: &mut TcpStream,
    op: Op,
    arg: u64,
    payload: &[u8],
) -> Result<Vec<u8>, (Option<usize>, String)> {
    let lost = |err: io::Error| (Some(0), format!("lost rank 0 during {}: {err}", op.operation()));
    write_frame(stream, op, arg, payload).map_err(lost)?;
    let frame = read_frame(stream, u64::MAX).map_err(lost)?;
    match frame.op {
        reply if reply == op => Ok(frame.payload),
        Op::Abort => Err((
            (frame.arg != NO_RANK).then_some(frame.arg as usize),
            format!("rank 0 gave up: {}", String::from_utf8_lossy(&frame.payload)),
        )),
        other => {
            Err((Some(0), format!("rank 0 answered {} to {}", other.operation(), op.operation())))
        }
    }
}

fn sum_parts<const N: usize, T: Copy + std::ops::AddAssign>(
    parts: Vec<Vec<u8>>,
    from: fn([u8; N]) -> T,
    to: fn(T) -> [u8; N],
) -> Vec<u8> {
    let mut parts = parts.into_iter();
    let mut total: Vec<T> = decode(&parts.next().unwrap_or_default(), from);
    for part in parts {
        for (sum, value) in total.iter_mut().zip(decode(&part, from)) {
            *sum += value;
        }
    }
    total.into_iter().flat_map(to).collect()
}

fn decode<const N: usize, T>(bytes: &[u8], from: fn([u8; N]) -> T) -> Vec<T> {
    bytes.chunks_exact(N).map(|chunk| from(chunk.try_into().expect("N bytes"))).collect()
}

/// `count: u64`, then `len: u64` and the bytes of each part.
fn encode_parts(parts: Vec<Vec<u8>>) -> Vec<u8> {
    let total = 8 + parts.iter().map(|part| 8 + part.len()).sum::<usize>();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(parts.len() as u64).to_le_bytes());
    for part in parts {
        out.extend_from_slice(&(part.len() as u64).to_le_bytes());
        out.extend_from_slice(&part);
    }
    out
}

fn decode_parts(bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    let take = |bytes: &mut &[u8], n: usize| -> Option<Vec<u8>> {
        let (head, rest) = bytes.split_at_checked(n)?;
        *bytes = rest;
        Some(head.to_vec())
    };
    let mut rest = bytes;
    let count = u64::from_le_bytes(take(&mut rest, 8)?.try_into().ok()?);
    let mut parts = Vec::new();
    for _ in 0..count {
        let len = u64::from_le_bytes(take(&mut rest, 8)?.try_into().ok()?);
        parts.push(take(&mut rest, usize::try_from(len).ok()?)?);
    }
    rest.is_empty().then_some(parts)
}

impl Collective for Tcp {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&mut self, values: &mut [f32]) -> Result<(), CollectiveError> {
        let payload = values.iter().flat_map(|value| value.to_le_bytes()).collect();
        let sum = self.exchange(Op::SumF32, values.len() as u64, payload, |parts| {
            sum_parts(parts, f32::from_le_bytes, f32::to_le_bytes)
        })?;
        for (value, sum) in values.iter_mut().zip(decode(&sum, f32::from_le_bytes)) {
            *value = sum;
        }
        Ok(())
    }

    fn all_reduce_sum_f64(&mut self, values: &mut [f64]) -> Result<(), CollectiveError> {
        let payload = values.iter().flat_map(|value| value.to_le_bytes()).collect();
        let sum = self.exchange(Op::SumF64, values.len() as u64, payload, |parts| {
            sum_parts(parts, f64::from_le_bytes, f64::to_le_bytes)
        })?;
        for (value, sum) in values.iter_mut().zip(decode(&sum, f64::from_le_bytes)) {
            *value = sum;
        }
        Ok(())
    }

    unsafe fn all_reduce_sum_device(
        &mut self,
        _ptr: u64,
        _len: usize,
    ) -> Result<(), CollectiveError> {
        Err(self.unsupported_device())
    }

    fn broadcast_bytes(&mut self, bytes: &mut Vec<u8>, root: usize) -> Result<(), CollectiveError> {
        check_root(ENGINE, root, self.world_size)?;
        let own = if self.rank == root { std::mem::take(bytes) } else { Vec::new() };
        *bytes = self.exchange(Op::Broadcast, root as u64, own, |mut parts| {
            std::mem::take(&mut parts[root])
        })?;
        Ok(())
    }

    fn all_gather_bytes(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CollectiveError> {
        let gathered = self.exchange(Op::Gather, 0, bytes.to_vec(), encode_parts)?;
        decode_parts(&gathered).ok_or_else(|| CollectiveError::Failed {
            engine: ENGINE,
            operation: "all_gather_bytes",
            rank: Some(0),
            message: "rank 0 sent a malformed gather".into(),
        })
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        self.exchange(Op::Barrier, 0, Vec::new(), |_| Vec::new()).map(drop)
    }

    fn name(&self) -> &'static str {
        ENGINE
    }
}

impl std::fmt::Debug for Tcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let link = match &self.link {
            Link::Alone => "alone".to_string(),
            Link::Hub(streams) => format!("hub of {}", streams.len()),
            Link::Spoke(stream) => {
                format!(
                    "spoke to {}",
                    stream.peer_addr().map_or("?".into(), |a: SocketAddr| a.to_string())
                )
            }
            Link::Broken(why) => format!("closed: {why}"),
        };
        f.debug_struct("Tcp")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("link", &link)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const TIMEOUT: Duration = Duration::from_secs(20);

    /// A world of `world_size` ranks on 127.0.0.1 and an ephemeral port, each rank made
    /// in its own thread as in separate processes.
    fn world(world_size: usize) -> Vec<Tcp> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let joining: Vec<_> = (1..world_size)
            .map(|rank| {
                let address = address.clone();
                std::thread::spawn(move || Tcp::join(&address, rank, world_size, TIMEOUT))
            })
            .collect();
        let mut ranks = vec![Tcp::rank_zero(listener, world_size, TIMEOUT).unwrap()];
        ranks.extend(joining.into_iter().map(|handle| handle.join().unwrap().unwrap()));
        ranks
    }

    /// Runs `body` on every rank at once, one thread each; the results in rank order.
    fn on_every_rank<T: Send>(ranks: Vec<Tcp>, body: impl Fn(Tcp) -> T + Sync) -> Vec<T> {
        std::thread::scope(|scope| {
            let handles: Vec<_> =
                ranks.into_iter().map(|rank| scope.spawn(|| body(rank))).collect();
            handles.into_iter().map(|handle| handle.join().unwrap()).collect()
        })
    }

    #[test]
    fn two_ranks_exchange_a_nccl_id() {
        let id: Vec<u8> = (0..128).map(|index| (index * 3 + 1) as u8).collect();
        let received = on_every_rank(world(2), |mut tcp| {
            let mut bytes = if tcp.rank() == 0 { id.clone() } else { Vec::new() };
            tcp.broadcast_bytes(&mut bytes, 0).unwrap();
            (tcp.rank(), tcp.world_size(), bytes)
        });
        assert_eq!(received, [(0, 2, id.clone()), (1, 2, id)]);
    }

    #[test]
    fn three_ranks_sum_broadcast_gather_and_meet() {
        let results = on_every_rank(world(3), |mut tcp| {
            let rank = tcp.rank();
            assert_eq!((tcp.world_size(), tcp.name()), (3, "tcp"));

            let mut values: Vec<f32> = (0..1000).map(|index| (index * (rank + 1)) as f32).collect();
            tcp.all_reduce_sum(&mut values).unwrap();
            let expected: Vec<f32> = (0..1000).map(|index| (index * 6) as f32).collect();
            assert_eq!(values, expected);

            let mut exact = [1e15 + rank as f64, 0.25];
            tcp.all_reduce_sum_f64(&mut exact).unwrap();
            assert_eq!(exact, [3e15 + 3.0, 0.75]);

            tcp.all_reduce_sum(&mut []).unwrap();

            // Root 2, and lengths that differ on every rank.
            let mut bytes = vec![rank as u8; 10 * (rank + 1)];
            tcp.broadcast_bytes(&mut bytes, 2).unwrap();
            assert_eq!(bytes, vec![2u8; 30]);

            let mut empty_from_root = vec![9u8; 5];
            tcp.broadcast_bytes(&mut empty_from_root, 1).unwrap();
            assert_eq!(empty_from_root, [9u8; 5], "rank 1 broadcast 5 nines too");

            let mine = if rank == 1 { Vec::new() } else { format!("rank {rank}").into_bytes() };
            let gathered = tcp.all_gather_bytes(&mine).unwrap();
            assert_eq!(gathered, [b"rank 0".to_vec(), Vec::new(), b"rank 2".to_vec()]);

            tcp.barrier().unwrap();
            rank
        });
        assert_eq!(results, [0, 1, 2]);
    }

    #[test]
    fn sums_are_added_in_rank_order_so_every_rank_has_the_same_bits() {
        let results = on_every_rank(world(3), |mut tcp| {
            let mut values = [[1e8f32, 1.0, -1e8][tcp.rank()]];
            tcp.all_reduce_sum(&mut values).unwrap();
            values[0].to_bits()
        });
        assert!(results.iter().all(|bits| *bits == results[0]), "{results:?}");
    }

    #[test]
    fn a_world_of_one_needs_no_socket() {
        let env = TorchrunEnv {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            master_addr: "no-such-host.invalid".into(),
            master_port: 1,
            rendezvous_port: 1,
        };
        let mut tcp = Tcp::connect(&env, Duration::from_millis(10)).unwrap();
        let mut values = [1.5f32];
        tcp.all_reduce_sum(&mut values).unwrap();
        assert_eq!(values, [1.5]);
        assert_eq!(tcp.all_gather_bytes(b"x").unwrap(), [b"x".to_vec()]);
        let mut bytes = b"kept".to_vec();
        tcp.broadcast_bytes(&mut bytes, 0).unwrap();
        assert_eq!(bytes, b"kept");
        tcp.barrier().unwrap();
    }

    #[test]
    fn connect_through_the_torchrun_environment() {
        // An ephemeral port, freed and then reused: only the rendezvous code path differs
        // from the other tests.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let env = move |rank| TorchrunEnv {
            rank,
            world_size: 2,
            local_rank: rank,
            master_addr: "127.0.0.1".into(),
            master_port: port,
            rendezvous_port: port,
        };
        let joining = std::thread::spawn(move || Tcp::connect(&env(1), TIMEOUT));
        let mut zero = Tcp::connect(&env(0), TIMEOUT).unwrap();
        let mut one = joining.join().unwrap().unwrap();
        let gathered = std::thread::scope(|scope| {
            let other = scope.spawn(|| one.all_gather_bytes(b"one").unwrap());
            let own = zero.all_gather_bytes(b"zero").unwrap();
            assert_eq!(other.join().unwrap(), own);
            own
        });
        assert_eq!(gathered, [b"zero".to_vec(), b"one".to_vec()]);
    }

    #[test]
    fn a_connect_timeout_names_the_address() {
        // A port nobody listens on: refused until the deadline.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let address = format!("127.0.0.1:{port}");
        let started = Instant::now();
        let err = Tcp::join(&address, 1, 2, Duration::from_millis(300)).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(started.elapsed() < Duration::from_secs(10));
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "tcp: connect failed (rank 1): could not reach rank 0 at {address} within 300ms"
            )),
            "{text}"
        );
    }

    #[test]
    fn rank_zero_names_the_ranks_that_never_joined_and_tells_the_others() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let one = std::thread::spawn(move || Tcp::join(&address, 1, 4, TIMEOUT));
        let err = Tcp::rank_zero(listener, 4, Duration::from_millis(500)).unwrap_err();
        assert!(err.to_string().contains("rank(s) 2, 3 did not join rank 0"), "{err}");
        let err = one.join().unwrap().unwrap_err();
        assert!(err.to_string().contains("refused: rank(s) 2, 3 did not join"), "{err}");
    }

    #[test]
    fn a_rank_with_another_world_size_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let one = std::thread::spawn(move || Tcp::join(&address, 1, 3, TIMEOUT));
        let err = Tcp::rank_zero(listener, 2, TIMEOUT).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tcp: connect failed (rank 1): rank 1 was told the world has 3 ranks, rank 0 has 2"
        );
        assert!(one.join().unwrap().unwrap_err().to_string().contains("refused"));
    }

    #[test]
    fn strangers_on_the_port_are_ignored() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let stranger = address.clone();
        let joined = std::thread::spawn(move || {
            let mut stream = TcpStream::connect(&stranger).unwrap();
            stream.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
            drop(stream);
            // Connects, says nothing, goes away.
            let silent = TcpStream::connect(&stranger).unwrap();
            std::thread::sleep(Duration::from_millis(200));
            drop(silent);
            Tcp::join(&stranger, 1, 2, TIMEOUT)
        });
        let zero = Tcp::rank_zero(listener, 2, TIMEOUT).unwrap();
        let one = joined.join().unwrap().unwrap();
        let results = on_every_rank(vec![zero, one], |mut tcp| tcp.barrier().is_ok());
        assert_eq!(results, [true, true]);
    }

    #[test]
    fn a_rank_that_goes_away_is_named_on_every_rank() {
        let mut ranks = world(3);
        let two = ranks.pop().unwrap();
        drop(two);
        let errors = on_every_rank(ranks, |mut tcp| {
            let err = tcp.barrier().unwrap_err();
            // Closed for good after that.
            let again = tcp.barrier().unwrap_err();
            assert!(again.to_string().contains("closed after an earlier failure"), "{again}");
            err
        });
        for err in &errors {
            assert!(
                matches!(err, CollectiveError::Failed { rank: Some(2), operation: "barrier", .. }),
                "{err:?}"
            );
            assert!(err.to_string().contains("lost rank 2 during barrier"), "{err}");
        }
        assert!(errors[1].to_string().contains("rank 0 gave up"), "{}", errors[1]);
    }

    #[test]
    fn ranks_that_disagree_on_the_call_fail_everywhere() {
        let errors = on_every_rank(world(3), |mut tcp| match tcp.rank() {
            2 => tcp.barrier().unwrap_err(),
            _ => tcp.all_gather_bytes(b"x").unwrap_err(),
        });
        for err in &errors {
            assert!(
                err.to_string()
                    .contains("rank 2 called barrier while rank 0 called all_gather_bytes"),
                "{err}"
            );
        }
    }

    #[test]
    fn ranks_that_disagree_on_the_length_or_root_fail_everywhere() {
        let errors = on_every_rank(world(2), |mut tcp| {
            let mut values = vec![0f32; 3 + tcp.rank()];
            tcp.all_reduce_sum(&mut values).unwrap_err()
        });
        for err in &errors {
            assert!(
                err.to_string()
                    .contains("rank 1 passed 4 values to all_reduce_sum, rank 0 passed 3 values"),
                "{err}"
            );
        }
        let errors = on_every_rank(world(2), |mut tcp| {
            let root = tcp.rank();
            tcp.broadcast_bytes(&mut vec![1, 2], root).unwrap_err()
        });
        for err in &errors {
            assert!(
                err.to_string()
                    .contains("rank 1 passed root 1 to broadcast_bytes, rank 0 passed root 0"),
                "{err}"
            );
        }
    }

    #[test]
    fn rank_zero_going_away_is_named() {
        let mut ranks = world(2);
        let one = ranks.pop().unwrap();
        drop(ranks);
        let mut one = one;
        let err = one.barrier().unwrap_err();
        assert!(matches!(err, CollectiveError::Failed { rank: Some(0), .. }), "{err:?}");
        assert!(err.to_string().contains("lost rank 0 during barrier"), "{err}");
    }

    #[test]
    fn a_broadcast_root_outside_the_world_is_refused_before_sending() {
        let mut ranks = world(2);
        let err = ranks[0].broadcast_bytes(&mut Vec::new(), 2).unwrap_err();
        assert!(matches!(err, CollectiveError::InvalidArgument { .. }), "{err:?}");
        // Nothing was sent: the world still works.
        let results = on_every_rank(ranks, |mut tcp| tcp.barrier().is_ok());
        assert_eq!(results, [true, true]);
    }

    #[test]
    fn device_sums_are_not_supported() {
        let mut ranks = world(2);
        let err = unsafe { ranks[1].all_reduce_sum_device(0, 4) }.unwrap_err();
        assert_eq!(
            err.to_string(),
            "tcp: all_reduce_sum_device is not supported by this engine: device buffers are \
             summed by the nccl engine, which wraps this one"
        );
    }

    #[test]
    fn gathers_survive_the_wire_format() {
        let parts = vec![Vec::new(), vec![1, 2, 3], vec![0; 1000]];
        assert_eq!(decode_parts(&encode_parts(parts.clone())), Some(parts));
        assert_eq!(decode_parts(&[1, 0, 0]), None);
        let mut trailing = encode_parts(vec![vec![7]]);
        trailing.push(0);
        assert_eq!(decode_parts(&trailing), None);
    }

    fn env_from(vars: &[(&str, &str)]) -> Option<Result<TorchrunEnv, CollectiveError>> {
        let vars: HashMap<String, String> =
            vars.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
        TorchrunEnv::from_vars(|name| vars.get(name).cloned())
    }

    const TORCHRUN: [(&str, &str); 5] = [
        ("RANK", "3"),
        ("WORLD_SIZE", "4"),
        ("LOCAL_RANK", "1"),
        ("MASTER_ADDR", "node0.cluster"),
        ("MASTER_PORT", "29500"),
    ];

    #[test]
    fn torchrun_variables_are_read() {
        let env = env_from(&TORCHRUN).unwrap().unwrap();
        assert_eq!(
            env,
            TorchrunEnv {
                rank: 3,
                world_size: 4,
                local_rank: 1,
                master_addr: "node0.cluster".into(),
                master_port: 29500,
                rendezvous_port: 29500,
            }
        );
        assert_eq!(env.rendezvous_address(), "node0.cluster:29500");
        let ipv6 = TorchrunEnv { master_addr: "::1".into(), ..env };
        assert_eq!(ipv6.rendezvous_address(), "[::1]:29500");
    }

    #[test]
    fn without_world_size_it_is_not_torchrun() {
        assert!(env_from(&[]).is_none());
        assert!(env_from(&[("RANK", "0"), ("MASTER_ADDR", "x")]).is_none());
    }

    #[test]
    fn torchrun_agent_store_moves_the_rendezvous_one_port_up() {
        let mut vars = TORCHRUN.to_vec();
        vars.push(("TORCHELASTIC_USE_AGENT_STORE", "True"));
        assert_eq!(env_from(&vars).unwrap().unwrap().rendezvous_port, 29501);
        vars.push(("COCONUT_RENDEZVOUS_PORT", "40000"));
        assert_eq!(env_from(&vars).unwrap().unwrap().rendezvous_port, 40000);
        let mut vars = TORCHRUN.to_vec();
        vars.push(("TORCHELASTIC_USE_AGENT_STORE", "False"));
        assert_eq!(env_from(&vars).unwrap().unwrap().rendezvous_port, 29500);
    }

    #[test]
    fn torchrun_errors_name_the_variable() {
        let error = |vars: &[(&str, &str)]| env_from(vars).unwrap().unwrap_err().to_string();
        let without = |name: &str| -> Vec<(&str, &str)> {
            TORCHRUN.iter().copied().filter(|(var, _)| *var != name).collect()
        };
        let with = |name: &'static str, value: &'static str| -> Vec<(&'static str, &'static str)> {
            let mut vars = without(name);
            vars.push((name, value));
            vars
        };
        assert_eq!(
            error(&without("MASTER_PORT")),
            "environment variable MASTER_PORT: not set, though WORLD_SIZE is (torchrun sets both)"
        );
        assert_eq!(
            error(&without("LOCAL_RANK")),
            "environment variable LOCAL_RANK: not set, though WORLD_SIZE is (torchrun sets both)"
        );
        assert_eq!(
            error(&with("RANK", "three")),
            "environment variable RANK: \"three\" is not a non-negative integer"
        );
        assert_eq!(
            error(&with("RANK", "4")),
            "environment variable RANK: 4 is not below WORLD_SIZE 4"
        );
        assert_eq!(
            error(&with("WORLD_SIZE", "0")),
            "environment variable WORLD_SIZE: is 0: a world has at least one rank"
        );
        assert_eq!(
            error(&with("MASTER_PORT", "70000")),
            "environment variable MASTER_PORT: \"70000\" is not a port (1 to 65535)"
        );
        assert_eq!(error(&with("MASTER_ADDR", " ")), "environment variable MASTER_ADDR: is empty");
        let mut vars = with("MASTER_PORT", "65535");
        vars.push(("TORCHELASTIC_USE_AGENT_STORE", "True"));
        assert!(error(&vars).starts_with("environment variable MASTER_PORT: is 65535"));
        let mut vars = TORCHRUN.to_vec();
        vars.push(("COCONUT_RENDEZVOUS_PORT", "x"));
        assert!(error(&vars).starts_with("environment variable COCONUT_RENDEZVOUS_PORT: "));
    }
}
