//! TCP sequence-window tracking, as Linux's `nf_conntrack` does it with `tcp_be_liberal =
//! 0` (Guido van Rooij's "Real Stateful TCP Packet Filtering in IP Filter"): each
//! direction remembers the highest sequence it sent (`end`), the highest the other side
//! allowed it to send (`maxend`: acknowledged plus advertised window) and its largest
//! window; a segment passes only if its sequence range lies within what the receiver can
//! accept and its acknowledgment within what the receiver sent. A blind attacker's RST or
//! data with a guessed sequence number lands outside the window and is refused.
//!
//! A connection picked up without its handshake (the first packet seen was not a SYN) is
//! tracked liberally, as Linux does for `nf_conntrack_tcp_loose`: its windows are unknown.

use crate::wire::TcpFlags;

/// The fields of a TCP segment the window check reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpSegment {
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Payload length in bytes.
    pub len: u32,
    /// Window field (unscaled).
    pub window: u16,
    /// Flags.
    pub flags: TcpFlags,
    /// Window scale option of a SYN, if it has one.
    pub wscale: Option<u8>,
}

/// Largest acknowledgment lag accepted below the receiver's end (Linux's `MAXACKWINCONST`).
const MAX_ACK_WINDOW: u32 = 66_000;

const WSCALE_SEEN: u8 = 1;

/// One direction's view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Peer {
    end: u32,
    maxend: u32,
    /// Largest window seen (scaled); 0 until the direction sent a packet.
    maxwin: u32,
    scale: u8,
    flags: u8,
}

/// Both directions of a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    peers: [Peer; 2],
    liberal: bool,
}

#[inline]
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

#[inline]
fn after(a: u32, b: u32) -> bool {
    before(b, a)
}

impl Window {
    /// No packet seen yet.
    pub const NEW: Window = Window {
        peers: [Peer {
            end: 0,
            maxend: 0,
            maxwin: 0,
            scale: 0,
            flags: 0,
        }; 2],
        liberal: false,
    };

    /// Whether the segment from direction `from` (0 original, 1 reply) is within the
    /// windows; updates them if it is.
    pub fn accept(&mut self, from: usize, seg: &TcpSegment) -> bool {
        let (s, r) = (from & 1, (from & 1) ^ 1);
        let syn = seg.flags.contains(TcpFlags::SYN);
        let ack_flag = seg.flags.contains(TcpFlags::ACK);
        let rst = seg.flags.contains(TcpFlags::RST);
        let fin = seg.flags.contains(TcpFlags::FIN);
        let end = seg
            .seq
            .wrapping_add(seg.len)
            .wrapping_add(u32::from(syn))
            .wrapping_add(u32::from(fin));
        let mut win = u32::from(seg.window);
        if self.peers[s].maxwin == 0 {
            let first_of_connection = self.peers[r].maxwin == 0;
            if first_of_connection && !syn {
                // Picked up mid-stream: windows unknown.
                self.liberal = true;
            }
            let p = &mut self.peers[s];
            p.end = end;
            p.maxend = end;
            p.maxwin = win.max(1);
            if syn {
                if let Some(scale) = seg.wscale {
                    p.flags |= WSCALE_SEEN;
                    p.scale = scale.min(14);
                }
            }
            if first_of_connection {
                p.maxend = end.wrapping_add(p.maxwin);
                return true;
            }
            // The answer to a SYN: scaling holds only if both sides offered it.
            if self.peers[0].flags & self.peers[1].flags & WSCALE_SEEN == 0 {
                self.peers[0].scale = 0;
                self.peers[1].scale = 0;
            }
            if !ack_flag {
                return true;
            }
        }
        if self.liberal {
            return true;
        }
        if !syn {
            win <<= u32::from(self.peers[s].scale);
        }
        let receiver_end = self.peers[r].end;
        let ack = if !ack_flag || (rst && seg.ack == 0) {
            receiver_end
        } else {
            seg.ack
        };
        let sender = self.peers[s];
        let receiver = self.peers[r];
        let max_ack_window = sender.maxwin.max(MAX_ACK_WINDOW);
        let in_window = !after(seg.seq, sender.maxend)
            && !before(end, sender.end.wrapping_sub(receiver.maxwin))
            && !after(ack, receiver.end)
            && !before(ack, receiver.end.wrapping_sub(max_ack_window));
        if !in_window {
            return false;
        }
        let p = &mut self.peers[s];
        if p.maxwin < win {
            p.maxwin = win;
        }
        if after(end, p.end) {
            p.end = end;
        }
        if ack_flag {
            let q = &mut self.peers[r];
            if q.maxwin != 0 && after(end, sender.maxend) {
                q.maxwin = q.maxwin.wrapping_add(end.wrapping_sub(sender.maxend));
            }
            let limit = ack.wrapping_add(win.max(1));
            if after(limit, q.maxend) {
                q.maxend = limit;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(seq: u32, ack: u32, flags: u16, len: u32) -> TcpSegment {
        TcpSegment {
            seq,
            ack,
            len,
            window: 64000,
            flags: TcpFlags(flags),
            wscale: None,
        }
    }

    #[test]
    fn a_handshake_and_data_pass_and_blind_segments_do_not() {
        let mut w = Window::NEW;
        assert!(w.accept(0, &seg(1000, 0, 0x02, 0)));
        assert!(w.accept(1, &seg(5000, 1001, 0x12, 0)));
        assert!(w.accept(0, &seg(1001, 5001, 0x10, 100)));
        assert!(w.accept(1, &seg(5001, 1101, 0x10, 0)));
        // Far outside: a guessed RST or data.
        assert!(!w.accept(0, &seg(1101 + (1 << 30), 0, 0x04, 0)));
        assert!(!w.accept(1, &seg(5001 + (1 << 29), 1101, 0x10, 10)));
        // An ACK for data never sent.
        assert!(!w.accept(1, &seg(5001, 1101 + (1 << 20), 0x10, 0)));
        // A retransmission (old data) still passes.
        assert!(w.accept(0, &seg(1001, 5001, 0x10, 100)));
        assert!(w.accept(0, &seg(1101, 5001, 0x04, 0)));
    }

    #[test]
    fn a_connection_picked_up_mid_stream_is_liberal() {
        let mut w = Window::NEW;
        assert!(w.accept(0, &seg(1000, 77, 0x10, 10)));
        assert!(w.accept(1, &seg(9, 1 << 30, 0x10, 10)));
    }

    #[test]
    fn window_scaling_applies_when_both_sides_offer_it() {
        let mut w = Window::NEW;
        let mut syn = seg(1000, 0, 0x02, 0);
        syn.wscale = Some(7);
        syn.window = 1000;
        assert!(w.accept(0, &syn));
        let mut syn_ack = seg(5000, 1001, 0x12, 0);
        syn_ack.wscale = Some(7);
        syn_ack.window = 1000;
        assert!(w.accept(1, &syn_ack));
        assert!(w.accept(
            0,
            &TcpSegment {
                window: 1000,
                ..seg(1001, 5001, 0x10, 0)
            }
        ));
        // 1000 << 7 = 128000 bytes the responder may send past 5001.
        assert!(w.accept(
            1,
            &TcpSegment {
                window: 1000,
                ..seg(5001 + 100_000, 1001, 0x10, 1000)
            }
        ));
    }
}
