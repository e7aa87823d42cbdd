//! What several workers cannot run yet: state that must follow a flow.
//!
//! A security-group connection, a SNAT or floating-IP session and a QoS token bucket live
//! in the tables of the worker that made them. With one worker per port queue, the two
//! directions of a flow (or two flows of one port's bucket) can be processed by different
//! workers, each of which would miss the other's state: replies would be dropped as
//! unknown, translations would differ, a limit would be enforced once per worker. Until
//! flows are handed to the worker that owns their state (docs/DESIGN.md, "Workers"), a
//! configuration that needs such state is refused when more than one worker runs, with
//! the path of the field, rather than run wrong.

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
                "{what} with {workers} workers: flows are not handed to the worker that \
                 holds their state yet (run one worker: --cores with one CPU)"
            ),
        })
    };
    for (i, port) in state.ports.iter().enumerate() {
        if port.port_security_enabled && !port.security_groups.is_empty() {
            return refuse(
                format!("ports[{i}].security_groups"),
                "security groups track connections per worker",
            );
        }
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
    for (i, router) in state.routers.iter().enumerate() {
        if router
            .external_gateway_info
            .as_ref()
            .is_some_and(|g| g.enable_snat)
        {
            return refuse(
                format!("routers[{i}].external_gateway_info.enable_snat"),
                "SNAT sessions are per worker",
            );
        }
    }
    for (i, fip) in state.floating_ips.iter().enumerate() {
        if fip.port_id.is_some() {
            return refuse(
                format!("floating_ips[{i}].port_id"),
                "floating-IP sessions are per worker",
            );
        }
    }
    Ok(())
}
