//! The SSRF policy: which IP addresses a repeater may never reach.
//!
//! A repeater's URL comes from a tenant, so without this guard a tenant could
//! make the daemon call the metadata service, the database or anything else on
//! the daemon's own network. The policy is judged on the addresses a
//! connection is actually made to (after DNS resolution, see `connector`), so
//! a name that resolves to a private address — or that changes its answer
//! between two lookups — is refused just like an IP literal.
//!
//! [`is_forbidden`] is pure: it names the special-purpose range an address
//! falls in. [`SsrfPolicy`] adds the operator's allow-list on top.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// The refusal of one destination address by the SSRF policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("destination {addr} of host {host:?} is refused: {range}, not in security.allow_private")]
pub struct Refused {
    /// The host as written in the URL.
    pub host: String,
    /// The address that was refused.
    pub addr: IpAddr,
    /// The special-purpose range the address belongs to.
    pub range: &'static str,
}

/// The SSRF policy: every special-purpose range is refused unless the
/// operator's allow-list contains the address.
#[derive(Debug, Clone, Default)]
pub struct SsrfPolicy {
    allow: Vec<IpNet>,
}

impl SsrfPolicy {
    /// A policy that refuses every special-purpose range except those in `allow`.
    pub fn new(allow: Vec<IpNet>) -> SsrfPolicy {
        SsrfPolicy { allow }
    }

    /// Why `addr` (reached for `host`) may not be contacted, or `None` when it may.
    pub fn check(&self, host: &str, addr: IpAddr) -> Result<(), Refused> {
        let Some(range) = is_forbidden(addr) else {
            return Ok(());
        };
        if self.is_allowed(addr) {
            return Ok(());
        }
        Err(Refused {
            host: host.to_owned(),
            addr,
            range,
        })
    }

    /// True when the allow-list contains the address. An IPv4-mapped IPv6
    /// address is also matched by its IPv4 form, since that is where a
    /// dual-stack socket actually connects.
    fn is_allowed(&self, addr: IpAddr) -> bool {
        let canonical = addr.to_canonical();
        self.allow
            .iter()
            .any(|net| net.contains(&addr) || net.contains(&canonical))
    }
}

/// Defines the IPv4 special-purpose table once and derives the names used when
/// such an address is found embedded in an IPv6 one, so every name stays a
/// `&'static str`.
macro_rules! ipv4_ranges {
    ($( [$a:literal, $b:literal, $c:literal, $d:literal, $len:literal, $name:literal] ),* $(,)?) => {
        /// (network, prefix length) of each special-purpose IPv4 range, most specific first.
        const V4_NETS: &[(u32, u32)] = &[$((u32::from_be_bytes([$a, $b, $c, $d]), $len)),*];
        const V4_NAMES: &[&str] = &[$(concat!($name, " ", $a, ".", $b, ".", $c, ".", $d, "/", $len)),*];
        const V4_MAPPED_NAMES: &[&str] = &[$(concat!($name, " ", $a, ".", $b, ".", $c, ".", $d, "/", $len, " inside IPv4-mapped ::ffff:0:0/96")),*];
        const V4_TRANSLATED_NAMES: &[&str] = &[$(concat!($name, " ", $a, ".", $b, ".", $c, ".", $d, "/", $len, " inside IPv4-translated ::ffff:0:0:0/96")),*];
        const V4_COMPAT_NAMES: &[&str] = &[$(concat!($name, " ", $a, ".", $b, ".", $c, ".", $d, "/", $len, " inside IPv4-compatible ::/96")),*];
        const V4_NAT64_NAMES: &[&str] = &[$(concat!($name, " ", $a, ".", $b, ".", $c, ".", $d, "/", $len, " inside NAT64 64:ff9b::/96")),*];
        const V4_6TO4_NAMES: &[&str] = &[$(concat!($name, " ", $a, ".", $b, ".", $c, ".", $d, "/", $len, " inside 6to4 2002::/16")),*];
    };
}

ipv4_ranges![
    [255, 255, 255, 255, 32, "limited broadcast"],
    [0, 0, 0, 0, 32, "unspecified"],
    [0, 0, 0, 0, 8, "\"this network\""],
    [10, 0, 0, 0, 8, "private"],
    [100, 64, 0, 0, 10, "shared address space (CGNAT)"],
    [127, 0, 0, 0, 8, "loopback"],
    [169, 254, 0, 0, 16, "link-local"],
    [172, 16, 0, 0, 12, "private"],
    [192, 0, 0, 0, 24, "IETF protocol assignments"],
    [192, 0, 2, 0, 24, "documentation (TEST-NET-1)"],
    [192, 31, 196, 0, 24, "AS112-v4"],
    [192, 52, 193, 0, 24, "AMT"],
    [192, 88, 99, 0, 24, "6to4 relay anycast"],
    [192, 168, 0, 0, 16, "private"],
    [192, 175, 48, 0, 24, "direct delegation AS112"],
    [198, 18, 0, 0, 15, "benchmarking"],
    [198, 51, 100, 0, 24, "documentation (TEST-NET-2)"],
    [203, 0, 113, 0, 24, "documentation (TEST-NET-3)"],
    [224, 0, 0, 0, 4, "multicast"],
    [240, 0, 0, 0, 4, "reserved"],
];

/// How an IPv4 address was found inside an IPv6 one.
#[derive(Clone, Copy)]
enum Embedding {
    Mapped,
    Translated,
    Compatible,
    Nat64,
    SixToFour,
}

/// Names the special-purpose range `ip` belongs to, or `None` for an ordinary
/// globally reachable unicast address. IPv6 addresses that carry an IPv4
/// address (IPv4-mapped, IPv4-compatible, IPv4-translated, NAT64 well-known
/// prefix, 6to4) are judged by the IPv4 address they carry.
pub fn is_forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_range(v4).map(|index| V4_NAMES[index]),
        IpAddr::V6(v6) => v6_range(v6),
    }
}

fn v4_range(ip: Ipv4Addr) -> Option<usize> {
    let bits = u32::from(ip);
    V4_NETS.iter().position(|&(net, len)| {
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        bits & mask == net
    })
}

fn embedded_v4(ip: Ipv4Addr, how: Embedding) -> Option<&'static str> {
    let index = v4_range(ip)?;
    let names = match how {
        Embedding::Mapped => V4_MAPPED_NAMES,
        Embedding::Translated => V4_TRANSLATED_NAMES,
        Embedding::Compatible => V4_COMPAT_NAMES,
        Embedding::Nat64 => V4_NAT64_NAMES,
        Embedding::SixToFour => V4_6TO4_NAMES,
    };
    Some(names[index])
}

/// True when the top `len` bits of `ip` equal those of `net`.
fn v6_in(ip: u128, net: u128, len: u32) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    ip & mask == net
}

fn v6_range(ip: Ipv6Addr) -> Option<&'static str> {
    let bits = u128::from(ip);
    let low_v4 = Ipv4Addr::from(bits as u32);
    if bits == 0 {
        return Some("unspecified ::/128");
    }
    if bits == 1 {
        return Some("loopback ::1/128");
    }
    if v6_in(bits, 0xffff_0000_0000, 96) {
        return embedded_v4(low_v4, Embedding::Mapped);
    }
    if v6_in(bits, 0xffff_0000_0000_0000, 96) {
        return embedded_v4(low_v4, Embedding::Translated);
    }
    if v6_in(bits, 0, 96) {
        // Deprecated IPv4-compatible form; `::` and `::1` were handled above.
        return embedded_v4(low_v4, Embedding::Compatible);
    }
    if v6_in(bits, 0x0064_ff9b << 96, 96) {
        return embedded_v4(low_v4, Embedding::Nat64);
    }
    if v6_in(bits, 0x2002 << 112, 16) {
        let carried = Ipv4Addr::from((bits >> 80) as u32);
        return embedded_v4(carried, Embedding::SixToFour);
    }
    // Ranges that are never a valid public destination, most specific first.
    const V6_NETS: &[(u128, u32, &str)] = &[
        (0x0064_ff9b_0001 << 80, 48, "local-use NAT64 64:ff9b:1::/48"),
        (0x0100 << 112, 64, "discard-only 100::/64"),
        (0x2001_0002 << 96, 48, "benchmarking 2001:2::/48"),
        (0x2001_0010 << 96, 28, "ORCHID 2001:10::/28"),
        (0x2001_0020 << 96, 28, "ORCHIDv2 2001:20::/28"),
        (0x2001 << 112, 32, "Teredo 2001::/32"),
        (0x2001_0db8 << 96, 32, "documentation 2001:db8::/32"),
        (0x3fff << 112, 20, "documentation 3fff::/20"),
        (0x5f00 << 112, 16, "SRv6 SIDs 5f00::/16"),
        (0xfc00 << 112, 7, "unique local fc00::/7"),
        (0xfe80 << 112, 10, "link-local fe80::/10"),
        (0xfec0 << 112, 10, "site-local fec0::/10"),
        (0xff00 << 112, 8, "multicast ff00::/8"),
    ];
    if let Some(&(_, _, name)) = V6_NETS.iter().find(|&&(net, len, _)| v6_in(bits, net, len)) {
        return Some(name);
    }
    // Everything outside global unicast 2000::/3 is reserved or unassigned.
    if !v6_in(bits, 0x2000 << 112, 3) {
        return Some("reserved (outside global unicast 2000::/3)");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forbidden(text: &str) -> Option<&'static str> {
        is_forbidden(text.parse().expect("test address parses"))
    }

    fn assert_range(text: &str, expected: &str) {
        let got = forbidden(text).unwrap_or_else(|| panic!("{text} should be forbidden"));
        assert!(
            got.contains(expected),
            "{text}: range {got:?} should mention {expected:?}"
        );
    }

    #[test]
    fn public_ipv4_addresses_are_allowed() {
        for ok in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.0",
            "192.0.3.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
        ] {
            assert_eq!(forbidden(ok), None, "{ok} should be allowed");
        }
    }

    #[test]
    fn special_ipv4_ranges_are_refused_with_their_names() {
        let cases = [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "this network"),
            ("10.0.0.1", "private 10.0.0.0/8"),
            ("10.255.255.255", "private"),
            ("100.64.0.1", "CGNAT"),
            ("100.127.255.255", "CGNAT"),
            ("127.0.0.1", "loopback 127.0.0.0/8"),
            ("127.255.255.254", "loopback"),
            ("169.254.169.254", "link-local 169.254.0.0/16"),
            ("172.16.0.1", "private 172.16.0.0/12"),
            ("172.31.255.255", "private"),
            ("192.0.0.8", "IETF protocol assignments"),
            ("192.0.2.55", "TEST-NET-1"),
            ("192.88.99.1", "6to4 relay"),
            ("192.168.1.1", "private 192.168.0.0/16"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("198.51.100.7", "TEST-NET-2"),
            ("203.0.113.9", "TEST-NET-3"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved 240.0.0.0/4"),
            ("255.255.255.255", "limited broadcast"),
        ];
        for (addr, range) in cases {
            assert_range(addr, range);
        }
    }

    #[test]
    fn public_ipv6_addresses_are_allowed() {
        for ok in [
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "2a00:1450:4001:80b::200e",
            "2001:1::1",
            "2001:200::1",
            "2003::1",
            // NAT64 and 6to4 carrying a public IPv4 address are public.
            "64:ff9b::808:808",
            "2002:0808:0808::1",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(forbidden(ok), None, "{ok} should be allowed");
        }
    }

    #[test]
    fn special_ipv6_ranges_are_refused_with_their_names() {
        let cases = [
            ("::", "unspecified"),
            ("::1", "loopback ::1"),
            ("fc00::1", "unique local"),
            ("fdff:ffff::1", "unique local"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("ff0e::1", "multicast"),
            ("100::1", "discard-only"),
            ("64:ff9b:1::1", "local-use NAT64"),
            ("2001::1", "Teredo"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
            ("2001:2::1", "benchmarking"),
            ("2001:10::1", "ORCHID"),
            ("2001:20::1", "ORCHIDv2"),
            ("2001:db8::1", "documentation 2001:db8"),
            ("3fff::1", "documentation 3fff"),
            ("5f00::1", "SRv6"),
            ("4000::1", "outside global unicast"),
            ("1::1", "outside global unicast"),
        ];
        for (addr, range) in cases {
            assert_range(addr, range);
        }
    }

    #[test]
    fn ipv6_forms_that_carry_ipv4_are_judged_by_the_ipv4_address() {
        let cases = [
            (
                "::ffff:127.0.0.1",
                "loopback 127.0.0.0/8 inside IPv4-mapped",
            ),
            ("::ffff:10.1.2.3", "private 10.0.0.0/8 inside IPv4-mapped"),
            ("::ffff:169.254.169.254", "link-local"),
            (
                "::ffff:0:192.168.0.1",
                "private 192.168.0.0/16 inside IPv4-translated",
            ),
            ("::127.0.0.1", "loopback 127.0.0.0/8 inside IPv4-compatible"),
            ("::10.0.0.1", "private 10.0.0.0/8 inside IPv4-compatible"),
            ("64:ff9b::7f00:1", "loopback 127.0.0.0/8 inside NAT64"),
            (
                "64:ff9b::a9fe:a9fe",
                "link-local 169.254.0.0/16 inside NAT64",
            ),
            ("2002:7f00:0001::1", "loopback 127.0.0.0/8 inside 6to4"),
            ("2002:c0a8:0101::", "private 192.168.0.0/16 inside 6to4"),
            ("2002:a00:1::", "private 10.0.0.0/8 inside 6to4"),
        ];
        for (addr, range) in cases {
            assert_range(addr, range);
        }
    }

    #[test]
    fn the_allow_list_admits_only_the_addresses_it_contains() {
        let policy = SsrfPolicy::new(vec!["127.0.0.1/32".parse().unwrap()]);
        assert!(
            policy
                .check("localhost", "127.0.0.1".parse().unwrap())
                .is_ok()
        );
        assert!(
            policy
                .check("x", "::ffff:127.0.0.1".parse().unwrap())
                .is_ok()
        );
        let refused = policy
            .check("localhost", "127.0.0.2".parse().unwrap())
            .unwrap_err();
        assert_eq!(refused.range, "loopback 127.0.0.0/8");
        let message = refused.to_string();
        assert!(
            message.contains("127.0.0.2") && message.contains("localhost"),
            "{message}"
        );
        assert!(policy.check("x", "::1".parse().unwrap()).is_err());
        // Public addresses need no allow-list entry.
        assert!(
            SsrfPolicy::default()
                .check("x", "1.1.1.1".parse().unwrap())
                .is_ok()
        );
    }

    #[test]
    fn every_ipv4_table_entry_is_a_canonical_network() {
        for &(net, len) in V4_NETS {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            assert_eq!(net & mask, net, "{} has host bits set", Ipv4Addr::from(net));
        }
    }
}
