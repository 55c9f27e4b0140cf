//! What Linux tells about a running function process: its peak resident memory, and the network sockets it holds
//! (to show that init made no network call besides the runtime API).

use std::collections::HashSet;

/// Peak resident set size (`VmHWM`) in bytes.
pub fn peak_rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| anyhow::anyhow!("no VmHWM in /proc/{pid}/status"))
}

/// Sockets of the process that are not its connections to `allowed_port` on loopback: TCP connections to any other
/// port (established or being set up) and every UDP socket (a DNS lookup).
pub fn foreign_sockets(pid: u32, allowed_port: u16) -> usize {
    foreign_socket_inodes(pid, allowed_port).len()
}

fn foreign_socket_inodes(pid: u32, allowed_port: u16) -> HashSet<u64> {
    let inodes = socket_inodes(pid);
    let mut foreign = HashSet::new();
    if inodes.is_empty() {
        return foreign;
    }
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
    foreign
}

fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|target| {
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// (inode, remote port, state) of each line of `/proc/<pid>/net/<table>`.
fn socket_entries(pid: u32, table: &str) -> Vec<(u64, u16, String)> {
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

    #[test]
    fn peak_rss_is_read_and_only_connections_to_other_ports_are_foreign() {
        let me = std::process::id();
        assert!(peak_rss_bytes(me).unwrap() > 0);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", conn.as_raw_fd())).unwrap();
        let inode: u64 = link
            .to_str()
            .and_then(|l| l.strip_prefix("socket:["))
            .and_then(|l| l.strip_suffix(']'))
            .and_then(|l| l.parse().ok())
            .unwrap();
        assert!(!foreign_socket_inodes(me, port).contains(&inode));
        assert!(foreign_socket_inodes(me, port.wrapping_add(1)).contains(&inode));
    }
}
