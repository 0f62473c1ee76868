//! The NCCL unique id, from rank 0 to every rank of a `torchrun` launch: 128 bytes, once,
//! over one socket at `MASTER_ADDR`. Not a collective: NCCL does those.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::{CollectiveError, TorchrunEnv, NCCL_UNIQUE_ID_BYTES};

type Id = [u8; NCCL_UNIQUE_ID_BYTES];

/// A rank's hello, before its rank (`u64`, little-endian): a stranger on the port (a
/// scanner, a worker of another job) gets nothing.
const MAGIC: &[u8; 16] = b"coconut/nccl-id1";
/// When rank 0 cannot listen: the port may be another program's.
const PORT_HINT: &str = "COCONUT_RENDEZVOUS_PORT may name another, the same on every node";
/// Pause between two tries to reach rank 0, and between two looks for a connecting rank.
const PAUSE: Duration = Duration::from_millis(20);
/// Longest one connection attempt may take, so that the next address is tried.
const ATTEMPT: Duration = Duration::from_secs(2);

/// Hands rank 0's NCCL unique id to every rank of a `torchrun` launch; returns it on every
/// rank. [`crate::Nccl::from_torchrun`] does this, and the rest of NCCL's set-up.
///
/// Rank 0 passes `Some(id)` (from [`crate::Nccl::unique_id`]), the others `None`. Rank 0
/// listens on every interface (IPv4, or IPv6 when `MASTER_ADDR` is an IPv6 literal) at
/// [`TorchrunEnv::rendezvous_port`] and answers each other rank once; the others connect to
/// [`TorchrunEnv::rendezvous_address`], retrying until rank 0 listens, and read the id.
/// Every rank gives up after `timeout`, with an error that names the address (and on rank
/// 0 the ranks that never asked). A world of one opens no socket.
pub fn exchange_unique_id(
    env: &TorchrunEnv,
    id_if_rank_zero: Option<Id>,
    timeout: Duration,
) -> Result<Id, CollectiveError> {
    let address = env.rendezvous_address();
    let result = match (env.rank, id_if_rank_zero) {
        (0, Some(id)) if env.world_size == 1 => return Ok(id),
        (0, Some(id)) => serve(env, &id, &address, timeout).map(|()| id),
        (1.., None) => fetch(env.rank, &address, timeout),
        (rank, _) => {
            return Err(CollectiveError::InvalidArgument {
                engine: "rendezvous",
                operation: "exchange_unique_id",
                message: format!("rank {rank}: rank 0, and only rank 0, passes the id"),
            })
        }
    };
    result.map_err(|message| CollectiveError::Failed {
        engine: "rendezvous",
        operation: "exchange_unique_id",
        rank: Some(env.rank),
        message,
    })
}

/// Rank 0: answers every other rank once.
fn serve(env: &TorchrunEnv, id: &Id, address: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let any = if env.master_addr.contains(':') { "::" } else { "0.0.0.0" };
    let listener = TcpListener::bind((any, env.rendezvous_port))
        .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
        .map_err(|err| format!("could not listen for {address}: {err} ({PORT_HINT})"))?;
    let mut waiting: Vec<usize> = (1..env.world_size).collect();
    while !waiting.is_empty() {
        match listener.accept() {
            Ok((mut stream, _)) => {
                // A stranger that says nothing must not hold rank 0 for long.
                let mut hello = [0u8; 24];
                let heard = stream
                    .set_nonblocking(false)
                    .and_then(|()| stream.set_read_timeout(Some(Duration::from_secs(2))))
                    .and_then(|()| stream.read_exact(&mut hello));
                let rank = u64::from_le_bytes(hello[16..].try_into().expect("8 bytes"));
                if heard.is_ok() && hello[..16] == MAGIC[..] && stream.write_all(id).is_ok() {
                    waiting.retain(|&other| other as u64 != rank);
                }
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(PAUSE)
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                let missing = waiting.iter().map(usize::to_string).collect::<Vec<_>>().join(", ");
                return Err(format!(
                    "rank(s) {missing} did not ask for the NCCL id at {address} within {timeout:?}"
                ));
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return Err(format!("accepting connections for {address}: {err}")),
        }
    }
    Ok(())
}

/// Any other rank: connects to rank 0, retrying until it listens, and reads the id.
fn fetch(rank: usize, address: &str, timeout: Duration) -> Result<Id, String> {
    let deadline = Instant::now() + timeout;
    let mut last_error = String::from("no attempt finished");
    let mut stream = 'connected: loop {
        let candidates = address.to_socket_addrs();
        for candidate in candidates.iter().flat_map(|candidates| candidates.clone()) {
            let attempt = deadline.saturating_duration_since(Instant::now()).clamp(PAUSE, ATTEMPT);
            match TcpStream::connect_timeout(&candidate, attempt) {
                // Where nobody listens yet, a connection may meet itself (TCP simultaneous
                // open): that is not rank 0.
                Ok(stream) if stream.local_addr().ok() == Some(candidate) => {}
                Ok(stream) => break 'connected stream,
                Err(err) => last_error = format!("{candidate}: {err}"),
            }
        }
        if let Err(err) = candidates {
            last_error = format!("cannot resolve it: {err}");
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "could not reach rank 0 at {address} within {timeout:?} (last error: {last_error})"
            ));
        }
        std::thread::sleep(PAUSE);
    };
    let mut hello = MAGIC.to_vec();
    hello.extend_from_slice(&(rank as u64).to_le_bytes());
    let mut id = [0u8; NCCL_UNIQUE_ID_BYTES];
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    stream
        .set_read_timeout(Some(left))
        .and_then(|()| stream.write_all(&hello))
        .and_then(|()| stream.read_exact(&mut id))
        .map_err(|err| format!("rank 0 at {address} did not send the NCCL id: {err}"))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread::{sleep, spawn};

    const TIMEOUT: Duration = Duration::from_secs(20);
    const ID: Id = [7; NCCL_UNIQUE_ID_BYTES];

    /// Rank `rank` of `world_size`, rank 0 on 127.0.0.1:`port`.
    fn env(rank: usize, world_size: usize, port: u16) -> TorchrunEnv {
        let (master_addr, master_port, rendezvous_port) = ("127.0.0.1".into(), port, port);
        TorchrunEnv { rank, world_size, local_rank: 0, master_addr, master_port, rendezvous_port }
    }

    /// An ephemeral port, freed: nobody listens on it.
    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    #[test]
    fn every_rank_gets_rank_zeros_id() {
        let port = free_port();
        // The others start first: they retry until rank 0 listens.
        let others: Vec<_> = (1..3)
            .map(|rank| spawn(move || exchange_unique_id(&env(rank, 3, port), None, TIMEOUT)))
            .collect();
        sleep(Duration::from_millis(100));
        assert_eq!(exchange_unique_id(&env(0, 3, port), Some(ID), TIMEOUT).unwrap(), ID);
        others.into_iter().for_each(|other| assert_eq!(other.join().unwrap().unwrap(), ID));
    }

    #[test]
    fn a_connect_timeout_names_the_address() {
        let port = free_port();
        let started = Instant::now();
        let err = exchange_unique_id(&env(1, 2, port), None, Duration::from_millis(300));
        assert!((300..10_000).contains(&started.elapsed().as_millis()));
        let text = err.unwrap_err().to_string();
        let expected = format!(
            "rendezvous: exchange_unique_id failed (rank 1): could not reach rank 0 at \
             127.0.0.1:{port} within 300ms (last error: 127.0.0.1:{port}: "
        );
        assert!(text.starts_with(&expected), "{text}");
    }

    #[test]
    fn rank_zero_ignores_strangers_and_names_the_ranks_that_never_asked() {
        let port = free_port();
        let two = spawn(move || {
            sleep(Duration::from_millis(100));
            let mut stranger = TcpStream::connect(("127.0.0.1", port)).unwrap();
            stranger.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
            drop(stranger);
            exchange_unique_id(&env(2, 4, port), None, TIMEOUT)
        });
        let err = exchange_unique_id(&env(0, 4, port), Some(ID), Duration::from_millis(800));
        let expected = format!(
            "rendezvous: exchange_unique_id failed (rank 0): rank(s) 1, 3 did not ask for the \
             NCCL id at 127.0.0.1:{port} within 800ms"
        );
        assert_eq!(err.unwrap_err().to_string(), expected);
        assert_eq!(two.join().unwrap().unwrap(), ID);
    }

    #[test]
    fn rank_zero_alone_makes_the_id() {
        // A world of one opens no socket: the address need not exist.
        let alone = TorchrunEnv { master_addr: "no-such-host.invalid".into(), ..env(0, 1, 1) };
        assert_eq!(exchange_unique_id(&alone, Some(ID), Duration::ZERO).unwrap(), ID);
        for (rank, id) in [(0, None), (1, Some(ID))] {
            let err = exchange_unique_id(&env(rank, 2, 1), id, TIMEOUT).unwrap_err();
            let expected = format!(
                "rendezvous: exchange_unique_id: rank {rank}: rank 0, and only rank 0, passes the id"
            );
            assert_eq!(err.to_string(), expected);
        }
    }
}
