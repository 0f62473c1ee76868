//! Why a child process (a bench measurement, a device timing, a run of `compare --jobs`)
//! failed, in words: its exit code, or the signal that killed it, and whether the kernel
//! killed it for lack of memory.

use std::process::ExitStatus;

/// The out-of-memory kills the kernel has counted in this process's memory cgroup, which its
/// children share: `oom_kill` in cgroup v2's `memory.events` or v1's `memory.oom_control`.
/// `None` where neither can be read.
pub fn oom_kills() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let files = cgroups.lines().filter_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let path = path.trim_start_matches('/');
        match controllers {
            "" => Some(format!("/sys/fs/cgroup/{path}/memory.events")),
            c if c.split(',').any(|c| c == "memory") => {
                Some(format!("/sys/fs/cgroup/memory/{path}/memory.oom_control"))
            }
            _ => None,
        }
    });
    files.filter_map(|file| std::fs::read_to_string(file).ok()).find_map(|text| {
        let line = text.lines().find(|l| l.starts_with("oom_kill "))?;
        line.split_whitespace().nth(1)?.parse().ok()
    })
}

/// How a child that did not succeed ended: `exited with code N`, or `killed by SIGKILL
/// (out of memory: ...)` and the like. `oom_before` is [`oom_kills`] taken before the child
/// started: a count that grew since says the kernel killed a process for lack of memory.
pub fn failure(status: ExitStatus, oom_before: Option<u64>) -> String {
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&status) else {
        return status.to_string();
    };
    let name = match signal {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        _ => "",
    };
    let killed = if name.is_empty() {
        format!("killed by signal {signal}")
    } else {
        format!("killed by {name}")
    };
    if signal != libc::SIGKILL {
        return killed;
    }
    match (oom_before, oom_kills()) {
        (Some(before), Some(after)) if after > before => {
            format!("{killed} (out of memory: the kernel's out-of-memory killer ended it)")
        }
        (Some(_), Some(_)) => killed,
        _ => format!("{killed} (the kernel's out-of-memory killer ends processes so)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn exit_codes_and_signals_are_named() {
        let status = Command::new("sh").args(["-c", "exit 3"]).status().unwrap();
        assert_eq!(failure(status, None), "exited with code 3");
        let status = Command::new("sh").args(["-c", "kill -TERM $$"]).status().unwrap();
        assert_eq!(failure(status, oom_kills()), "killed by SIGTERM");
        let status = Command::new("sh").args(["-c", "kill -KILL $$"]).status().unwrap();
        let text = failure(status, oom_kills());
        assert!(text.starts_with("killed by SIGKILL"), "{text}");
    }
}
