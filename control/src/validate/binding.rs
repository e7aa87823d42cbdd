//! Bindings (how a port or an uplink is attached) and the kernel interfaces and sockets
//! they claim, each at most once.

use std::collections::HashSet;

use super::Checker;
use crate::model;

/// A checked binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Binding {
    /// AF_XDP on `interface`, queue ids `queues` (at least one, distinct).
    Afxdp {
        /// Kernel interface name (1..=15 bytes).
        interface: String,
        /// Queue ids.
        queues: Vec<u32>,
    },
    /// vhost-user back end on the Unix socket `socket` (an absolute path).
    VhostUser {
        /// Socket path.
        socket: String,
        /// Pollux's role on it.
        mode: model::VhostUserMode,
    },
    /// In-process rings.
    Mem,
    /// Tap device `interface`.
    Tap {
        /// Kernel interface name (1..=15 bytes).
        interface: String,
    },
}

impl Checker {
    pub(super) fn binding(&mut self, path: &str, b: &model::Binding, owner: &str) -> Binding {
        match b {
            model::Binding::Mem {} => Binding::Mem,
            model::Binding::Afxdp { interface, queues } => {
                self.interface(&format!("{path}.interface"), interface, owner);
                let queues = match queues {
                    None => vec![0],
                    Some(qs) => {
                        if qs.is_empty() {
                            self.err(
                                format!("{path}.queues"),
                                "give at least one queue id, or leave queues out for queue 0",
                            );
                        }
                        let mut seen = HashSet::new();
                        let mut out = Vec::new();
                        for (k, &q) in qs.iter().enumerate() {
                            let p = format!("{path}.queues[{k}]");
                            match u32::try_from(q) {
                                Ok(q) if q < 1024 => {
                                    if !seen.insert(q) {
                                        self.err(p, format!("queue {q} is listed twice"));
                                    }
                                    out.push(q);
                                }
                                _ => self.err(p, format!("{q} is not a queue id (0..=1023)")),
                            }
                        }
                        out
                    }
                };
                Binding::Afxdp {
                    interface: interface.clone(),
                    queues,
                }
            }
            model::Binding::Tap { interface } => {
                self.interface(&format!("{path}.interface"), interface, owner);
                Binding::Tap {
                    interface: interface.clone(),
                }
            }
            model::Binding::VhostUser { socket, mode } => {
                let p = format!("{path}.socket");
                if !socket.starts_with('/') || socket.len() < 2 || socket.contains('\0') {
                    self.err(
                        p,
                        format!("{socket:?} is not an absolute path for the vhost-user socket"),
                    );
                } else if socket.len() > 107 {
                    self.err(
                        p,
                        format!(
                            "the socket path is {} bytes; a Unix socket path has at most 107",
                            socket.len()
                        ),
                    );
                } else {
                    self.bind(&p, format!("socket {socket}"), owner);
                }
                Binding::VhostUser {
                    socket: socket.clone(),
                    mode: mode.unwrap_or(model::VhostUserMode::Server),
                }
            }
        }
    }

    pub(super) fn interface(&mut self, path: &str, name: &str, owner: &str) {
        match check_ifname(name) {
            Ok(()) => self.bind(path, format!("interface {name}"), owner),
            Err(m) => self.err(path, m),
        }
    }

    pub(super) fn bind(&mut self, path: &str, what: String, owner: &str) {
        match self.bound.get(&what) {
            Some(first) => {
                let m = format!("{what} is already bound by {first}");
                self.err(path, m);
            }
            None => {
                self.bound.insert(what, owner.to_owned());
            }
        }
    }
}

/// Checks a Linux interface name: 1..=15 bytes, no `/`, `:` or whitespace, not `.` or `..`.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("an interface name cannot be empty".to_owned())
    } else if name.len() > 15 {
        Err(format!(
            "interface name {name:?} is {} bytes; Linux allows at most 15",
            name.len()
        ))
    } else if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        Err(format!("{name:?} is not a valid interface name"))
    } else {
        Ok(())
    }
}
