//! Network partitions on loopback, made with nftables: a rule set of the
//! test's own drops every TCP packet of the connections it names, both
//! ways, while every process keeps running (a partition, not a kill).
//! Dropping the rule set heals the partition. Needs root and `nft` (CI
//! installs nftables).

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A partition in force until dropped.
pub struct Partition {
    /// The nftables table holding its rules (`inet <name>`).
    table: String,
    /// A cgroup made for it (`/sys/fs/cgroup/unified/<table>`) and the
    /// process moved into it, moved back when the partition heals.
    cgroup: Option<(std::path::PathBuf, u32)>,
}

/// Where the cgroup v2 hierarchy is mounted here (cgroup v1 holds
/// `/sys/fs/cgroup` itself); nftables names cgroups relative to
/// `/sys/fs/cgroup`.
const CGROUP2: &str = "/sys/fs/cgroup/unified";

impl Partition {
    /// Cuts every TCP connection to or from `port` on loopback (a server's
    /// listening port: all its clients lose it, and it loses them).
    pub fn port(port: u16) -> Partition {
        Partition::rules(&[
            format!("tcp dport {port} drop"),
            format!("tcp sport {port} drop"),
        ])
    }

    /// Cuts the connections to `port` made through the loopback address
    /// `addr` (e.g. `127.0.0.2`), leaving those through other addresses
    /// of the same server alone: one client cut, the others not.
    pub fn address(addr: &str, port: u16) -> Partition {
        Partition::rules(&[
            format!("ip daddr {addr} tcp dport {port} drop"),
            format!("ip saddr {addr} tcp sport {port} drop"),
        ])
    }

    /// Cuts a clustered server (process `pid`) from its peers: no packet
    /// of its route connections (those to `own` route port, and those it
    /// made to the `peers`' route ports) passes either way, while its
    /// clients keep their connections to it. The process is told apart by
    /// a cgroup of its own (nftables' `socket cgroupv2`).
    pub fn routes(pid: u32, own: u16, peers: &[u16]) -> Partition {
        let table = table_name();
        let dir = std::path::Path::new(CGROUP2).join(&table);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("cannot make {}: {e}", dir.display()));
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
        let group = format!(
            "\"{}/{table}\"",
            CGROUP2.trim_start_matches("/sys/fs/cgroup/")
        );
        let peers = peers
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let mine = format!("socket cgroupv2 level 1 {group}");
        let mut p = Partition::with_chains(
            table,
            &[
                format!("tcp dport {own} drop"),
                format!("{mine} tcp sport {own} drop"),
                format!("{mine} tcp dport {{ {peers} }} drop"),
            ],
            &[format!("{mine} tcp sport {{ {peers} }} drop")],
        );
        p.cgroup = Some((dir, pid));
        p
    }

    /// A table of the test's own with `rules` in an output chain (every
    /// loopback packet passes through output once).
    fn rules(rules: &[String]) -> Partition {
        Partition::with_chains(table_name(), rules, &[])
    }

    /// A table named `table` with `output` rules in an output chain and
    /// `input` rules in an input chain (where a socket match sees the
    /// receiving process).
    fn with_chains(table: String, output: &[String], input: &[String]) -> Partition {
        nft(&["add", "table", "inet", &table]);
        nft(&[
            "add",
            "chain",
            "inet",
            &table,
            "out",
            "{ type filter hook output priority 0; policy accept; }",
        ]);
        nft(&[
            "add",
            "chain",
            "inet",
            &table,
            "in",
            "{ type filter hook input priority 0; policy accept; }",
        ]);
        for (chain, rules) in [("out", output), ("in", input)] {
            for rule in rules {
                nft(&["add", "rule", "inet", &table, chain, rule]);
            }
        }
        Partition {
            table,
            cgroup: None,
        }
    }

    /// Heals the partition (as dropping it does).
    pub fn heal(self) {}
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
        if let Some((dir, pid)) = self.cgroup.take() {
            let root = std::path::Path::new(CGROUP2).join("cgroup.procs");
            let _ = std::fs::write(root, pid.to_string());
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// A name no other partition of any test process uses.
fn table_name() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "weir_test_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn nft(args: &[&str]) {
    let out = Command::new("nft").args(args).output().unwrap_or_else(|e| {
        panic!("cannot run nft (install nftables; partition tests need root): {e}")
    });
    assert!(
        out.status.success(),
        "nft {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
