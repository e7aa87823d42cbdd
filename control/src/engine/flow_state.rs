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

use super::ApplyError;
use crate::model::DesiredState;

/// Refuses `state` when `workers` workers cannot run it; see the module documentation.
pub(super) fn refuse_flow_state(state: &DesiredState, workers: usize) -> Result<(), ApplyError> {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(refuse_flow_state(&state(""), 4).is_ok());
        let qos = state(r#"qos_policy_id = "slow""#);
        assert!(refuse_flow_state(&qos, 1).is_ok());
        match refuse_flow_state(&qos, 2) {
            Err(ApplyError::Unsupported { path, what }) => {
                assert_eq!(path, "ports[0].qos_policy_id");
                assert!(what.contains("2 workers"), "{what}");
            }
            other => panic!("{other:?}"),
        }
    }
}
