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
}

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

    /// A table of the test's own with `rules` in an output chain (every
    /// loopback packet passes through output once).
    fn rules(rules: &[String]) -> Partition {
        static N: AtomicU32 = AtomicU32::new(0);
        let table = format!(
            "weir_test_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        nft(&["add", "table", "inet", &table]);
        nft(&[
            "add",
            "chain",
            "inet",
            &table,
            "out",
            "{ type filter hook output priority 0; policy accept; }",
        ]);
        for rule in rules {
            let mut args = vec!["add", "rule", "inet", &table, "out"];
            args.extend(rule.split_whitespace());
            nft(&args);
        }
        Partition { table }
    }

    /// Heals the partition (as dropping it does).
    pub fn heal(self) {}
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
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
