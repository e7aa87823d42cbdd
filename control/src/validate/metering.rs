//! Metering labels (Neutron's): their rules, nested or top-level, checked as Neutron's API
//! checks them, and each rule's prefixes in the form Neutron's iptables driver matches.
//!
//! The deprecated `remote_ip_prefix` is the source prefix of an egress rule and the
//! destination prefix of an ingress rule: the iptables driver writes `-s PREFIX -o qg-…`
//! and `-d PREFIX -i qg-…` (the internal side of the router, seen before SNAT and after
//! DNAT). Neutron refuses it together with `source_ip_prefix` or `destination_ip_prefix`,
//! and a rule with none of the three.

use std::collections::HashMap;

use pollux_services::addr::Ipv4Cidr;

use super::{Checked, Checker};
use crate::model::{self, Direction};

/// A checked metering rule: prefixes as matched (`None`: any).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeteringRule {
    /// Ingress (arrives through the external gateway) or egress (leaves by it).
    pub direction: Direction,
    /// Source prefix.
    pub source: Option<Ipv4Cidr>,
    /// Destination prefix.
    pub destination: Option<Ipv4Cidr>,
    /// Matching packets are not counted by the label.
    pub excluded: bool,
}

/// A checked metering label with all its rules (nested ones first, then the top-level
/// ones naming it, in document order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeteringLabel {
    /// Unique id.
    pub id: String,
    /// Name.
    pub name: Option<String>,
    /// The project whose routers count it (none when shared and given none).
    pub project_id: Option<String>,
    /// Counted on every router.
    pub shared: bool,
    /// Its rules.
    pub rules: Vec<MeteringRule>,
}

impl MeteringLabel {
    /// Whether it is counted on a router of project `project`.
    pub fn applies_to(&self, project: Option<&str>) -> bool {
        self.shared || (self.project_id.is_some() && self.project_id.as_deref() == project)
    }
}

impl Checker {
    pub(super) fn metering_labels(
        &mut self,
        labels: &[model::MeteringLabel],
        rules: &[model::MeteringLabelRule],
    ) -> Checked<MeteringLabel> {
        let mut out = Checked::default();
        let mut rule_ids: HashMap<String, String> = HashMap::new();
        for (i, l) in labels.iter().enumerate() {
            let base = format!("metering_labels[{i}]");
            let before = self.errors.len();
            self.id(
                format!("{base}.id"),
                &l.id,
                "metering_label",
                &mut out.by_id,
                i,
            );
            if !l.shared && l.project_id.as_deref().unwrap_or("").is_empty() {
                self.err(
                    format!("{base}.project_id"),
                    "a metering label that is not shared needs the project whose routers \
                     it counts on",
                );
            }
            let mut checked = Vec::with_capacity(l.rules.len());
            for (k, r) in l.rules.iter().enumerate() {
                let p = format!("{base}.rules[{k}]");
                if let Some(label) = r.metering_label_id.as_deref() {
                    if label != l.id {
                        self.err(
                            format!("{p}.metering_label_id"),
                            format!("names label {label} but is a rule of label {}", l.id),
                        );
                    }
                }
                if let Some(rule) = self.metering_rule(&p, r, &mut rule_ids) {
                    checked.push(rule);
                }
            }
            out.items.push(MeteringLabel {
                id: l.id.clone(),
                name: l.name.clone(),
                project_id: l.project_id.clone().filter(|p| !p.is_empty()),
                shared: l.shared,
                rules: checked,
            });
            out.ok.push(self.clean(before));
        }
        for (k, r) in rules.iter().enumerate() {
            let p = format!("metering_label_rules[{k}]");
            let label = match r.metering_label_id.as_deref() {
                None => {
                    self.err(
                        format!("{p}.metering_label_id"),
                        "a top-level metering label rule needs the id of its label",
                    );
                    None
                }
                Some(id) => match out.by_id.get(id) {
                    Some(&i) => Some(i),
                    None => {
                        self.err(
                            format!("{p}.metering_label_id"),
                            format!("no metering label has id {id:?}"),
                        );
                        None
                    }
                },
            };
            let rule = self.metering_rule(&p, r, &mut rule_ids);
            if let (Some(i), Some(rule)) = (label, rule) {
                out.items[i].rules.push(rule);
            }
        }
        out
    }

    fn metering_rule(
        &mut self,
        p: &str,
        r: &model::MeteringLabelRule,
        ids: &mut HashMap<String, String>,
    ) -> Option<MeteringRule> {
        let before = self.errors.len();
        if let Some(id) = r.id.as_deref() {
            if id.is_empty() {
                self.err(format!("{p}.id"), "a rule id, when given, is not empty");
            } else if let Some(first) = ids.get(id) {
                let m = format!("metering label rule id {id} is already used by {first}");
                self.err(format!("{p}.id"), m);
            } else {
                ids.insert(id.to_owned(), p.to_owned());
            }
        }
        let mut prefix = |field: &str, value: &Option<String>| -> Option<Ipv4Cidr> {
            let s = value.as_deref()?;
            let path = format!("{p}.{field}");
            if s.contains(':') {
                self.err(
                    path,
                    "not supported: IPv6 prefixes (Neutron's iptables metering driver counts \
                     IPv4 only, and Pollux routes IPv4 only)",
                );
                return None;
            }
            self.cidr(&path, s)
        };
        let remote = prefix("remote_ip_prefix", &r.remote_ip_prefix);
        let source = prefix("source_ip_prefix", &r.source_ip_prefix);
        let destination = prefix("destination_ip_prefix", &r.destination_ip_prefix);
        let given = |v: &Option<String>| v.is_some();
        if given(&r.remote_ip_prefix)
            && (given(&r.source_ip_prefix) || given(&r.destination_ip_prefix))
        {
            self.err(
                format!("{p}.remote_ip_prefix"),
                "cannot be used together with source_ip_prefix or destination_ip_prefix \
                 (as Neutron refuses it)",
            );
        }
        if !given(&r.remote_ip_prefix)
            && !given(&r.source_ip_prefix)
            && !given(&r.destination_ip_prefix)
        {
            self.err(
                p.to_owned(),
                "a metering rule needs remote_ip_prefix, source_ip_prefix or \
                 destination_ip_prefix (as Neutron asks)",
            );
        }
        if !self.clean(before) {
            return None;
        }
        let (source, destination) = match (remote, r.direction) {
            (Some(remote), Direction::Egress) => (Some(remote), None),
            (Some(remote), Direction::Ingress) => (None, Some(remote)),
            (None, _) => (source, destination),
        };
        Some(MeteringRule {
            direction: r.direction,
            source,
            destination,
            excluded: r.excluded,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::assert_errors;
    use super::*;

    #[test]
    fn labels_and_rules_are_checked_with_their_paths() {
        let text = r#"
            [[metering_labels]]
            id = "m1"
            project_id = "p1"
            rules = [
              { direction = "egress", remote_ip_prefix = "198.18.0.0/15", source_ip_prefix = "198.18.1.0/24" },
              { direction = "ingress" },
              { direction = "ingress", metering_label_id = "m2", destination_ip_prefix = "198.18.1.0/24" },
            ]

            [[metering_labels]]
            id = "m2"

            [[metering_labels]]
            id = "m1"
            shared = true

            [[metering_label_rules]]
            metering_label_id = "nope"
            direction = "egress"
            source_ip_prefix = "198.18.1.1/24"

            [[metering_label_rules]]
            direction = "egress"
            destination_ip_prefix = "2001:db8::/32"
        "#;
        let state = crate::model::DesiredState::from_toml_str(text).unwrap();
        assert_errors(
            &state,
            &[
                "metering_labels[0].rules[0].remote_ip_prefix: cannot be used together with \
                 source_ip_prefix or destination_ip_prefix (as Neutron refuses it)",
                "metering_labels[0].rules[1]: a metering rule needs remote_ip_prefix, \
                 source_ip_prefix or destination_ip_prefix (as Neutron asks)",
                "metering_labels[0].rules[2].metering_label_id: names label m2 but is a rule \
                 of label m1",
                "metering_labels[1].project_id: a metering label that is not shared needs the \
                 project whose routers it counts on",
                "metering_labels[2].id: metering_label id m1 is already used by \
                 metering_labels[0]",
                "metering_label_rules[0].metering_label_id: no metering label has id \"nope\"",
                "metering_label_rules[0].source_ip_prefix: 198.18.1.1/24 has host bits set \
                 (the prefix is 198.18.1.0/24)",
                "metering_label_rules[1].metering_label_id: a top-level metering label rule \
                 needs the id of its label",
                "metering_label_rules[1].destination_ip_prefix: not supported: IPv6 prefixes \
                 (Neutron's iptables metering driver counts IPv4 only, and Pollux routes IPv4 \
                 only)",
            ],
        );
    }

    #[test]
    fn remote_ip_prefix_is_matched_as_the_iptables_driver_matches_it() {
        let text = r#"
            [[metering_labels]]
            id = "m1"
            shared = true
            rules = [
              { direction = "egress", remote_ip_prefix = "198.18.1.0/24" },
              { direction = "ingress", remote_ip_prefix = "198.18.2.0/24", excluded = true },
            ]

            [[metering_label_rules]]
            metering_label_id = "m1"
            direction = "ingress"
            source_ip_prefix = "203.0.113.0/24"
            destination_ip_prefix = "198.18.1.0/24"
        "#;
        let state = crate::model::DesiredState::from_toml_str(text).unwrap();
        let valid = crate::validate::validate(&state).unwrap();
        let cidr = |s| pollux_services::addr::parse_cidr(s).unwrap();
        let label = &valid.metering_labels[0];
        assert!(label.applies_to(None) && label.applies_to(Some("any")));
        assert_eq!(
            label.rules,
            vec![
                MeteringRule {
                    direction: Direction::Egress,
                    source: Some(cidr("198.18.1.0/24")),
                    destination: None,
                    excluded: false,
                },
                MeteringRule {
                    direction: Direction::Ingress,
                    source: None,
                    destination: Some(cidr("198.18.2.0/24")),
                    excluded: true,
                },
                MeteringRule {
                    direction: Direction::Ingress,
                    source: Some(cidr("203.0.113.0/24")),
                    destination: Some(cidr("198.18.1.0/24")),
                    excluded: false,
                },
            ]
        );
    }
}
