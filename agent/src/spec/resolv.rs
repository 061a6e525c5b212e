//! The nameservers of a resolv.conf, as istio-iptables takes them for `--redirect-dns`: every
//! `nameserver` line whose address parses (Go's `net.ParseIP`: an address with a `%zone`
//! suffix does not, and is left out there too), in file order, without repeats.
use std::net::IpAddr;

/// Most nameservers one pod may have captured (`MS_DNS_SERVERS` is sized by it). Kubernetes
/// allows three; a longer list is an operator's mistake, refused by name rather than cut.
pub const MAX_NAMESERVERS: usize = meshsteer_common::maps::capacity::NAMESERVERS_PER_POD as usize;

/// The nameservers `text` lists.
pub fn nameservers(text: &str) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        if let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok())
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_nameserver_lines_only() {
        let text = "# generated\nsearch default.svc.cluster.local svc.cluster.local\n\
                    nameserver 10.96.0.10\nnameserver  fd00::a \n;nameserver 10.0.0.9\n\
                    nameserver fe80::1%eth0\nnameserver 10.96.0.10\noptions ndots:5\n\
                    nameserver\nnameserver bogus\n";
        assert_eq!(
            nameservers(text),
            vec![
                "10.96.0.10".parse::<IpAddr>().unwrap(),
                "fd00::a".parse().unwrap()
            ]
        );
        assert!(nameservers("").is_empty());
    }
}
