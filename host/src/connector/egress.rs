//! Which URLs a connector may reach: host patterns, the allow-list of one connection, and the
//! classification of addresses that are refused unless the operator allows private networks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use url::Url;

/// One allowed origin: `scheme://host[:port]`. No scheme means `https`; no port means the scheme's
/// default; port `*` means any port; a host `*.example.com` matches any subdomain (not the apex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    scheme: String,
    host: HostMatch,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Exact(String),
    Subdomains(String),
}

impl HostPattern {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let pattern = pattern.trim();
        let (scheme, rest) = match pattern.split_once("://") {
            Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
            None => ("https".to_string(), pattern),
        };
        if scheme != "http" && scheme != "https" {
            return Err(format!("scheme {scheme:?} is not http or https"));
        }
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('?') || rest.contains('@') {
            return Err("give an origin only (scheme, host, port), without path or credentials".into());
        }
        let (host, port) = split_host_port(rest)?;
        let port = match port {
            None => Some(default_port(&scheme)),
            Some("*") => None,
            Some(p) => Some(p.parse::<u16>().map_err(|_| format!("port {p:?} is not a number"))?),
        };
        let host = match host.parse::<Ipv6Addr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => host.to_ascii_lowercase(),
        };
        if host.is_empty() {
            return Err("the host is empty".into());
        }
        let host = match host.strip_prefix("*.") {
            Some(domain) if !domain.is_empty() && !domain.contains('*') => HostMatch::Subdomains(domain.to_string()),
            _ if host.contains('*') => return Err("`*` is only allowed as the whole first label".into()),
            _ => HostMatch::Exact(host),
        };
        Ok(HostPattern { scheme, host, port })
    }

    /// The pattern that allows exactly the origin of `url`.
    /// The message never shows the value: it may be, or hold, a secret.
    pub fn origin_of(url: &str) -> Result<Self, String> {
        let url = Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
        let host = url.host_str().ok_or("the URL has no host")?;
        let port = url.port_or_known_default().unwrap_or(default_port(url.scheme()));
        HostPattern::parse(&format!("{}://{}:{}", url.scheme(), host, port))
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    pub fn matches(&self, url: &Url) -> bool {
        let host = match url.host() {
            // `host_str` keeps the brackets of an IPv6 literal; patterns hold the canonical address.
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(host) => host.to_string().to_ascii_lowercase(),
            None => return false,
        };
        let host_ok = match &self.host {
            HostMatch::Exact(h) => *h == host,
            HostMatch::Subdomains(domain) => host.len() > domain.len() + 1 && host.ends_with(&format!(".{domain}")),
        };
        let port_ok = self.port.is_none() || self.port == url.port_or_known_default();
        host_ok && port_ok && url.scheme() == self.scheme
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = match &self.host {
            HostMatch::Exact(h) if h.contains(':') => format!("[{h}]"),
            HostMatch::Exact(h) => h.clone(),
            HostMatch::Subdomains(d) => format!("*.{d}"),
        };
        match self.port {
            Some(p) if p == default_port(&self.scheme) => write!(f, "{}://{host}", self.scheme),
            Some(p) => write!(f, "{}://{host}:{p}", self.scheme),
            None => write!(f, "{}://{host}:*", self.scheme),
        }
    }
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "http" { 80 } else { 443 }
}

/// Splits `host[:port]`, including bracketed IPv6 literals.
fn split_host_port(text: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("unclosed [ in an IPv6 address")?;
        return match after.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None if after.is_empty() => Ok((host, None)),
            None => Err(format!("unexpected {after:?} after the address")),
        };
    }
    Ok(match text.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    })
}

/// The egress rules of one connection: the connector's declared hosts intersected with the connection's
/// own allow-list, and whether private and loopback addresses may be reached.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    pub(crate) connector_hosts: Vec<HostPattern>,
    /// `None`: the connection adds no restriction beyond the connector's declared hosts.
    pub(crate) connection_hosts: Option<Vec<HostPattern>>,
    /// The operator's pinned hosts (flowhost.toml), which no flow can widen; `None`: no pin.
    pub(crate) operator_hosts: Option<Vec<HostPattern>>,
    pub(crate) allow_private: bool,
}

impl EgressPolicy {
    /// A policy that refuses everything (used while describing a component).
    pub fn deny_all() -> Self {
        EgressPolicy {
            connector_hosts: Vec::new(),
            connection_hosts: Some(Vec::new()),
            operator_hosts: Some(Vec::new()),
            allow_private: false,
        }
    }

    pub fn allow_private(&self) -> bool {
        self.allow_private
    }

    /// Checks the URL against both allow-lists; `Err` says why it is refused.
    pub fn check_url(&self, url: &Url) -> Result<(), String> {
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(format!("scheme {:?} is not allowed", url.scheme()));
        }
        let origin = origin_text(url);
        if !self.connector_hosts.iter().any(|p| p.matches(url)) {
            return Err(format!("{origin} is not among the hosts the connector declares"));
        }
        if let Some(allowed) = &self.connection_hosts
            && !allowed.iter().any(|p| p.matches(url))
        {
            return Err(format!("{origin} is not in the connection's allowed hosts"));
        }
        if let Some(pinned) = &self.operator_hosts
            && !pinned.iter().any(|p| p.matches(url))
        {
            return Err(format!(
                "{origin} is not among the hosts the operator allows (`allowed_hosts` in flowhost.toml's [connectors] or [connections.<name>])"
            ));
        }
        if let Some(host) = url.host() {
            let literal = match host {
                url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
                url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
                url::Host::Domain(_) => None,
            };
            if let Some(ip) = literal {
                self.check_address(ip)?;
            }
        }
        Ok(())
    }

    /// Checks one resolved or literal address.
    pub fn check_address(&self, ip: IpAddr) -> Result<(), String> {
        match (self.allow_private, non_public_reason(ip)) {
            (false, Some(reason)) => Err(format!(
                "address {ip} is {reason}; private and loopback addresses are refused unless the operator allows them (`[connectors] allow_private = true` in flowhost.toml, `--allow-private` on the command line, `HostConfig::allow_private` when embedded)"
            )),
            _ => Ok(()),
        }
    }
}

/// `scheme://host:port` of a URL, for messages (never the path or query, which may carry credentials).
pub fn origin_text(url: &Url) -> String {
    format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or_default()
    )
}

/// Why an address is not on the public internet, or `None` when it is.
pub fn non_public_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "unspecified (0.0.0.0/8)",
        (10, _, _) => "private (10.0.0.0/8)",
        (100, 64..=127, _) => "shared address space (100.64.0.0/10)",
        (127, _, _) => "loopback (127.0.0.0/8)",
        (169, 254, _) => "link-local (169.254.0.0/16)",
        (172, 16..=31, _) => "private (172.16.0.0/12)",
        (192, 0, 0) => "IETF protocol assignment (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (192, 168, _) => "private (192.168.0.0/16)",
        (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
        (224..=239, _, _) => "multicast (224.0.0.0/4)",
        (240..=255, _, _) => "reserved (240.0.0.0/4)",
        _ => return None,
    })
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    // Addresses that carry an IPv4 address reach that address (or say it is where they come from): they are as
    // public as the IPv4 address is.
    if let Some((v4, range)) = embedded_v4(ip) {
        return non_public_v4(v4).map(|reason| match range {
            "IPv4-mapped" => reason,
            _ => range,
        });
    }
    let segments = ip.segments();
    Some(match segments {
        [0, 0, 0, 0, 0, 0, 0, 0] => "unspecified (::)",
        [0, 0, 0, 0, 0, 0, 0, 1] => "loopback (::1)",
        [0x64, 0xff9b, 1, ..] => "local-use NAT64 (64:ff9b:1::/48)",
        [0x2001, 0xdb8, ..] => "documentation (2001:db8::/32)",
        [s, ..] if s & 0xfe00 == 0xfc00 => "unique local (fc00::/7)",
        [s, ..] if s & 0xffc0 == 0xfe80 => "link-local (fe80::/10)",
        [s, ..] if s & 0xffc0 == 0xfec0 => "site-local (fec0::/10)",
        [s, ..] if s & 0xff00 == 0xff00 => "multicast (ff00::/8)",
        [0, 0, 0, 0, 0, 0, _, _] => "IPv4-compatible (::/96)",
        _ => return None,
    })
}

/// The IPv4 address an IPv6 address carries, and the name of its range (the reason given when that IPv4
/// address is not public): IPv4-mapped (`::ffff:0:0/96`) and IPv4-translated (`::ffff:0:0:0/96`), NAT64
/// (`64:ff9b::/96`), 6to4 (`2002::/16`) and Teredo (`2001::/32`, whose client address is stored inverted).
fn embedded_v4(ip: Ipv6Addr) -> Option<(Ipv4Addr, &'static str)> {
    let s = ip.segments();
    let v4 = |high: u16, low: u16| Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
    match s {
        [0, 0, 0, 0, 0, 0xffff, high, low] => Some((v4(high, low), "IPv4-mapped")),
        [0, 0, 0, 0, 0xffff, 0, high, low] => Some((v4(high, low), "an IPv4-translated address of a private one")),
        [0x64, 0xff9b, 0, 0, 0, 0, high, low] => {
            Some((v4(high, low), "a NAT64 address (64:ff9b::/96) of a private one"))
        }
        [0x2002, high, low, ..] => Some((v4(high, low), "a 6to4 address (2002::/16) of a private one")),
        [0x2001, 0, _, _, _, _, high, low] => Some((v4(!high, !low), "a Teredo address (2001::/32) of a private one")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn classifies_addresses_without_connecting() {
        for private in [
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.254",
            "192.168.1.1",
            "169.254.169.254",
            "127.0.0.1",
            "127.255.0.9",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::808:808",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
            "2002:a9fe:a9fe::",
            "::ffff:0:7f00:1",
            "::ffff:0:a00:1",
            // Teredo: client 127.0.0.1 and 10.0.0.1, stored inverted.
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
            "2001:0:4136:e378:8000:63bf:f5ff:fffe",
            "2001:db8::1",
        ] {
            assert!(non_public_reason(ip(private)).is_some(), "{private} should be refused");
        }
        for public in [
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.1",
            "192.169.0.1",
            "100.63.0.1",
            "2606:4700::1111",
            // Each carries 8.8.8.8: as public as it.
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
        ] {
            assert_eq!(non_public_reason(ip(public)), None, "{public} is public");
        }
        assert_eq!(non_public_reason(ip("2002:7f00:1::")), Some("a 6to4 address (2002::/16) of a private one"));
        assert_eq!(non_public_reason(ip("::ffff:192.168.0.1")), Some("private (192.168.0.0/16)"));
        assert_eq!(non_public_reason(ip("64:ff9b:1::1")), Some("local-use NAT64 (64:ff9b:1::/48)"));
        assert_eq!(non_public_reason(ip("172.20.1.1")), Some("private (172.16.0.0/12)"));
        assert_eq!(non_public_reason(ip("fc00::1")), Some("unique local (fc00::/7)"));
    }

    #[test]
    fn patterns_match_scheme_host_and_port() {
        let url = |u: &str| Url::parse(u).unwrap();
        let api = HostPattern::parse("api.crm.example").unwrap();
        assert!(api.matches(&url("https://api.crm.example/v1/accounts")));
        assert!(!api.matches(&url("http://api.crm.example/")), "no scheme means https only");
        assert!(!api.matches(&url("https://api.crm.example:8443/")), "no port means the default port");
        assert!(!api.matches(&url("https://evil.api.crm.example/")));

        let pods = HostPattern::parse("https://*.crm.example").unwrap();
        assert!(pods.matches(&url("https://s2s.us2.crm.example/v2/events")));
        assert!(!pods.matches(&url("https://crm.example/")), "a wildcard does not match the apex");
        assert!(!pods.matches(&url("https://evilcrm.example/")));

        let local = HostPattern::parse("http://127.0.0.1:*").unwrap();
        assert!(local.matches(&url("http://127.0.0.1:41234/x")));
        assert!(!local.matches(&url("https://127.0.0.1:41234/x")));

        let v6 = HostPattern::parse("http://[::1]:8080").unwrap();
        assert!(v6.matches(&url("http://[::1]:8080/")));
        assert_eq!(v6.to_string(), "http://[::1]:8080");

        for bad in
            ["ftp://x.com", "https://a.*.com", "https://x.com/path", "https://user@x.com", "https://x.com:abc", ""]
        {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn policy_intersects_connector_and_connection_lists() {
        let url = |u: &str| Url::parse(u).unwrap();
        let policy = EgressPolicy {
            connector_hosts: vec![HostPattern::parse("https://*.example.com").unwrap()],
            connection_hosts: Some(vec![HostPattern::parse("https://api.example.com").unwrap()]),
            operator_hosts: None,
            allow_private: false,
        };
        assert!(policy.check_url(&url("https://api.example.com/x")).is_ok());
        let err = policy.check_url(&url("https://other.example.com/x")).unwrap_err();
        assert!(err.contains("connection's allowed hosts"), "{err}");
        let err = policy.check_url(&url("https://api.other.com/x")).unwrap_err();
        assert!(err.contains("connector declares"), "{err}");

        let loopback = EgressPolicy {
            connector_hosts: vec![HostPattern::parse("http://127.0.0.1:*").unwrap()],
            connection_hosts: None,
            operator_hosts: None,
            allow_private: false,
        };
        let err = loopback.check_url(&url("http://127.0.0.1:9/")).unwrap_err();
        assert!(err.contains("loopback"), "{err}");
        assert!(err.contains("allow_private = true") && err.contains("--allow-private"), "says how to allow it: {err}");
        let allowed = EgressPolicy { allow_private: true, ..loopback };
        assert!(allowed.check_url(&url("http://127.0.0.1:9/")).is_ok());

        // The operator's pin holds whatever the connector and the flow allow.
        let pinned = EgressPolicy {
            connector_hosts: vec![HostPattern::parse("https://*.example.com").unwrap()],
            connection_hosts: Some(vec![HostPattern::parse("https://evil.example.com").unwrap()]),
            operator_hosts: Some(vec![HostPattern::parse("https://api.example.com").unwrap()]),
            allow_private: false,
        };
        let err = pinned.check_url(&url("https://evil.example.com/x")).unwrap_err();
        assert!(err.contains("the operator allows"), "{err}");
        assert!(pinned.check_url(&url("https://api.example.com/x")).is_err(), "the flow's list still narrows");
    }
}
