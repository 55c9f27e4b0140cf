//! The one reader of Linux's `/proc`: a process's stat line, memory peak and sockets, the machine's CPU times, and
//! the list of processes.

use std::collections::HashSet;

/// USER_HZ: the unit of /proc's CPU times, fixed at 100 by the kernel ABI on the architectures this runs on.
pub const TICKS_PER_SECOND: f64 = 100.0;

/// The few fields of `/proc/<pid>/stat` we use.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    /// utime + stime: CPU ticks of all its threads.
    pub cpu_ticks: u64,
    /// Start time in clock ticks since boot (field 22).
    pub start_ticks: u64,
}

impl Stat {
    /// Not a zombie (nor dead).
    pub fn running(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

pub fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces and parentheses: fields are counted after
    // its closing parenthesis, from field 3 (the state) on.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        cpu_ticks: num(11)? + num(12)?,
        start_ticks: num(19)?,
    })
}

/// Every pid in `/proc`.
pub fn pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Busy ticks of all CPUs (`/proc/stat`: everything but idle and iowait).
pub fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    Some(total - v.get(3)? - v.get(4)?)
}

/// Peak resident set size (`VmHWM` of `/proc/<pid>/status`) in bytes.
pub fn peak_rss_bytes(pid: i32) -> anyhow::Result<u64> {
    status_bytes(pid, "VmHWM")
}

/// The process's resident set now (VmRSS), in bytes.
pub fn rss_bytes(pid: i32) -> anyhow::Result<u64> {
    status_bytes(pid, "VmRSS")
}

/// A `kB` field of `/proc/<pid>/status`, in bytes.
fn status_bytes(pid: i32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| anyhow::anyhow!("no {field} in /proc/{pid}/status"))
}

/// Sockets of the process that are not its connections to `allowed_port` on loopback: TCP connections to any other
/// port (established or being set up) and every UDP socket (a DNS lookup).
/// An error when the process's descriptors cannot be read or it holds no socket at all: it is then waiting on the
/// runtime API, so a socket list without that connection was not read right.
pub fn foreign_sockets(pid: i32, allowed_port: u16) -> anyhow::Result<usize> {
    Ok(foreign_socket_inodes(pid, allowed_port)?.len())
}

fn foreign_socket_inodes(pid: i32, allowed_port: u16) -> anyhow::Result<HashSet<u64>> {
    let inodes = socket_inodes(pid)?;
    if inodes.is_empty() {
        anyhow::bail!("process {pid} holds no socket, not even its runtime API connection");
    }
    let mut foreign = HashSet::new();
    for table in ["tcp", "tcp6"] {
        for (inode, remote_port, state) in socket_entries(pid, table) {
            // 0A = LISTEN: not a call made by the process.
            if inodes.contains(&inode) && state != "0A" && remote_port != allowed_port {
                foreign.insert(inode);
            }
        }
    }
    for table in ["udp", "udp6"] {
        for (inode, _, _) in socket_entries(pid, table) {
            if inodes.contains(&inode) {
                foreign.insert(inode);
            }
        }
    }
    Ok(foreign)
}

/// The inode of a `/proc/<pid>/fd/<n>` link's target when it is a socket (`socket:[<inode>]`).
fn socket_inode(target: &std::path::Path) -> Option<u64> {
    target
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn socket_inodes(pid: i32) -> anyhow::Result<HashSet<u64>> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| anyhow::anyhow!("cannot read /proc/{pid}/fd: {e}"))?;
    Ok(dir
        .flatten()
        .filter_map(|e| socket_inode(&std::fs::read_link(e.path()).ok()?))
        .collect())
}

/// (inode, remote port, state) of each line of `/proc/<pid>/net/<table>`.
fn socket_entries(pid: i32, table: &str) -> Vec<(u64, u16, String)> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
        return Vec::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let remote_port = u16::from_str_radix(f.get(2)?.rsplit(':').next()?, 16).ok()?;
            let inode = f.get(9)?.parse().ok()?;
            Some((inode, remote_port, f.get(3)?.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn me() -> i32 {
        i32::try_from(std::process::id()).unwrap()
    }

    #[test]
    fn this_process_is_running_and_started_after_boot() {
        let s = stat(me()).expect("own stat");
        assert!(s.running());
        assert!(s.start_ticks > 0);
        assert!(pids().contains(&me()));
        assert!(machine_busy_ticks().is_some());
    }

    #[test]
    fn peak_rss_is_read_and_only_connections_to_other_ports_are_foreign() {
        assert!(peak_rss_bytes(me()).unwrap() > 0);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", conn.as_raw_fd())).unwrap();
        let inode = socket_inode(&link).unwrap();
        assert!(!foreign_socket_inodes(me(), port).unwrap().contains(&inode));
        assert!(
            foreign_socket_inodes(me(), port.wrapping_add(1))
                .unwrap()
                .contains(&inode)
        );
    }

    #[test]
    fn a_process_whose_sockets_cannot_be_read_is_an_error_not_zero() {
        // No process has pid 0 in /proc: its descriptors cannot be read.
        assert!(foreign_sockets(0, 1).is_err());
    }
}
