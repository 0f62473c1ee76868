//! The MPI engine under a real `mpirun` (feature `mpi`; `harness = false`).
//!
//! Run by `cargo test`, this binary is the driver: it starts `mpirun -n 2` on itself with a
//! role argument, and each of those two processes is a rank that plays the role. It checks:
//! - `world`: every operation of the trait on two ranks;
//! - `exit` and `abort`: when rank 1 dies before a collective (a non-zero exit, a signal),
//!   `mpirun` ends the job within 60 s, exits non-zero, and says which rank failed; the
//!   time it took and what it printed are shown.
//!
//! `mpirun` refuses to run as root unless told; CI and the development machines run as
//! root, so the driver passes `--allow-run-as-root` and its two environment variables.
//! `--oversubscribe` lets two ranks start where fewer cores are counted.

use std::io::Read;
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use coconut_collective::{Collective, CollectiveError, Mpi, Nccl};

const ROLE_FLAG: &str = "--mpi-rank-role";
const JOB_LIMIT: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(position) = args.iter().position(|arg| arg == ROLE_FLAG) {
        let role = args.get(position + 1).map(String::as_str).unwrap_or("");
        return match role {
            "world" => rank_world(),
            "exit" | "abort" => rank_dies(role),
            other => panic!("unknown role {other:?}"),
        };
    }
    driver()
}

// ---- the ranks -------------------------------------------------------------------------

fn rank_world() -> ExitCode {
    assert!(Mpi::is_launched_by_mpirun());
    let mut mpi = Mpi::init().expect("MPI initialises");
    let rank = mpi.rank();
    assert_eq!((mpi.world_size(), mpi.name()), (2, "mpi"));
    assert!(rank < 2);
    // One node: the local rank is the world rank.
    assert_eq!(mpi.local_rank(), rank);
    if let Ok(local) = std::env::var("OMPI_COMM_WORLD_LOCAL_RANK") {
        assert_eq!(local, rank.to_string());
    }
    assert!(matches!(Mpi::init(), Err(CollectiveError::Failed { operation: "init", .. })));

    // Longer than one MPI call's chunk (4 Mi elements), to sum across the chunk boundary.
    let len = (1 << 22) + 5;
    let mut values: Vec<f32> = (0..len).map(|i| (i % 1000) as f32 * (rank + 1) as f32).collect();
    mpi.all_reduce_sum(&mut values).unwrap();
    assert!(values.iter().enumerate().all(|(i, v)| *v == (i % 1000) as f32 * 3.0));
    let mut exact = [1e15 + rank as f64, 0.5];
    mpi.all_reduce_sum_f64(&mut exact).unwrap();
    assert_eq!(exact, [2e15 + 1.0, 1.0]);
    mpi.all_reduce_sum(&mut []).unwrap();

    // Broadcasts whose lengths differ between the ranks, from either root.
    let mut bytes = if rank == 0 { b"hello".to_vec() } else { vec![7; 100] };
    mpi.broadcast_bytes(&mut bytes, 0).unwrap();
    assert_eq!(bytes, b"hello");
    let mut bytes = if rank == 1 { vec![42; 300] } else { Vec::new() };
    mpi.broadcast_bytes(&mut bytes, 1).unwrap();
    assert_eq!(bytes, vec![42; 300]);
    let mut bytes = if rank == 1 { Vec::new() } else { vec![1; 10] };
    mpi.broadcast_bytes(&mut bytes, 1).unwrap();
    assert!(bytes.is_empty());
    let err = mpi.broadcast_bytes(&mut bytes, 2).unwrap_err();
    assert!(matches!(err, CollectiveError::InvalidArgument { .. }), "{err:?}");

    let mine = if rank == 0 { b"accuracy 0.5".to_vec() } else { Vec::new() };
    let gathered = mpi.all_gather_bytes(&mine).unwrap();
    assert_eq!(gathered, [b"accuracy 0.5".to_vec(), Vec::new()]);
    let gathered = mpi.all_gather_bytes(&vec![rank as u8; 1000 * (rank + 1)]).unwrap();
    assert_eq!(gathered, [vec![0; 1000], vec![1; 2000]]);

    // The sharded step's halves, over more than one MPI call's chunk: rank r keeps shard
    // r of the sum, then every rank gets every shard.
    let shard = (1 << 21) + 3;
    let mut values: Vec<f32> =
        (0..2 * shard).map(|i| (i % 977) as f32 + rank as f32 * 0.5).collect();
    mpi.reduce_scatter_sum(&mut values).unwrap();
    let own = &values[rank * shard..][..shard];
    let expected = |i: usize| 2.0 * (i % 977) as f32 + 0.5;
    assert!(own.iter().enumerate().all(|(j, v)| *v == expected(rank * shard + j)));
    let shard_bytes = 4 * (1 << 22) + 7;
    let mut bytes = vec![0u8; 2 * shard_bytes];
    let byte = |i: usize| (i % 251) as u8;
    for (j, b) in bytes[rank * shard_bytes..][..shard_bytes].iter_mut().enumerate() {
        *b = byte(rank * shard_bytes + j);
    }
    mpi.all_gather_shards(&mut bytes).unwrap();
    assert!(bytes.iter().enumerate().all(|(i, b)| *b == byte(i)));
    let err = mpi.reduce_scatter_sum(&mut [1.0; 3]).unwrap_err();
    assert!(err.to_string().contains("do not split into 2 equal shards"), "{err}");
    mpi.all_gather_shards(&mut []).unwrap();

    mpi.barrier().unwrap();

    let err = unsafe { mpi.all_reduce_sum_device(0, 4) }.unwrap_err();
    assert!(err.to_string().starts_with("mpi: all_reduce_sum_device is not supported"), "{err}");

    let version = mpi.library_version();
    if rank == 0 {
        println!("MPI library: {}", version.lines().next().unwrap_or(""));
    }

    // NCCL set up through MPI: where NCCL or the GPUs are missing, every rank fails, none
    // waits. (MPI is finalised when `mpi` is dropped, on every rank, at the end.)
    match Nccl::from_mpi(&mut mpi, rank) {
        Ok(nccl) => println!("rank {rank}: NCCL {} on CUDA device {}", nccl.nccl_version(), rank),
        Err(err) => {
            let text = err.to_string();
            assert!(text.starts_with("nccl: "), "{text}");
            if rank == 0 {
                println!("NCCL set up through MPI fails, as expected here: {text}");
            }
        }
    }
    println!("rank {rank} ok");
    ExitCode::SUCCESS
}

fn rank_dies(how: &str) -> ExitCode {
    let mut mpi = Mpi::init().expect("MPI initialises");
    if mpi.rank() == 1 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        eprintln!("rank 1: dying ({how}) before the barrier, at {} ms", now.as_millis());
        if how == "abort" {
            std::process::abort();
        }
        std::process::exit(3);
    }
    // Rank 0 waits in a collective that can never complete.
    mpi.barrier().unwrap();
    println!("rank 0: the barrier returned, which it must not");
    ExitCode::SUCCESS
}

// ---- the driver ------------------------------------------------------------------------

struct Job {
    status: Option<ExitStatus>,
    elapsed: Duration,
    /// When the job ended, since the Unix epoch.
    ended: Duration,
    stdout: String,
    stderr: String,
}

/// `mpirun -n 2` on this binary in `role`, ended (TERM, then KILL) if it outlives `limit`.
fn mpirun(role: &str, limit: Duration) -> Result<Job, String> {
    let exe = std::env::current_exe().map_err(|err| format!("current_exe: {err}"))?;
    let started = Instant::now();
    let mut child = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-n", "2"])
        .arg(&exe)
        .args([ROLE_FLAG, role])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        // Containers often forbid the cross-process memory copies of the shared-memory
        // transport (CMA); copying through shared buffers works everywhere.
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("cannot start mpirun (is OpenMPI installed?): {err}"))?;
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped")));
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|err| err.to_string())? {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            std::thread::sleep(Duration::from_secs(5));
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    let ended = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    Ok(Job {
        ended,
        status,
        elapsed,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("    | {line}\n")).collect()
}

fn check_world() -> Result<(), String> {
    let job = mpirun("world", Duration::from_secs(300))?;
    let shown = format!("stdout:\n{}stderr:\n{}", indent(&job.stdout), indent(&job.stderr));
    match job.status {
        Some(status) if status.success() => {}
        Some(status) => return Err(format!("mpirun exited with {status}\n{shown}")),
        None => return Err(format!("mpirun ran past 300 s\n{shown}")),
    }
    for rank in 0..2 {
        if !job.stdout.contains(&format!("rank {rank} ok")) {
            return Err(format!("rank {rank} did not finish\n{shown}"));
        }
    }
    print!("{}", indent(&job.stdout));
    Ok(())
}

fn check_rank_death(role: &str) -> Result<(), String> {
    let job = mpirun(role, JOB_LIMIT)?;
    let shown = format!("stdout:\n{}stderr:\n{}", indent(&job.stdout), indent(&job.stderr));
    let status = job
        .status
        .ok_or_else(|| format!("mpirun did not end the job within {JOB_LIMIT:?}\n{shown}"))?;
    if status.success() {
        return Err(format!("mpirun exited successfully though rank 1 died\n{shown}"));
    }
    // OpenMPI names processes as `rank 1` in its "noticed that process rank 1 ..." line,
    // and as `[[jobid,1],1]` with "Exit code" in its non-zero-exit report.
    let names_rank_one = job.stderr.contains("rank 1")
        || (job.stderr.contains(",1],1]") && job.stderr.contains("Exit code"));
    if !names_rank_one {
        return Err(format!("mpirun's report does not name rank 1\n{shown}"));
    }
    // How long after rank 1 died the job ended, from the time it printed.
    let after_death = job
        .stderr
        .split(" at ")
        .nth(1)
        .and_then(|rest| rest.split(" ms").next())
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(|died| job.ended.as_millis() as i128 - died as i128)
        .map_or("?".to_string(), |ms| format!("{:.2}", ms as f64 / 1000.0));
    println!(
        "    mpirun ended the job {after_death} s after rank 1 died ({:.2} s in all, start-up \
         included), with {status}; it printed:",
        job.elapsed.as_secs_f64()
    );
    print!("{}", indent(&job.stderr));
    Ok(())
}

/// One check of the driver: `Err` says what went wrong, with mpirun's output.
type Check = fn() -> Result<(), String>;

fn driver() -> ExitCode {
    let checks: [(&str, Check); 3] = [
        ("every operation on two ranks", check_world),
        ("rank 1 exits with status 3 before a barrier", || check_rank_death("exit")),
        ("rank 1 aborts (SIGABRT) before a barrier", || check_rank_death("abort")),
    ];
    println!("\nrunning {} mpirun checks", checks.len());
    let mut failed = 0;
    for (name, check) in checks {
        match check() {
            Ok(()) => println!("test mpi: {name} ... ok"),
            Err(why) => {
                failed += 1;
                println!("test mpi: {name} ... FAILED\n{why}");
            }
        }
    }
    let passed = checks.len() - failed;
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    println!("\ntest result: {verdict}. {passed} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out\n");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
