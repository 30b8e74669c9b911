//! The last line of defence at the stub's exit: child processes left
//! behind. A library of ABI 1.2 may leave its collectors running for the
//! next generation (`HostApiV1::stop_intent`); should no generation take
//! them (the next one failed to start and the stub is then stopped), they
//! would outlive the agent. When [`crate::run`] returns, every child of
//! this process that leads its own process group (as collectors do) is
//! stopped with its group: SIGTERM, a grace, SIGKILL, and reaped.
//!
//! Only at the real process end: in tests the process hosts other tests'
//! children.
// kill/waitpid on our own children; each call has a SAFETY note.
#![allow(unsafe_code)]

use std::time::{Duration, Instant};

/// Time between SIGTERM and SIGKILL (the library's own collector grace).
pub const GRACE: Duration = Duration::from_secs(5);

/// Reads `(ppid, pgrp)` from a `/proc/<pid>/stat` line (fields 4 and 5,
/// counted after the command name's last `)`).
pub fn parent_and_group(stat: &str) -> Option<(u32, u32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(1);
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// Children of `parent` that lead their own process group.
fn group_leading_children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| parent_and_group(&s))
                .is_some_and(|(ppid, pgrp)| ppid == parent && pgrp == pid)
        })
        .collect()
}

fn signal_group(pgid: u32, signal: libc::c_int) {
    if let Ok(pgid) = libc::pid_t::try_from(pgid)
        && pgid > 1
    {
        // SAFETY: kill has no memory effects; the group is led by our child.
        unsafe { libc::kill(-pgid, signal) };
    }
}

/// Whether child `pid` has exited; reaps it if so.
fn reaped(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    let mut status = 0;
    // SAFETY: waitpid writes only to `status`, on our stack.
    let rc = unsafe { libc::waitpid(pid, &raw mut status, libc::WNOHANG) };
    rc != 0
}

/// Stops every child group left behind (module docs); returns their pids.
pub fn stop_leftovers() -> Vec<u32> {
    let leftovers = group_leading_children(std::process::id());
    for &pid in &leftovers {
        tracing::warn!(
            pid,
            "a child process outlived the agent library; stopping its group"
        );
    }
    stop_groups(&leftovers);
    leftovers
}

/// SIGTERM to each group, up to [`GRACE`] for the leaders to exit, then
/// SIGKILL to the groups still there (and to every group, for members that
/// ignored SIGTERM after their leader left); every leader is reaped.
fn stop_groups(leaders: &[u32]) {
    for &pid in leaders {
        signal_group(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + GRACE;
    let mut waiting = leaders.to_vec();
    while !waiting.is_empty() && Instant::now() < deadline {
        waiting.retain(|&pid| !reaped(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    for &pid in leaders {
        signal_group(pid, libc::SIGKILL);
    }
    for &pid in &waiting {
        // SIGKILL cannot be ignored: a short wait.
        let deadline = Instant::now() + GRACE;
        while !reaped(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_parent_and_group() {
        let cases: [(&str, Option<(u32, u32)>); 3] = [
            ("10 (collectd) S 7 10 10 0 -1", Some((7, 10))),
            ("11 (a (b) c) R 1 5 5", Some((1, 5))),
            ("12 (x) S", None),
        ];
        for (line, want) in cases {
            assert_eq!(parent_and_group(line), want, "{line}");
        }
    }

    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.rsplit_once(')').unwrap().1.trim_start().starts_with('Z'))
    }

    #[test]
    // The child is reaped by `stop_groups` (waitpid), which is under test.
    #[allow(clippy::zombie_processes)]
    fn a_left_child_group_is_found_and_stopped_with_its_members() {
        use std::os::unix::process::CommandExt;
        // A leader that ignores SIGTERM and a member it forked.
        let child = std::process::Command::new("/bin/sh")
            .args(["-c", "trap '' TERM; sleep 1000 & echo $!; wait"])
            .process_group(0)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let leader = child.id();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.unwrap()),
            &mut line,
        )
        .unwrap();
        let member: u32 = line.trim().parse().unwrap();
        assert!(group_leading_children(std::process::id()).contains(&leader));
        // Only our own child: other tests' children are not ours to stop.
        stop_groups(&[leader]);
        assert!(!alive(leader), "the leader is reaped");
        // The member was SIGKILLed with the group; its death is observed
        // once the kernel has delivered it.
        let deadline = Instant::now() + GRACE;
        while alive(member) {
            assert!(Instant::now() < deadline, "member {member} survived");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
