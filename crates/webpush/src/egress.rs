//! Where pushfan may send: the egress (SSRF) policy, as pure functions.
//!
//! Anyone who can register a subscription chooses the URL pushfan POSTs to, so an endpoint must
//! never lead to the deployment's own network: loopback, private ranges, cloud metadata
//! (`169.254.169.254`), and the IPv6 forms that embed those. This module decides, without any
//! I/O, whether an address or a host name may be sent to:
//!
//! - [`classify`] names the class of an address, reading the IPv4 address embedded in
//!   IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) and
//!   6to4 (`2002::/16`) addresses, so `[::ffff:127.0.0.1]` is loopback, not "some IPv6 address".
//! - [`EgressPolicy::check_host`] runs when an endpoint is accepted (subscribe, import) and before
//!   it is sent: IP-literal hosts are refused unless inside an allowed network (push services
//!   are named hosts), reserved local names (`localhost`, `*.internal`, ...) are refused, and an
//!   optional allow-list of host patterns applies.
//! - [`EgressPolicy::check_ip`] runs at connect time on every address a name resolved to (the
//!   gateway's resolver): only public addresses pass, others only inside an allowed network.
//!
//! The URL parser has already normalised numeric IPv4 spellings (`0x7f000001`, `2130706433`,
//! `127.1`) to addresses, so `check_host` sees them as the IP literals they are.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Networks, as `allowed_networks` takes them (`10.0.0.0/8`, `fd00::/8`).
pub use ipnet::IpNet;

/// What kind of address an IP is, as far as sending to it is concerned. Only [`Public`] is
/// reachable by default.
///
/// [`Public`]: AddressClass::Public
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressClass {
    /// Globally routable unicast.
    Public,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918: `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`.
    Private,
    /// RFC 6598 carrier-grade NAT: `100.64.0.0/10`.
    SharedAddressSpace,
    /// `169.254.0.0/16` (where clouds serve instance metadata and credentials), `fe80::/10`.
    LinkLocal,
    /// `fc00::/7`, IPv6's private ranges.
    UniqueLocal,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `0.0.0.0`, `::`: connecting to it reaches the local host.
    Unspecified,
    /// `255.255.255.255`.
    Broadcast,
    /// Everything else that is not globally routable unicast: `0.0.0.0/8`, IETF protocol
    /// assignments (`192.0.0.0/24`, `2001::/23`), documentation, benchmarking (`198.18.0.0/15`),
    /// `240.0.0.0/4`, deprecated site-local IPv6, IPv6 outside `2000::/3`, and Teredo addresses
    /// that embed a non-public IPv4 address.
    Reserved,
}

impl AddressClass {
    /// A short name, for errors, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressClass::Public => "public",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::SharedAddressSpace => "shared address space",
            AddressClass::LinkLocal => "link-local",
            AddressClass::UniqueLocal => "unique-local",
            AddressClass::Multicast => "multicast",
            AddressClass::Unspecified => "unspecified",
            AddressClass::Broadcast => "broadcast",
            AddressClass::Reserved => "reserved",
        }
    }
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The class of `ip`. IPv6 addresses that carry an IPv4 address (mapped, compatible, NAT64,
/// 6to4) take the class of the IPv4 address they carry, since that is where a packet to them
/// ends up.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, c, _] = ip.octets();
    match (a, b, c) {
        _ if ip.is_unspecified() => AddressClass::Unspecified,
        _ if ip.is_broadcast() => AddressClass::Broadcast,
        (0, _, _) => AddressClass::Reserved,
        (127, _, _) => AddressClass::Loopback,
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => AddressClass::Private,
        (100, 64..=127, _) => AddressClass::SharedAddressSpace,
        (169, 254, _) => AddressClass::LinkLocal,
        (224..=239, _, _) => AddressClass::Multicast,
        (240..=255, _, _) => AddressClass::Reserved,
        // IETF protocol assignments, TEST-NET-1/2/3, benchmarking, the 6to4 relay anycast.
        (192, 0, 0) | (192, 0, 2) | (198, 51, 100) | (203, 0, 113) | (198, 18..=19, _) | (192, 88, 99) => {
            AddressClass::Reserved
        }
        _ => AddressClass::Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    let segments = ip.segments();
    let embedded = |high: u16, low: u16| {
        let [a, b] = high.to_be_bytes();
        let [c, d] = low.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    if ip.is_unspecified() {
        return AddressClass::Unspecified;
    }
    if ip.is_loopback() {
        return AddressClass::Loopback;
    }
    match segments {
        // IPv4-mapped `::ffff:a.b.c.d` and IPv4-compatible `::a.b.c.d`.
        [0, 0, 0, 0, 0, 0xffff, high, low] | [0, 0, 0, 0, 0, 0, high, low] => {
            return classify_v4(embedded(high, low));
        }
        // NAT64, RFC 6052's well-known prefix.
        [0x64, 0xff9b, 0, 0, 0, 0, high, low] => return classify_v4(embedded(high, low)),
        // 6to4: the relay's IPv4 address follows the prefix.
        [0x2002, high, low, ..] => return classify_v4(embedded(high, low)),
        // Teredo: the server's address, and the client's with every bit flipped.
        [0x2001, 0, server_high, server_low, _, _, client_high, client_low] => {
            let server = classify_v4(embedded(server_high, server_low));
            let client = classify_v4(embedded(!client_high, !client_low));
            return if server == AddressClass::Public && client == AddressClass::Public {
                AddressClass::Public
            } else {
                AddressClass::Reserved
            };
        }
        _ => {}
    }
    let first = segments[0];
    match first {
        _ if first & 0xff00 == 0xff00 => AddressClass::Multicast,
        _ if first & 0xffc0 == 0xfe80 => AddressClass::LinkLocal,
        _ if first & 0xfe00 == 0xfc00 => AddressClass::UniqueLocal,
        // Only 2000::/3 is allocated as global unicast; everything else (site-local fec0::/10,
        // the discard prefix 100::/64, NAT64's local-use 64:ff9b:1::/48, ...) is not a push service.
        _ if first & 0xe000 != 0x2000 => AddressClass::Reserved,
        // IETF protocol assignments (2001::/23) and documentation (2001:db8::/32, 3fff::/20).
        _ if first == 0x2001 && segments[1] < 0x0200 => AddressClass::Reserved,
        _ if first == 0x2001 && segments[1] == 0x0db8 => AddressClass::Reserved,
        _ if first == 0x3fff && segments[1] < 0x1000 => AddressClass::Reserved,
        _ => AddressClass::Public,
    }
}

/// Why the egress policy refused an address or a host. None of these can succeed on a retry:
/// the endpoint must be refused (and its subscription pruned), or the policy changed.
///
/// Messages name the address or host, never the whole endpoint URL (a secret).
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum EgressError {
    /// The address is not public and no allowed network contains it.
    #[error("address {ip} is {class}, which is not allowed")]
    Address { ip: IpAddr, class: AddressClass },
    /// A public IP literal as the host: push services are named hosts.
    #[error("host {0} is an IP address; only named hosts are allowed")]
    IpLiteral(IpAddr),
    /// A name that resolves to the local host or the local network by convention
    /// (`localhost`, `*.internal`, `*.local`, a single label, ...).
    #[error("host `{0}` is a local name, which is not allowed")]
    ReservedName(String),
    /// An allow-list of host patterns is configured and the host matches none.
    #[error("host `{0}` is not in the allowed hosts")]
    HostNotAllowed(String),
}

/// Why a host pattern is not one.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum HostPatternError {
    #[error("host pattern is empty")]
    Empty,
    #[error("host pattern `{0}` is not a host name: {1}")]
    NotAHost(String, String),
    #[error("host pattern `{0}` is an IP address; list its network in allowed_networks instead")]
    IpAddress(String),
    #[error("host pattern `{0}` may only use `*.` as a prefix, as in `*.example.com`")]
    Wildcard(String),
}

/// A push service host an allow-list accepts: `push.example.com` exactly, or `*.googleapis.com`
/// for any name below `googleapis.com` (not `googleapis.com` itself). Names are compared in
/// their IDNA (punycode) form, lowercase and without a trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPattern {
    /// The exact name, or for a wildcard the suffix including its leading dot (`.googleapis.com`).
    name: String,
    wildcard: bool,
}

impl HostPattern {
    /// Whether `host` (normalised as a URL parser leaves it: lowercase, punycode) matches.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        if self.wildcard {
            host.len() > self.name.len() && ends_with_ignore_case(host, &self.name)
        } else {
            host.eq_ignore_ascii_case(&self.name)
        }
    }
}

impl FromStr for HostPattern {
    type Err = HostPatternError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() {
            return Err(HostPatternError::Empty);
        }
        let (wildcard, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        if name.contains('*') {
            return Err(HostPatternError::Wildcard(text.to_owned()));
        }
        // The URL parser's own host rules, so a pattern is normalised exactly as endpoints are.
        match url::Host::parse(name) {
            Ok(url::Host::Domain(domain)) => {
                let domain = domain.strip_suffix('.').unwrap_or(&domain);
                if domain.is_empty() || domain.split('.').any(str::is_empty) {
                    return Err(HostPatternError::NotAHost(text.to_owned(), "empty label".into()));
                }
                let name = if wildcard { format!(".{domain}") } else { domain.to_owned() };
                Ok(Self { name, wildcard })
            }
            Ok(_) => Err(HostPatternError::IpAddress(text.to_owned())),
            Err(error) => Err(HostPatternError::NotAHost(text.to_owned(), error.to_string())),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*{}", self.name)
        } else {
            f.write_str(&self.name)
        }
    }
}

/// Where pushfan may send. The default allows public addresses and named hosts only.
///
/// - An address passes [`check_ip`](Self::check_ip) when it is [`AddressClass::Public`] or inside
///   one of `allowed_networks` (an IPv4-mapped address also when its IPv4 address is inside one).
/// - A host passes [`check_host`](Self::check_host) when:
///   - it is an IP literal inside one of `allowed_networks` (public literals are refused too:
///     push services are named hosts, and a literal skips the allow-list of names);
///   - or it is a name, and:
///     - `localhost` and `*.localhost` (RFC 6761: always loopback) only when an allowed network
///       contains `127.0.0.1`;
///     - other local names (a single label, `*.local`, `*.localdomain`, `*.lan`, `*.internal`
///       such as `metadata.google.internal`, `*.intranet`, `*.corp`, `*.home`, `*.home.arpa`),
///       which resolve inside the deployment's network by convention, only when an allowed host
///       pattern names them; their addresses must still pass `check_ip` at connect time;
///     - and, when `allowed_hosts` is not empty, it matches one of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    allowed_networks: Vec<IpNet>,
    allowed_hosts: Vec<HostPattern>,
    unrestricted: bool,
}

/// Name suffixes that resolve inside the deployment's own network by convention.
const LOCAL_SUFFIXES: [&str; 9] =
    [".local", ".localdomain", ".lan", ".internal", ".intranet", ".corp", ".home", ".home.arpa", ".private"];

impl EgressPolicy {
    /// Public addresses, plus `allowed_networks`; any named host, or only `allowed_hosts` when
    /// that is not empty.
    pub fn new(allowed_networks: Vec<IpNet>, allowed_hosts: Vec<HostPattern>) -> Self {
        Self { allowed_networks, allowed_hosts, unrestricted: false }
    }

    /// Also `127.0.0.0/8` and `::1`: the simulated push service of tests and the demo.
    pub fn allow_loopback() -> Self {
        Self::new(Self::loopback_networks().to_vec(), Vec::new())
    }

    /// Loopback: `127.0.0.0/8` and `::1/128`.
    pub fn loopback_networks() -> [IpNet; 2] {
        [
            IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
            IpNet::new_assert(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
        ]
    }

    /// Accepts everything: for reading back endpoints that were checked when written (the
    /// store's records), never for sending.
    pub fn unrestricted() -> Self {
        Self { unrestricted: true, ..Self::default() }
    }

    /// This policy with `networks` allowed too (duplicates skipped).
    pub fn with_networks(mut self, networks: impl IntoIterator<Item = IpNet>) -> Self {
        for network in networks {
            if !self.allowed_networks.contains(&network) {
                self.allowed_networks.push(network);
            }
        }
        self
    }

    /// The networks allowed beyond public addresses.
    pub fn allowed_networks(&self) -> &[IpNet] {
        &self.allowed_networks
    }

    /// The host patterns names must match, if any.
    pub fn allowed_hosts(&self) -> &[HostPattern] {
        &self.allowed_hosts
    }

    /// Whether pushfan may connect to `ip`: public, or inside an allowed network.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), EgressError> {
        let class = classify(ip);
        if class == AddressClass::Public || self.unrestricted || self.in_allowed_network(ip) {
            return Ok(());
        }
        Err(EgressError::Address { ip, class })
    }

    /// Whether an endpoint's host (as the URL parser gives it) may be sent to; see the type's
    /// documentation for the rules.
    pub fn check_host(&self, host: &url::Host<&str>) -> Result<(), EgressError> {
        if self.unrestricted {
            return Ok(());
        }
        match *host {
            url::Host::Ipv4(ip) => self.check_ip_literal(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => self.check_ip_literal(IpAddr::V6(ip)),
            url::Host::Domain(name) => self.check_name(name),
        }
    }

    fn check_ip_literal(&self, ip: IpAddr) -> Result<(), EgressError> {
        if self.in_allowed_network(ip) {
            return Ok(());
        }
        match classify(ip) {
            AddressClass::Public => Err(EgressError::IpLiteral(ip)),
            class => Err(EgressError::Address { ip, class }),
        }
    }

    fn check_name(&self, name: &str) -> Result<(), EgressError> {
        let name = name.strip_suffix('.').unwrap_or(name);
        let pattern_match = || self.allowed_hosts.iter().any(|pattern| pattern.matches(name));
        let loopback_name =
            name.eq_ignore_ascii_case("localhost") || ends_with_ignore_case(name, ".localhost");
        if loopback_name {
            if !self.in_allowed_network(IpAddr::V4(Ipv4Addr::LOCALHOST)) {
                return Err(EgressError::ReservedName(name.to_owned()));
            }
        } else if !name.contains('.')
            || LOCAL_SUFFIXES.iter().any(|suffix| ends_with_ignore_case(name, suffix))
        {
            // A local name needs an allow-list entry of its own: the absence of patterns must
            // not let it through.
            if !pattern_match() {
                return Err(EgressError::ReservedName(name.to_owned()));
            }
            return Ok(());
        }
        if !self.allowed_hosts.is_empty() && !pattern_match() {
            return Err(EgressError::HostNotAllowed(name.to_owned()));
        }
        Ok(())
    }

    fn in_allowed_network(&self, ip: IpAddr) -> bool {
        let mapped = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.allowed_networks
            .iter()
            .any(|network| network.contains(&ip) || mapped.is_some_and(|v4| network.contains(&v4)))
    }
}

fn ends_with_ignore_case(text: &str, suffix: &str) -> bool {
    text.len()
        .checked_sub(suffix.len())
        .and_then(|start| text.get(start..))
        .is_some_and(|end| end.eq_ignore_ascii_case(suffix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use AddressClass::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// The host of `url` as the URL parser normalises it, checked against `policy`.
    fn check_url(policy: &EgressPolicy, url: &str) -> Result<(), EgressError> {
        let url = url::Url::parse(url).unwrap();
        policy.check_host(&url.host().unwrap())
    }

    #[test]
    fn every_address_form_is_classified() {
        let cases = [
            ("169.254.169.254", LinkLocal),
            ("10.0.0.5", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("127.0.0.1", Loopback),
            ("127.255.0.9", Loopback),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Reserved),
            ("100.64.0.1", SharedAddressSpace),
            ("100.127.255.255", SharedAddressSpace),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("255.255.255.255", Broadcast),
            ("240.0.0.1", Reserved),
            ("192.0.0.8", Reserved),
            ("192.0.2.1", Reserved),
            ("198.18.0.1", Reserved),
            ("198.51.100.7", Reserved),
            ("203.0.113.9", Reserved),
            ("::", Unspecified),
            ("::1", Loopback),
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:169.254.169.254", LinkLocal),
            ("::ffff:10.1.2.3", Private),
            ("::127.0.0.1", Loopback),
            ("::10.0.0.1", Private),
            ("64:ff9b::7f00:1", Loopback),
            ("64:ff9b::a9fe:a9fe", LinkLocal),
            ("64:ff9b:1::1", Reserved),
            ("2002:7f00:1::", Loopback),
            ("2002:a9fe:a9fe::", LinkLocal),
            ("2002:c0a8:101::1", Private),
            ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", Public),
            ("2001:0:a00:1::1", Reserved),
            ("2001:0:4136:e378:8000:63bf:80ff:fffe", Reserved),
            ("fc00::1", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("fe80::1", LinkLocal),
            ("fec0::1", Reserved),
            ("ff02::1", Multicast),
            ("100::1", Reserved),
            ("2001:db8::1", Reserved),
            ("8.8.8.8", Public),
            ("1.1.1.1", Public),
            ("172.32.0.1", Public),
            ("100.128.0.1", Public),
            ("::ffff:8.8.8.8", Public),
            ("2001:4860::1", Public),
            ("2a00:1450:4001::200e", Public),
            ("64:ff9b::808:808", Public),
            ("2002:808:808::1", Public),
        ];
        for (text, class) in cases {
            assert_eq!(classify(ip(text)), class, "{text}");
        }
    }

    #[test]
    fn every_ssrf_form_of_the_issue_is_refused_by_default() {
        let policy = EgressPolicy::default();
        let refused = [
            (
                "https://169.254.169.254/latest/meta-data/",
                EgressError::Address { ip: ip("169.254.169.254"), class: LinkLocal },
            ),
            ("https://10.0.0.5/push", EgressError::Address { ip: ip("10.0.0.5"), class: Private }),
            ("https://192.168.1.1/push", EgressError::Address { ip: ip("192.168.1.1"), class: Private }),
            ("https://172.16.0.1/push", EgressError::Address { ip: ip("172.16.0.1"), class: Private }),
            (
                "https://100.64.0.1/push",
                EgressError::Address { ip: ip("100.64.0.1"), class: SharedAddressSpace },
            ),
            ("https://localhost/push", EgressError::ReservedName("localhost".into())),
            ("https://LocalHost./push", EgressError::ReservedName("localhost".into())),
            ("https://api.localhost/push", EgressError::ReservedName("api.localhost".into())),
            ("https://[::1]/push", EgressError::Address { ip: ip("::1"), class: Loopback }),
            (
                "https://[::ffff:127.0.0.1]/push",
                EgressError::Address { ip: ip("::ffff:127.0.0.1"), class: Loopback },
            ),
            ("https://0x7f000001/push", EgressError::Address { ip: ip("127.0.0.1"), class: Loopback }),
            ("https://2130706433/push", EgressError::Address { ip: ip("127.0.0.1"), class: Loopback }),
            ("https://0177.0.0.1/push", EgressError::Address { ip: ip("127.0.0.1"), class: Loopback }),
            ("https://127.1/push", EgressError::Address { ip: ip("127.0.0.1"), class: Loopback }),
            ("https://0.0.0.0/push", EgressError::Address { ip: ip("0.0.0.0"), class: Unspecified }),
            ("https://0/push", EgressError::Address { ip: ip("0.0.0.0"), class: Unspecified }),
            (
                "https://metadata.google.internal/computeMetadata/v1/",
                EgressError::ReservedName("metadata.google.internal".into()),
            ),
            ("https://printer.local/push", EgressError::ReservedName("printer.local".into())),
            ("https://router.home.arpa/push", EgressError::ReservedName("router.home.arpa".into())),
            ("https://intranet/push", EgressError::ReservedName("intranet".into())),
            ("https://[fc00::1]/push", EgressError::Address { ip: ip("fc00::1"), class: UniqueLocal }),
            ("https://[fe80::1]/push", EgressError::Address { ip: ip("fe80::1"), class: LinkLocal }),
            ("https://224.0.0.1/push", EgressError::Address { ip: ip("224.0.0.1"), class: Multicast }),
            ("https://[ff02::1]/push", EgressError::Address { ip: ip("ff02::1"), class: Multicast }),
            (
                "https://255.255.255.255/push",
                EgressError::Address { ip: ip("255.255.255.255"), class: Broadcast },
            ),
            ("https://[::]/push", EgressError::Address { ip: ip("::"), class: Unspecified }),
            ("https://[::127.0.0.1]/push", EgressError::Address { ip: ip("::7f00:1"), class: Loopback }),
            (
                "https://[64:ff9b::7f00:1]/push",
                EgressError::Address { ip: ip("64:ff9b::7f00:1"), class: Loopback },
            ),
            (
                "https://[2002:7f00:1::]/push",
                EgressError::Address { ip: ip("2002:7f00:1::"), class: Loopback },
            ),
            (
                "https://[2002:a9fe:a9fe::]/push",
                EgressError::Address { ip: ip("2002:a9fe:a9fe::"), class: LinkLocal },
            ),
            // Public literals too: push services are named hosts.
            ("https://8.8.8.8/push", EgressError::IpLiteral(ip("8.8.8.8"))),
            ("https://[2001:4860::1]/push", EgressError::IpLiteral(ip("2001:4860::1"))),
        ];
        for (url, error) in refused {
            assert_eq!(check_url(&policy, url), Err(error), "{url}");
        }
        for url in [
            "https://fcm.googleapis.com/fcm/send/x",
            "https://web.push.apple.com/x",
            "https://bücher.example/x",
        ] {
            assert_eq!(check_url(&policy, url), Ok(()), "{url}");
        }
    }

    #[test]
    fn connect_time_addresses_pass_only_when_public_or_allowed() {
        let policy = EgressPolicy::default();
        for public in ["8.8.8.8", "2001:4860::1", "::ffff:8.8.8.8"] {
            assert_eq!(policy.check_ip(ip(public)), Ok(()), "{public}");
        }
        for (text, class) in [
            ("169.254.169.254", LinkLocal),
            ("127.0.0.1", Loopback),
            ("::1", Loopback),
            ("::ffff:127.0.0.1", Loopback),
            ("0.0.0.0", Unspecified),
            ("10.0.0.5", Private),
        ] {
            assert_eq!(
                policy.check_ip(ip(text)),
                Err(EgressError::Address { ip: ip(text), class }),
                "{text}"
            );
        }
        let loopback = EgressPolicy::allow_loopback();
        for allowed in ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1", "8.8.8.8"] {
            assert_eq!(loopback.check_ip(ip(allowed)), Ok(()), "{allowed}");
        }
        for refused in ["10.0.0.5", "169.254.169.254", "0.0.0.0", "::", "fe80::1"] {
            assert!(loopback.check_ip(ip(refused)).is_err(), "{refused}");
        }
        let unrestricted = EgressPolicy::unrestricted();
        assert_eq!(unrestricted.check_ip(ip("169.254.169.254")), Ok(()));
        assert_eq!(check_url(&unrestricted, "https://metadata.google.internal/x"), Ok(()));
    }

    #[test]
    fn loopback_hosts_pass_only_when_loopback_is_allowed() {
        let policy = EgressPolicy::allow_loopback();
        for url in [
            "https://127.0.0.1:8443/p",
            "http://localhost/p",
            "https://push.localhost/p",
            "https://[::1]:8443/p",
            "https://[::ffff:127.0.0.1]/p",
            "https://2130706433/p",
        ] {
            assert_eq!(check_url(&policy, url), Ok(()), "{url}");
        }
        for url in [
            "https://10.0.0.5/p",
            "https://0.0.0.0/p",
            "https://metadata.google.internal/p",
            "https://8.8.8.8/p",
        ] {
            assert!(check_url(&policy, url).is_err(), "{url}");
        }
        let private: IpNet = "10.0.0.0/8".parse().unwrap();
        let policy = EgressPolicy::new(vec![private], Vec::new());
        assert_eq!(check_url(&policy, "https://10.1.2.3/p"), Ok(()));
        assert_eq!(policy.check_ip(ip("10.1.2.3")), Ok(()));
        assert!(check_url(&policy, "https://localhost/p").is_err());
        assert!(check_url(&policy, "https://11.0.0.1/p").is_err());
    }

    #[test]
    fn host_patterns_allow_listed_names_only() {
        let patterns: Vec<HostPattern> = [
            "*.googleapis.com",
            "updates.push.services.mozilla.com",
            "*.push.apple.com",
            "*.notify.windows.com",
        ]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
        let policy = EgressPolicy::new(Vec::new(), patterns);
        for url in [
            "https://fcm.googleapis.com/fcm/send/x",
            "https://FCM.GoogleAPIs.com./fcm/send/x",
            "https://updates.push.services.mozilla.com/wpush/v2/x",
            "https://web.push.apple.com/x",
            "https://wns2-by3p.notify.windows.com/w/?token=x",
        ] {
            assert_eq!(check_url(&policy, url), Ok(()), "{url}");
        }
        for (url, host) in [
            ("https://googleapis.com/x", "googleapis.com"),
            ("https://evilgoogleapis.com/x", "evilgoogleapis.com"),
            ("https://push.example.com/x", "push.example.com"),
            ("https://fcm.googleapis.com.evil.example/x", "fcm.googleapis.com.evil.example"),
        ] {
            assert_eq!(check_url(&policy, url), Err(EgressError::HostNotAllowed(host.into())), "{url}");
        }
        assert_eq!(
            check_url(&policy, "https://8.8.8.8/x"),
            Err(EgressError::IpLiteral(ip("8.8.8.8"))),
            "a literal skips no allow-list"
        );
        // A local name passes only when a pattern names it.
        let internal = EgressPolicy::new(Vec::new(), vec!["*.corp.internal".parse().unwrap()]);
        assert_eq!(check_url(&internal, "https://push.corp.internal/x"), Ok(()));
        assert_eq!(
            check_url(&internal, "https://metadata.google.internal/x"),
            Err(EgressError::ReservedName("metadata.google.internal".into()))
        );
    }

    #[test]
    fn host_patterns_parse_and_refuse_what_is_not_one() {
        assert_eq!("Push.Example.COM.".parse::<HostPattern>().unwrap().to_string(), "push.example.com");
        assert_eq!("*.GoogleAPIs.com".parse::<HostPattern>().unwrap().to_string(), "*.googleapis.com");
        assert_eq!("bücher.example".parse::<HostPattern>().unwrap().to_string(), "xn--bcher-kva.example");
        assert_eq!("".parse::<HostPattern>(), Err(HostPatternError::Empty));
        assert_eq!("10.0.0.1".parse::<HostPattern>(), Err(HostPatternError::IpAddress("10.0.0.1".into())));
        assert_eq!("[::1]".parse::<HostPattern>(), Err(HostPatternError::IpAddress("[::1]".into())));
        assert_eq!("a.*.com".parse::<HostPattern>(), Err(HostPatternError::Wildcard("a.*.com".into())));
        assert_eq!("*".parse::<HostPattern>(), Err(HostPatternError::Wildcard("*".into())));
        assert!(matches!("a..b".parse::<HostPattern>(), Err(HostPatternError::NotAHost(..))));
        assert!(matches!("a b.com".parse::<HostPattern>(), Err(HostPatternError::NotAHost(..))));
    }

    #[test]
    fn errors_name_the_host_only() {
        let error = check_url(&EgressPolicy::default(), "https://10.0.0.5/secret-token").unwrap_err();
        assert_eq!(error.to_string(), "address 10.0.0.5 is private, which is not allowed");
        let error =
            check_url(&EgressPolicy::default(), "https://metadata.google.internal/secret").unwrap_err();
        assert!(!error.to_string().contains("secret"), "{error}");
    }
}
