//! QoS policies (Neutron's): bandwidth limits per direction and DSCP marking, and which
//! policy each port has.
//!
//! As in Neutron, a port's own `qos_policy_id` wins over its network's, and a network's
//! policy applies to the network's VM ports only: Neutron leaves out the ports it owns
//! itself (`device_owner` `network:*`: router interfaces, DHCP), which in Pollux are not
//! ports of the desired state but the built-in router and DHCP server, so every port of
//! the document is a VM port and none of the built-in ones is policed.

use std::collections::HashMap;

use super::{Checked, Checker, Network, Port};
use crate::model;

/// The DSCP marks Neutron accepts (`neutron_lib.services.qos.constants.VALID_DSCP_MARKS`):
/// the class selectors, assured forwarding classes and expedited forwarding.
pub const VALID_DSCP_MARKS: [u8; 21] = [
    0, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 40, 46, 48, 56,
];

/// The largest `max_kbps` and `max_burst_kbps`: Neutron's (a signed 32-bit database
/// integer).
pub const MAX_KBPS: i64 = i32::MAX as i64;

/// The share of `max_kbps` that an absent or zero `max_burst_kbps` stands for, in percent:
/// Neutron's OVS and Linux bridge drivers' default (80%).
pub const DEFAULT_BURST_PERCENT: u64 = 80;

/// A checked bandwidth limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BandwidthLimit {
    /// Average rate, kbit/s, 1..=[`MAX_KBPS`].
    pub max_kbps: u32,
    /// Burst, kbit, with the default applied.
    pub burst_kbit: u32,
}

/// A checked QoS policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QosPolicy {
    /// Unique id.
    pub id: String,
    /// Name.
    pub name: Option<String>,
    /// Limit on what the VM sends.
    pub egress: Option<BandwidthLimit>,
    /// Limit on what the VM receives.
    pub ingress: Option<BandwidthLimit>,
    /// DSCP written into what the VM sends, one of [`VALID_DSCP_MARKS`].
    pub dscp_mark: Option<u8>,
}

/// Rule types of Neutron that Pollux does not enforce: refused as not supported.
const UNSUPPORTED_TYPES: [&str; 3] = [
    "minimum_bandwidth",
    "minimum_packet_rate",
    "packet_rate_limit",
];

impl Checker {
    pub(super) fn qos_policies(&mut self, policies: &[model::QosPolicy]) -> Checked<QosPolicy> {
        let mut out = Checked::default();
        for (i, p) in policies.iter().enumerate() {
            let base = format!("qos_policies[{i}]");
            let before = self.errors.len();
            if p.id.is_empty() {
                self.err(format!("{base}.id"), "a QoS policy needs a non-empty id");
            } else if let Some(&first) = out.by_id.get(&p.id) {
                self.err(
                    format!("{base}.id"),
                    format!(
                        "QoS policy id {} is already used by qos_policies[{first}]",
                        p.id
                    ),
                );
            } else {
                out.by_id.insert(p.id.clone(), i);
            }
            let mut policy = QosPolicy {
                id: p.id.clone(),
                name: p.name.clone(),
                egress: None,
                ingress: None,
                dscp_mark: None,
            };
            // Where each unique rule was first given, for the message about a second one.
            let mut seen: HashMap<&'static str, usize> = HashMap::new();
            for (k, r) in p.rules.iter().enumerate() {
                let rp = format!("{base}.rules[{k}]");
                let kind: &'static str = match r.rule_type.as_str() {
                    "bandwidth_limit" => {
                        self.only_fields(&rp, r, &["max_kbps", "max_burst_kbps", "direction"]);
                        let dir = match r.direction.as_deref() {
                            None | Some("egress") => "egress",
                            Some("ingress") => "ingress",
                            Some(d) => {
                                self.err(
                                    format!("{rp}.direction"),
                                    format!("{d:?} is not a direction (egress or ingress)"),
                                );
                                continue;
                            }
                        };
                        if let Some(limit) = self.bandwidth_limit(&rp, r) {
                            match dir {
                                "egress" => policy.egress = Some(limit),
                                _ => policy.ingress = Some(limit),
                            }
                        }
                        if dir == "egress" {
                            "an egress bandwidth_limit"
                        } else {
                            "an ingress bandwidth_limit"
                        }
                    }
                    "dscp_marking" => {
                        self.only_fields(&rp, r, &["dscp_mark"]);
                        match r.dscp_mark {
                            None => self.err(
                                format!("{rp}.dscp_mark"),
                                "a dscp_marking rule needs a dscp_mark",
                            ),
                            Some(m) => match u8::try_from(m)
                                .ok()
                                .filter(|m| VALID_DSCP_MARKS.contains(m))
                            {
                                Some(m) => policy.dscp_mark = Some(m),
                                None => self.err(
                                    format!("{rp}.dscp_mark"),
                                    format!(
                                        "{m} is not a valid DSCP mark (Neutron's: {})",
                                        VALID_DSCP_MARKS.map(|m| m.to_string()).join(", ")
                                    ),
                                ),
                            },
                        }
                        "a dscp_marking"
                    }
                    t if UNSUPPORTED_TYPES.contains(&t) => {
                        self.err(
                            format!("{rp}.type"),
                            format!(
                                "not supported: {t} rules are not enforced (bandwidth_limit \
                                 and dscp_marking are)"
                            ),
                        );
                        continue;
                    }
                    t => {
                        self.err(
                            format!("{rp}.type"),
                            format!(
                                "{t:?} is not a QoS rule type (bandwidth_limit or dscp_marking)"
                            ),
                        );
                        continue;
                    }
                };
                if let Some(first) = seen.insert(kind, k) {
                    seen.insert(kind, first);
                    self.err(
                        rp,
                        format!(
                            "the policy already has {kind} rule (rules[{first}]); a policy \
                             has one"
                        ),
                    );
                }
            }
            out.items.push(policy);
            out.ok.push(self.clean(before));
        }
        out
    }

    /// The rate and burst of a `bandwidth_limit` rule at `rp`.
    fn bandwidth_limit(&mut self, rp: &str, r: &model::QosRule) -> Option<BandwidthLimit> {
        let max_kbps = match r.max_kbps {
            None => {
                self.err(
                    format!("{rp}.max_kbps"),
                    "a bandwidth_limit rule needs a max_kbps",
                );
                None
            }
            Some(k) if (1..=MAX_KBPS).contains(&k) => Some(k as u32),
            Some(0) => {
                self.err(
                    format!("{rp}.max_kbps"),
                    "0 is no limit for Neutron's drivers, never enforced: leave the rule \
                     out instead",
                );
                None
            }
            Some(k) => {
                self.err(
                    format!("{rp}.max_kbps"),
                    format!("{k} is outside 1..={MAX_KBPS}"),
                );
                None
            }
        };
        let burst = match r.max_burst_kbps {
            None | Some(0) => None,
            Some(b) if (1..=MAX_KBPS).contains(&b) => Some(b as u32),
            Some(b) => {
                self.err(
                    format!("{rp}.max_burst_kbps"),
                    format!("{b} is outside 0..={MAX_KBPS} (0: 80% of max_kbps)"),
                );
                return None;
            }
        };
        let max_kbps = max_kbps?;
        Some(BandwidthLimit {
            max_kbps,
            burst_kbit: burst.unwrap_or_else(|| default_burst_kbit(max_kbps)),
        })
    }

    /// Refuses the fields of a rule that its type does not take.
    fn only_fields(&mut self, rp: &str, r: &model::QosRule, allowed: &[&str]) {
        let given = [
            ("max_kbps", r.max_kbps.is_some()),
            ("max_burst_kbps", r.max_burst_kbps.is_some()),
            ("direction", r.direction.is_some()),
            ("dscp_mark", r.dscp_mark.is_some()),
        ];
        for (field, present) in given {
            if present && !allowed.contains(&field) {
                self.err(
                    format!("{rp}.{field}"),
                    format!("a {} rule has no {field}", r.rule_type),
                );
            }
        }
    }

    /// Resolves the `qos_policy_id` of networks and ports, and gives each port the policy
    /// in force: its own, else its network's.
    pub(super) fn attach_qos(
        &mut self,
        state: &model::DesiredState,
        policies: &Checked<QosPolicy>,
        networks: &mut Checked<Network>,
        ports: &mut Checked<Port>,
    ) {
        for (i, n) in state.networks.iter().enumerate() {
            if let (Some(id), Some(net)) = (&n.qos_policy_id, networks.items.get_mut(i)) {
                net.qos_policy = self.reference(
                    &format!("networks[{i}].qos_policy_id"),
                    id,
                    "QoS policy",
                    policies,
                );
            }
        }
        for (i, p) in state.ports.iter().enumerate() {
            let own = p.qos_policy_id.as_ref().and_then(|id| {
                self.reference(
                    &format!("ports[{i}].qos_policy_id"),
                    id,
                    "QoS policy",
                    policies,
                )
            });
            if let Some(port) = ports.items.get_mut(i) {
                let inherited = networks.items.get(port.network).and_then(|n| n.qos_policy);
                port.qos_policy = own.or(inherited);
            }
        }
    }
}

/// The burst that an absent or zero `max_burst_kbps` stands for: 80% of `max_kbps`
/// (Neutron's OVS agent: `max_burst_kbps or int(max_kbps * 0.8)`), at least 1 kbit.
pub fn default_burst_kbit(max_kbps: u32) -> u32 {
    let b = u64::from(max_kbps) * DEFAULT_BURST_PERCENT / 100;
    b.max(1) as u32
}

#[cfg(test)]
mod tests {
    use crate::model::{QosPolicy, QosRule};
    use crate::validate::fixtures::*;
    use crate::validate::validate;
    use proptest::prelude::*;

    fn rule(ty: &str) -> QosRule {
        QosRule {
            id: None,
            rule_type: ty.to_owned(),
            max_kbps: None,
            max_burst_kbps: None,
            direction: None,
            dscp_mark: None,
        }
    }

    fn limit(kbps: i64, burst: Option<i64>, dir: Option<&str>) -> QosRule {
        QosRule {
            max_kbps: Some(kbps),
            max_burst_kbps: burst,
            direction: dir.map(str::to_owned),
            ..rule("bandwidth_limit")
        }
    }

    fn mark(m: i64) -> QosRule {
        QosRule {
            dscp_mark: Some(m),
            ..rule("dscp_marking")
        }
    }

    fn policy(id: &str, rules: Vec<QosRule>) -> QosPolicy {
        QosPolicy {
            id: id.to_owned(),
            name: None,
            rules,
        }
    }

    #[test]
    fn limits_default_their_burst_and_port_wins_over_network() {
        let mut state = base();
        state.qos_policies = vec![
            policy(
                "net-limit",
                vec![
                    limit(10_000, None, None),
                    limit(2000, Some(500), Some("ingress")),
                ],
            ),
            policy("port-mark", vec![mark(46)]),
        ];
        state.networks[0].qos_policy_id = Some("net-limit".into());
        let v = validate(&state).unwrap();
        let p = &v.qos_policies[0];
        assert_eq!(p.egress.unwrap().max_kbps, 10_000);
        assert_eq!(p.egress.unwrap().burst_kbit, 8000);
        assert_eq!(p.ingress.unwrap().burst_kbit, 500);
        assert_eq!(v.networks[0].qos_policy, Some(0));
        assert!(v.ports.iter().all(|p| p.qos_policy == Some(0)));
        // A port's own policy replaces the network's whole (Neutron does not merge them).
        state.ports[0].qos_policy_id = Some("port-mark".into());
        let v = validate(&state).unwrap();
        assert_eq!(v.ports[0].qos_policy, Some(1));
        assert_eq!(v.qos_policies[1].egress, None);
        assert_eq!(v.qos_policies[1].dscp_mark, Some(46));
    }

    #[test]
    fn errors_name_their_fields() {
        let mut state = base();
        state.qos_policies = vec![
            policy(
                "q",
                vec![
                    limit(0, None, None),
                    limit(100, Some(-1), Some("up")),
                    mark(7),
                    QosRule {
                        direction: Some("egress".into()),
                        ..mark(8)
                    },
                    rule("minimum_bandwidth"),
                    rule("bogus"),
                    rule("dscp_marking"),
                    limit(5, None, Some("egress")),
                    limit(6, None, None),
                ],
            ),
            policy("q", vec![]),
        ];
        state.ports[0].qos_policy_id = Some("nope".into());
        state.networks[0].qos_policy_id = Some("missing".into());
        let valid: Vec<String> = super::VALID_DSCP_MARKS.iter().map(u8::to_string).collect();
        assert_errors(
            &state,
            &[
                "qos_policies[0].rules[0].max_kbps: 0 is no limit for Neutron's drivers, never \
                 enforced: leave the rule out instead",
                "qos_policies[0].rules[1].direction: \"up\" is not a direction (egress or ingress)",
                &format!(
                    "qos_policies[0].rules[2].dscp_mark: 7 is not a valid DSCP mark (Neutron's: {})",
                    valid.join(", ")
                ),
                "qos_policies[0].rules[3].direction: a dscp_marking rule has no direction",
                "qos_policies[0].rules[3]: the policy already has a dscp_marking rule \
                 (rules[2]); a policy has one",
                "qos_policies[0].rules[4].type: not supported: minimum_bandwidth rules are not \
                 enforced (bandwidth_limit and dscp_marking are)",
                "qos_policies[0].rules[5].type: \"bogus\" is not a QoS rule type \
                 (bandwidth_limit or dscp_marking)",
                "qos_policies[0].rules[6].dscp_mark: a dscp_marking rule needs a dscp_mark",
                "qos_policies[0].rules[6]: the policy already has a dscp_marking rule \
                 (rules[2]); a policy has one",
                "qos_policies[0].rules[7]: the policy already has an egress bandwidth_limit \
                 rule (rules[0]); a policy has one",
                "qos_policies[0].rules[8]: the policy already has an egress bandwidth_limit \
                 rule (rules[0]); a policy has one",
                "qos_policies[1].id: QoS policy id q is already used by qos_policies[0]",
                "networks[0].qos_policy_id: no QoS policy has id \"missing\"",
                "ports[0].qos_policy_id: no QoS policy has id \"nope\"",
            ],
        );
    }

    #[test]
    fn toml_round_trip() {
        let text = r#"
            [[qos_policies]]
            id = "gold"
            name = "gold"
            rules = [
              { type = "bandwidth_limit", max_kbps = 2000, direction = "ingress" },
              { type = "bandwidth_limit", max_kbps = 3000, max_burst_kbps = 300 },
              { type = "dscp_marking", dscp_mark = 26 },
            ]
        "#;
        let state = crate::model::DesiredState::from_toml_str(text).unwrap();
        let v = validate(&state).unwrap();
        let p = &v.qos_policies[0];
        assert_eq!(
            (p.ingress.unwrap().max_kbps, p.ingress.unwrap().burst_kbit),
            (2000, 1600)
        );
        assert_eq!(
            (p.egress.unwrap().max_kbps, p.egress.unwrap().burst_kbit),
            (3000, 300)
        );
        assert_eq!(p.dscp_mark, Some(26));
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(
            crate::model::DesiredState::from_json_str(&json).unwrap(),
            state
        );
        let bad = "[[qos_policies]]\nid = \"x\"\nrules = [{ type = \"dscp_marking\", dscp = 1 }]\n";
        let e = crate::model::DesiredState::from_toml_str(bad).unwrap_err();
        assert_eq!(e.path.as_deref(), Some("qos_policies[0]"));
    }

    proptest! {
        /// Any bandwidth_limit values validate exactly when they are in Neutron's ranges,
        /// with the burst defaulted as its drivers do, or fail naming the offending field.
        #[test]
        fn bandwidth_limit_values(
            kbps in prop_oneof![Just(0i64), 1i64..=super::MAX_KBPS, any::<i64>()],
            burst in proptest::option::of(prop_oneof![Just(0i64), 1i64..=super::MAX_KBPS, any::<i64>()]),
            egress in any::<bool>(),
            dscp in proptest::option::of(any::<i64>()),
        ) {
            let mut state = base();
            let mut rules = vec![limit(kbps, burst, Some(if egress { "egress" } else { "ingress" }))];
            if let Some(m) = dscp {
                rules.push(mark(m));
            }
            state.qos_policies = vec![policy("p", rules)];
            state.ports[0].qos_policy_id = Some("p".into());
            let kbps_ok = (1..=super::MAX_KBPS).contains(&kbps);
            let burst_ok = burst.is_none_or(|b| (0..=super::MAX_KBPS).contains(&b));
            let dscp_ok = dscp.is_none_or(|m| u8::try_from(m).is_ok_and(|m| super::VALID_DSCP_MARKS.contains(&m)));
            match validate(&state) {
                Ok(v) => {
                    prop_assert!(kbps_ok && burst_ok && dscp_ok);
                    let p = &v.qos_policies[0];
                    let l = if egress { p.egress } else { p.ingress }.unwrap();
                    prop_assert_eq!(i64::from(l.max_kbps), kbps);
                    let want = match burst {
                        None | Some(0) => (kbps * 8 / 10).max(1),
                        Some(b) => b,
                    };
                    prop_assert_eq!(i64::from(l.burst_kbit), want);
                    prop_assert_eq!(p.dscp_mark.map(i64::from), dscp);
                    prop_assert_eq!(v.ports[0].qos_policy, Some(0));
                }
                Err(errors) => {
                    prop_assert!(!(kbps_ok && burst_ok && dscp_ok));
                    for e in &errors {
                        prop_assert!(e.path.starts_with("qos_policies[0].rules["), "{}", e);
                    }
                    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
                    prop_assert_eq!(paths.contains(&"qos_policies[0].rules[0].max_kbps"), !kbps_ok);
                    prop_assert_eq!(paths.contains(&"qos_policies[0].rules[0].max_burst_kbps"), !burst_ok);
                    prop_assert_eq!(paths.contains(&"qos_policies[0].rules[1].dscp_mark"), !dscp_ok);
                }
            }
        }
    }
}
