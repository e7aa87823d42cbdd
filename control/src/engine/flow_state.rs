//! What several workers cannot run yet: QoS token buckets.
//!
//! Security-group connections, SNAT sessions and floating IPs follow their flow: every
//! flow has one owning worker, and packets another worker receives are handed to it
//! (`pollux_dataplane::flow_owner`, docs/DESIGN.md "Workers"). A QoS bandwidth limit is
//! a token bucket per port, not per flow: with several workers each would enforce the
//! whole limit on what it sees, so a port could send up to the limit once per worker.
//! Until the rate is split among the workers, a configuration with a QoS policy is
//! refused when more than one worker runs, with the path of the field, rather than run
//! wrong.
//!
//! Jumbo networks likewise: their frames larger than one pool frame travel as chains of
//! frames, and the rings between workers (to the worker that polls the output port, or
//! that owns the flow) carry one frame per slot, so a chain could not cross them.

use super::ApplyError;
use crate::compile::MAX_MTU;
use crate::model::DesiredState;
use crate::validate::Validated;

/// Refuses `state` (validated as `valid`) when `workers` workers cannot run it; see the
/// module documentation. A QoS policy is named where the document sets it (`valid`'s port
/// policy includes its network's); a network's MTU is read from `valid`, its default
/// resolved (the collections keep the document's order, so the indexes are the paths').
pub(super) fn refuse_flow_state(
    state: &DesiredState,
    valid: &Validated,
    workers: usize,
) -> Result<(), ApplyError> {
    if workers <= 1 {
        return Ok(());
    }
    let refuse = |path: String, what: &str| {
        Err(ApplyError::Unsupported {
            path,
            what: format!(
                "{what} with {workers} workers: each worker would enforce the whole \
                 limit (run one worker: --cores with one CPU)"
            ),
        })
    };
    for (i, port) in state.ports.iter().enumerate() {
        if port.qos_policy_id.is_some() {
            return refuse(
                format!("ports[{i}].qos_policy_id"),
                "QoS token buckets are per worker",
            );
        }
    }
    for (i, network) in state.networks.iter().enumerate() {
        if network.qos_policy_id.is_some() {
            return refuse(
                format!("networks[{i}].qos_policy_id"),
                "QoS token buckets are per worker",
            );
        }
    }
    for (i, network) in valid.networks.iter().enumerate() {
        if network.mtu > MAX_MTU {
            return Err(ApplyError::Unsupported {
                path: format!("networks[{i}].mtu"),
                what: format!(
                    "{} with {workers} workers: frames above {MAX_MTU} bytes of MTU are \
                     chained over several buffers, and the rings between workers carry one \
                     buffer per frame (run one worker: --cores with one CPU)",
                    network.mtu
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::validate;

    fn refuse(state: &DesiredState, workers: usize) -> Result<(), ApplyError> {
        refuse_flow_state(state, &validate(state).expect("valid"), workers)
    }

    fn state(extra: &str) -> DesiredState {
        let text = format!(
            r#"
[[networks]]
id = "net"
network_type = "local"

[[security_groups]]
id = "sg"

[[qos_policies]]
id = "slow"
rules = [{{ type = "bandwidth_limit", max_kbps = 1000 }}]

[[ports]]
id = "p"
network_id = "net"
mac_address = "fa:16:3e:00:00:01"
security_groups = ["sg"]
binding = {{ driver = "mem" }}
{extra}
"#
        );
        DesiredState::from_toml_str(&text).expect("parses")
    }

    #[test]
    fn security_groups_run_on_several_workers_and_qos_is_refused_with_its_path() {
        assert!(refuse(&state(""), 4).is_ok());
        let qos = state(r#"qos_policy_id = "slow""#);
        assert!(refuse(&qos, 1).is_ok());
        match refuse(&qos, 2) {
            Err(ApplyError::Unsupported { path, what }) => {
                assert_eq!(path, "ports[0].qos_policy_id");
                assert!(what.contains("2 workers"), "{what}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn jumbo_networks_are_refused_on_several_workers_with_their_path() {
        let mut jumbo = state("");
        jumbo.networks[0].mtu = Some(9000);
        assert!(refuse(&jumbo, 1).is_ok());
        match refuse(&jumbo, 2) {
            Err(ApplyError::Unsupported { path, what }) => {
                assert_eq!(path, "networks[0].mtu");
                assert!(what.contains("2 workers"), "{what}");
            }
            other => panic!("{other:?}"),
        }
        jumbo.networks[0].mtu = Some(i64::from(MAX_MTU));
        assert!(refuse(&jumbo, 2).is_ok());
    }
}
