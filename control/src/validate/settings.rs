//! The daemon-wide settings: learning parameters (`[l2]`), the DHCP server's rate
//! limits (`[dhcp]`) and the metadata proxy (`[metadata]`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use pollux_dataplane::ratelimit::BucketConfig;
use pollux_dataplane::snapshot::L2Config;

use super::Checker;
use crate::model;

/// Checked rate limits of the DHCP server (`[dhcp]`): rates 0..=1,000,000 per second,
/// bursts 1..=1,000,000.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DhcpLimits {
    /// Messages one port may send to its network's DHCP server (`port_rate`,
    /// `port_burst`).
    pub port: BucketConfig,
    /// Messages per client MAC (`client_rate`, `client_burst`): the server's per-client
    /// limit.
    pub client: BucketConfig,
    /// Messages one network's server handles in all (`network_rate`, `network_burst`):
    /// the server's global limit.
    pub network: BucketConfig,
    /// Dynamic leases the clients behind one port may hold (`leases_per_port`).
    pub leases_per_port: u32,
}

/// The checked metadata proxy settings (`[metadata]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataSettings {
    /// The metadata server (`nova_metadata_host`, `nova_metadata_port`).
    pub upstream: SocketAddr,
    /// `metadata_proxy_shared_secret`.
    pub secret: String,
    /// The proxy's bounds.
    pub limits: pollux_services::metadata::Limits,
    /// Segments one port may send to the proxy (`port_rate`, `port_burst`).
    pub port: BucketConfig,
}

/// Largest DHCP rate (per second) and burst of `[dhcp]`.
pub const MAX_DHCP_LIMIT: i64 = 1_000_000;

impl Checker {
    pub(super) fn l2(&mut self, l2: &model::L2) -> L2Config {
        let mut out = L2Config::default();
        match u32::try_from(l2.mac_aging_secs) {
            Ok(v) if v >= 1 => out.mac_aging_secs = v,
            _ => self.err(
                "l2.mac_aging_secs",
                format!("{} is outside 1..={}", l2.mac_aging_secs, u32::MAX),
            ),
        }
        match u32::try_from(l2.mac_limit_per_network) {
            Ok(v) if v >= 1 => out.mac_limit_per_network = v,
            _ => self.err(
                "l2.mac_limit_per_network",
                format!("{} is outside 1..={}", l2.mac_limit_per_network, u32::MAX),
            ),
        }
        match u32::try_from(l2.mac_limit_per_port) {
            Ok(v) if v >= 1 => out.mac_limit_per_port = v,
            _ => self.err(
                "l2.mac_limit_per_port",
                format!("{} is outside 1..={}", l2.mac_limit_per_port, u32::MAX),
            ),
        }
        out
    }

    pub(super) fn dhcp_limits(&mut self, d: &model::DhcpLimits) -> DhcpLimits {
        let leases_per_port = match u32::try_from(d.leases_per_port) {
            Ok(v) if (1..=65_535).contains(&v) => v,
            _ => {
                self.err(
                    "dhcp.leases_per_port",
                    format!("{} is outside 1..=65535 (leases)", d.leases_per_port),
                );
                default_dhcp_leases()
            }
        };
        let mut bucket = |name: &str, rate: i64, burst: i64, default: BucketConfig| {
            let mut out = default;
            match u32::try_from(rate) {
                Ok(v) if i64::from(v) <= MAX_DHCP_LIMIT => out.rate_per_sec = v,
                _ => self.err(
                    format!("dhcp.{name}_rate"),
                    format!("{rate} is outside 0..={MAX_DHCP_LIMIT} (messages per second)"),
                ),
            }
            match u32::try_from(burst) {
                Ok(v) if v >= 1 && i64::from(v) <= MAX_DHCP_LIMIT => out.burst = v,
                _ => self.err(
                    format!("dhcp.{name}_burst"),
                    format!("{burst} is outside 1..={MAX_DHCP_LIMIT} (messages)"),
                ),
            }
            out
        };
        let defaults = model::DhcpLimits::default();
        let default_of = |rate: i64, burst: i64| BucketConfig {
            rate_per_sec: rate as u32,
            burst: burst as u32,
        };
        DhcpLimits {
            port: bucket(
                "port",
                d.port_rate,
                d.port_burst,
                default_of(defaults.port_rate, defaults.port_burst),
            ),
            client: bucket(
                "client",
                d.client_rate,
                d.client_burst,
                default_of(defaults.client_rate, defaults.client_burst),
            ),
            network: bucket(
                "network",
                d.network_rate,
                d.network_burst,
                default_of(defaults.network_rate, defaults.network_burst),
            ),
            leases_per_port,
        }
    }
}

impl Checker {
    pub(super) fn metadata(&mut self, m: Option<&model::Metadata>) -> Option<MetadataSettings> {
        let m = m?;
        let before = self.errors.len();
        let host = match m.nova_metadata_host.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.err(
                    "metadata.nova_metadata_host",
                    format!(
                        "not supported: {:?} is not an IP address (host names are not resolved)",
                        m.nova_metadata_host
                    ),
                );
                None
            }
        };
        let port = match u16::try_from(m.nova_metadata_port) {
            Ok(p) if p >= 1 => p,
            _ => {
                self.err(
                    "metadata.nova_metadata_port",
                    format!("{} is outside 1..=65535", m.nova_metadata_port),
                );
                0
            }
        };
        match m.nova_metadata_protocol.as_str() {
            "http" => {}
            "https" => self.err(
                "metadata.nova_metadata_protocol",
                "not supported: https to the metadata server is not built yet",
            ),
            other => self.err(
                "metadata.nova_metadata_protocol",
                format!("{other:?} is neither \"http\" nor \"https\""),
            ),
        }
        let mut count = |name: &str, v: i64, max: i64| -> usize {
            if (1..=max).contains(&v) {
                v as usize
            } else {
                self.err(
                    format!("metadata.{name}"),
                    format!("{v} is outside 1..={max}"),
                );
                1
            }
        };
        let max_connections = count("max_connections", m.max_connections, 65_536);
        let max_connections_per_port = count(
            "max_connections_per_port",
            m.max_connections_per_port,
            65_536,
        );
        let max_request_bytes = count("max_request_bytes", m.max_request_bytes, 1 << 20);
        let max_response_bytes = count("max_response_bytes", m.max_response_bytes, 1 << 30);
        let client_timeout_ms = count("client_timeout_ms", m.client_timeout_ms, 3_600_000);
        let connect_timeout_ms = count("connect_timeout_ms", m.connect_timeout_ms, 3_600_000);
        let response_timeout_ms = count("response_timeout_ms", m.response_timeout_ms, 3_600_000);
        let port_burst = count("port_burst", m.port_burst, MAX_DHCP_LIMIT);
        let port_rate = match u32::try_from(m.port_rate) {
            Ok(v) if i64::from(v) <= MAX_DHCP_LIMIT => v,
            _ => {
                self.err(
                    "metadata.port_rate",
                    format!(
                        "{} is outside 0..={MAX_DHCP_LIMIT} (segments per second)",
                        m.port_rate
                    ),
                );
                0
            }
        };
        if !self.clean(before) {
            return None;
        }
        let ms = |v: usize| Duration::from_millis(v as u64);
        Some(MetadataSettings {
            upstream: SocketAddr::new(host?, port),
            secret: m.metadata_proxy_shared_secret.clone(),
            limits: pollux_services::metadata::Limits {
                max_connections,
                max_connections_per_port,
                max_request_bytes,
                max_response_bytes,
                client_timeout: ms(client_timeout_ms),
                connect_timeout: ms(connect_timeout_ms),
                response_timeout: ms(response_timeout_ms),
            },
            port: BucketConfig {
                rate_per_sec: port_rate,
                burst: port_burst as u32,
            },
        })
    }
}

fn default_dhcp_leases() -> u32 {
    model::DhcpLimits::default().leases_per_port as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::fixtures::*;
    use crate::validate::validate;
    use std::net::Ipv4Addr;

    #[test]
    fn dhcp_defaults() {
        let v = validate(&base()).unwrap();
        let s = &v.subnets[0];
        assert_eq!(s.dhcp_server_ip, Some(Ipv4Addr::new(198, 18, 1, 254)));
        assert_eq!(s.lease_time, 86_400);
        assert!(!s.serve_unknown);
        assert_eq!(v.networks[0].dns_domain, None);
        assert_eq!(v.ports[0].hostname, None);
        assert!(v.ports[0].extra_dhcp_opts.is_empty());
        assert_eq!(
            v.dhcp,
            DhcpLimits {
                port: BucketConfig {
                    rate_per_sec: 100,
                    burst: 200
                },
                client: BucketConfig {
                    rate_per_sec: 5,
                    burst: 20
                },
                network: BucketConfig {
                    rate_per_sec: 5000,
                    burst: 1000
                },
                leases_per_port: 16,
            }
        );
        // Without DHCP there is no server address.
        let mut state = base();
        state.subnets[0].enable_dhcp = false;
        assert_eq!(validate(&state).unwrap().subnets[0].dhcp_server_ip, None);
        // A /30's last host address.
        state.subnets[0].enable_dhcp = true;
        state.subnets[0].cidr = "198.18.1.8/30".into();
        state.subnets[0].gateway_ip = Some("198.18.1.9".into());
        state.ports[0].fixed_ips.clear();
        state.floating_ips[0].port_id = None;
        let v = validate(&state).unwrap();
        assert_eq!(
            v.subnets[0].dhcp_server_ip,
            Some(Ipv4Addr::new(198, 18, 1, 10))
        );
    }

    #[test]
    fn dhcp_settings_are_read() {
        let mut state = base();
        state.dhcp.port_rate = 0;
        state.dhcp.port_burst = 1;
        state.dhcp.network_rate = 1_000_000;
        state.dhcp.leases_per_port = 2;
        state.subnets[0].dhcp_server_ip = Some("198.18.1.2".into());
        state.subnets[0].dhcp_lease_duration = Some(-1);
        state.subnets[0].dhcp_serve_unknown = true;
        state.subnets[1].dhcp_lease_duration = Some(60);
        state.networks[0].dns_domain = Some("Example.org.".into());
        state.networks[1].dns_domain = Some(String::new());
        state.ports[0].dns_name = Some("vm-1.example.org".into());
        let v = validate(&state).unwrap();
        assert_eq!(
            v.dhcp.port,
            BucketConfig {
                rate_per_sec: 0,
                burst: 1
            }
        );
        assert_eq!(v.dhcp.network.rate_per_sec, 1_000_000);
        assert_eq!(v.dhcp.leases_per_port, 2);
        assert_eq!(
            v.subnets[0].dhcp_server_ip,
            Some(Ipv4Addr::new(198, 18, 1, 2))
        );
        assert_eq!(v.subnets[0].lease_time, u32::MAX);
        assert!(v.subnets[0].serve_unknown);
        assert_eq!(v.subnets[1].lease_time, 60);
        assert_eq!(v.networks[0].dns_domain.as_deref(), Some("Example.org"));
        assert_eq!(v.networks[1].dns_domain, None);
        assert_eq!(v.ports[0].hostname.as_deref(), Some("vm-1.example.org"));
        // A server address given with DHCP off is checked, then not used.
        state.subnets[0].enable_dhcp = false;
        assert_eq!(validate(&state).unwrap().subnets[0].dhcp_server_ip, None);
        state.subnets[0].dhcp_server_ip = Some("198.18.2.2".into());
        assert_errors(
            &state,
            &["subnets[0].dhcp_server_ip: 198.18.2.2 is not inside the subnet's cidr 198.18.1.0/24"],
        );
    }

    #[test]
    fn dhcp_limits_are_bounded() {
        let mut state = base();
        state.dhcp.port_rate = -1;
        state.dhcp.port_burst = 0;
        state.dhcp.client_rate = 1_000_001;
        state.dhcp.client_burst = 1_000_001;
        state.dhcp.network_rate = i64::MAX;
        state.dhcp.network_burst = -5;
        state.dhcp.leases_per_port = 0;
        assert_errors(
            &state,
            &[
                "dhcp.leases_per_port: 0 is outside 1..=65535 (leases)",
                "dhcp.port_rate: -1 is outside 0..=1000000 (messages per second)",
                "dhcp.port_burst: 0 is outside 1..=1000000 (messages)",
                "dhcp.client_rate: 1000001 is outside 0..=1000000 (messages per second)",
                "dhcp.client_burst: 1000001 is outside 1..=1000000 (messages)",
                "dhcp.network_rate: 9223372036854775807 is outside 0..=1000000 (messages per second)",
                "dhcp.network_burst: -5 is outside 1..=1000000 (messages)",
            ],
        );
    }

    fn with_metadata(edit: impl Fn(&mut model::Metadata)) -> model::DesiredState {
        let mut state = base();
        let mut m: model::Metadata =
            serde_json::from_value(serde_json::json!({"nova_metadata_host": "198.19.250.2"}))
                .unwrap();
        edit(&mut m);
        state.metadata = Some(m);
        state
    }

    #[test]
    fn metadata_is_off_without_its_section_and_has_defaults() {
        assert_eq!(validate(&base()).unwrap().metadata, None);
        let m = validate(&with_metadata(|_| {})).unwrap().metadata.unwrap();
        assert_eq!(m.upstream, "198.19.250.2:8775".parse().unwrap());
        assert_eq!(m.secret, "");
        assert_eq!(m.limits, pollux_services::metadata::Limits::default());
        assert_eq!(
            m.port,
            BucketConfig {
                rate_per_sec: 1000,
                burst: 2000
            }
        );
        let m = validate(&with_metadata(|m| {
            m.nova_metadata_host = "2001:db8::1".into();
            m.nova_metadata_port = 80;
            m.response_timeout_ms = 1500;
        }))
        .unwrap()
        .metadata
        .unwrap();
        assert_eq!(m.upstream, "[2001:db8::1]:80".parse().unwrap());
        assert_eq!(m.limits.response_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn metadata_refuses_what_it_does_not_enforce() {
        assert_errors(
            &with_metadata(|m| {
                m.nova_metadata_protocol = "https".into();
                m.nova_metadata_host = "nova.example".into();
            }),
            &[
                "metadata.nova_metadata_host: not supported: \"nova.example\" is not an IP address (host names are not resolved)",
                "metadata.nova_metadata_protocol: not supported: https to the metadata server is not built yet",
            ],
        );
        assert_errors(
            &with_metadata(|m| {
                m.nova_metadata_port = 0;
                m.max_connections = 0;
                m.client_timeout_ms = -1;
                m.port_rate = -1;
                m.nova_metadata_protocol = "ftp".into();
            }),
            &[
                "metadata.nova_metadata_port: 0 is outside 1..=65535",
                "metadata.nova_metadata_protocol: \"ftp\" is neither \"http\" nor \"https\"",
                "metadata.max_connections: 0 is outside 1..=65536",
                "metadata.client_timeout_ms: -1 is outside 1..=3600000",
                "metadata.port_rate: -1 is outside 0..=1000000 (segments per second)",
            ],
        );
    }

    #[test]
    fn ids_written_into_headers_cannot_end_a_line() {
        let mut state = base();
        state.ports[0].device_id = Some("inst\r\nX-Instance-ID: other".into());
        state.ports[0].project_id = Some("project-1".into());
        assert_errors(
            &state,
            &["ports[0].device_id: \"inst\\r\\nX-Instance-ID: other\" is not an id of at most 255 visible ASCII characters"],
        );
        state.ports[0].device_id = Some("4f1c9a2e-0b7d-4c5e-9f00-1a2b3c4d5e6f".into());
        let v = validate(&state).unwrap();
        assert_eq!(v.ports[0].device_id, "4f1c9a2e-0b7d-4c5e-9f00-1a2b3c4d5e6f");
        assert_eq!(v.ports[0].project_id, "project-1");
    }
}
