//! Debian packages the privileged tests need, installed only when missing.

use crate::process::{is_root, run};
use anyhow::{Context, Result, bail};
use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// What the tests drive: network namespaces and routes, iptables (the baseline we replace),
/// upstream servers and a proxy, process tools, ping.
pub const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "iptables",
    "nginx-light",
    "curl",
    // `cargo xtask bench`
    "wrk",
    "iperf3",
    "haproxy",
    "procps",
    "iputils-ping",
    // DNS capture's end-to-end test: a DNS server and dig.
    "dnsmasq-base",
    "bind9-dnsutils",
];

/// Installs those of `packages` that are not installed, printing a line per package.
pub fn ensure_installed(packages: &[&str]) -> Result<()> {
    let missing = missing_packages(packages)?;
    for package in packages.iter().filter(|p| !missing.contains(p)) {
        println!("ok: {package}");
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root()? {
        bail!(
            "missing Debian packages {}; installing them needs root: run `apt-get install {0}` \
             as root, or this command through sudo",
            missing.join(" ")
        );
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    {
        let _guard = NoDaemonStart::install()?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let still = missing_packages(&missing)?;
    if !still.is_empty() {
        bail!(
            "apt-get install succeeded but {} still not installed",
            still.join(" ")
        );
    }
    for package in &missing {
        println!("installed {package}");
    }
    Ok(())
}

/// The packages among `packages` that dpkg doesn't report as installed.
fn missing_packages<'a>(packages: &[&'a str]) -> Result<Vec<&'a str>> {
    // Exits non-zero when it knows none of some names: that is an answer, not a failure.
    let out = Command::new("dpkg-query")
        .arg("-W")
        .arg("-f=${Package}\t${Status}\n")
        .args(packages)
        .output()
        .context("running dpkg-query (is this Debian?)")?;
    Ok(parse_missing(
        packages,
        &String::from_utf8_lossy(&out.stdout),
    ))
}

/// Parses `dpkg-query -W -f='${Package}\t${Status}\n'` output: a package counts as installed
/// when its status ends in `installed` (`install ok installed`, `hold ok installed`).
fn parse_missing<'a>(packages: &[&'a str], output: &str) -> Vec<&'a str> {
    let installed: HashSet<&str> = output
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(_, status)| status.split_whitespace().last() == Some("installed"))
        .map(|(name, _)| name)
        .collect();
    packages
        .iter()
        .copied()
        .filter(|p| !installed.contains(p))
        .collect()
}

const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// Keeps the packages' daemons (nginx, haproxy) from being started by their install scripts:
/// the tests run their own instances, and a system nginx on port 80 would only get in the way.
/// Installs a `policy-rc.d` that denies starts, unless one exists, and removes it on drop.
struct NoDaemonStart {
    created: bool,
}

impl NoDaemonStart {
    fn install() -> Result<Self> {
        let path = Path::new(POLICY_RC_D);
        if path.exists() {
            return Ok(Self { created: false });
        }
        fs::write(
            path,
            "#!/bin/sh\n# Written by `cargo xtask setup` while installing packages.\nexit 101\n",
        )
        .with_context(|| format!("writing {POLICY_RC_D}"))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
        Ok(Self { created: true })
    }
}

impl Drop for NoDaemonStart {
    fn drop(&mut self) {
        if self.created
            && let Err(e) = fs::remove_file(POLICY_RC_D)
        {
            eprintln!("warning: could not remove {POLICY_RC_D}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_missing_packages() {
        let output = "iproute2\tinstall ok installed\n\
                      nginx-light\tdeinstall ok config-files\n\
                      haproxy\thold ok installed\n\
                      procps\tinstall ok not-installed\n";
        let wanted = [
            "iproute2",
            "nginx-light",
            "haproxy",
            "procps",
            "iputils-ping",
        ];
        assert_eq!(
            parse_missing(&wanted, output),
            ["nginx-light", "procps", "iputils-ping"]
        );
    }

    #[test]
    fn nothing_missing() {
        let output = "iproute2\tinstall ok installed\n";
        assert!(parse_missing(&["iproute2"], output).is_empty());
    }
}
