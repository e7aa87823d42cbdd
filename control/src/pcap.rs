//! The capture file `polluxctl capture -w` writes: pcapng (which tcpdump, tshark and
//! Wireshark read), one interface (the captured port, nanosecond timestamps), and each
//! frame streamed by `capture.start` as an enhanced packet block: its direction in the
//! block's flags (inbound, outbound) and, for a drop, the stage and reason as the block's
//! comment (`drop: port_security/spoofed_ip`), which `tshark -V` and Wireshark show.

use std::borrow::Cow;
use std::io::Write;
use std::time::Duration;

use base64::Engine as _;
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::DataLink;
use serde_json::Value;

/// One `capture.frame` notification, read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamedFrame {
    /// `rx`, `tx` or `drop`.
    pub direction: String,
    /// Unix time in nanoseconds.
    pub timestamp_ns: u64,
    /// Length on the wire.
    pub orig_len: u32,
    /// The bytes kept.
    pub data: Vec<u8>,
    /// For a drop: stage and reason.
    pub drop: Option<(String, String)>,
}

/// Longest stage or reason name taken from the stream (names are short identifiers).
const MAX_NAME: usize = 64;

impl StreamedFrame {
    /// Reads a `capture.frame` notification's params.
    pub fn from_params(params: &Value) -> Result<StreamedFrame, String> {
        let field = |name: &str| {
            params
                .get(name)
                .ok_or_else(|| format!("capture.frame without {name}"))
        };
        let text = |name: &str| -> Result<String, String> {
            field(name)?
                .as_str()
                .filter(|s| s.len() <= MAX_NAME && s.bytes().all(|b| b.is_ascii_graphic()))
                .map(str::to_owned)
                .ok_or_else(|| format!("capture.frame: {name} is not a short name"))
        };
        let direction = text("direction")?;
        if !matches!(direction.as_str(), "rx" | "tx" | "drop") {
            return Err(format!("capture.frame: unknown direction {direction:?}"));
        }
        let timestamp_ns = field("timestamp_ns")?
            .as_u64()
            .ok_or("capture.frame: timestamp_ns is not a number")?;
        let orig_len = field("orig_len")?
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or("capture.frame: orig_len is not a 32-bit number")?;
        let data = field("data")?
            .as_str()
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .ok_or("capture.frame: data is not base64")?;
        if data.len() as u64 > u64::from(orig_len) {
            return Err("capture.frame: more data than orig_len".into());
        }
        let drop = if direction == "drop" {
            Some((text("stage")?, text("reason")?))
        } else {
            None
        };
        Ok(StreamedFrame {
            direction,
            timestamp_ns,
            orig_len,
            data,
            drop,
        })
    }
}

/// A pcapng file being written.
pub struct PcapngFile<W: Write> {
    writer: PcapNgWriter<W>,
}

impl<W: Write> std::fmt::Debug for PcapngFile<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcapngFile").finish_non_exhaustive()
    }
}

/// pcapng `epb_flags` direction bits.
const INBOUND: u32 = 1;
const OUTBOUND: u32 = 2;

impl<W: Write> PcapngFile<W> {
    /// Starts the file: section header, and the port as interface 0.
    pub fn new(out: W, port: &str, snaplen: u32) -> Result<Self, String> {
        let mut writer = PcapNgWriter::new(out).map_err(|e| e.to_string())?;
        writer
            .write_pcapng_block(InterfaceDescriptionBlock {
                linktype: DataLink::ETHERNET,
                snaplen,
                options: vec![
                    InterfaceDescriptionOption::IfName(Cow::Owned(format!("pollux:{port}"))),
                    // Timestamps in nanoseconds.
                    InterfaceDescriptionOption::IfTsResol(9),
                ],
            })
            .map_err(|e| e.to_string())?;
        Ok(PcapngFile { writer })
    }

    /// Appends one frame.
    pub fn write(&mut self, frame: &StreamedFrame) -> Result<(), String> {
        let flags = if frame.direction == "tx" {
            OUTBOUND
        } else {
            INBOUND
        };
        let mut options = vec![EnhancedPacketOption::Flags(flags)];
        if let Some((stage, reason)) = &frame.drop {
            options.push(EnhancedPacketOption::Comment(Cow::Owned(format!(
                "drop: {stage}/{reason}"
            ))));
        }
        self.writer
            .write_pcapng_block(EnhancedPacketBlock {
                interface_id: 0,
                timestamp: Duration::from_nanos(frame.timestamp_ns),
                original_len: frame.orig_len,
                data: Cow::Borrowed(&frame.data),
                options,
            })
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The output, flushed.
    pub fn finish(self) -> Result<W, String> {
        let mut out = self.writer.into_inner();
        out.flush().map_err(|e| e.to_string())?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcapng::{Block, PcapNgReader};
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn frames_and_drop_reasons_read_back_from_the_file() {
        let rx = StreamedFrame::from_params(&json!({
            "direction": "rx", "timestamp_ns": 1_700_000_000_123_456_789u64, "orig_len": 60,
            "data": base64::engine::general_purpose::STANDARD.encode([0xaa; 60]),
        }))
        .unwrap();
        let drop = StreamedFrame::from_params(&json!({
            "direction": "drop", "timestamp_ns": 5, "orig_len": 100, "data": "AAEC",
            "stage": "port_security", "reason": "spoofed_ip",
        }))
        .unwrap();
        assert_eq!(drop.data, [0, 1, 2]);
        let mut file = PcapngFile::new(Vec::new(), "vm1", 2048).unwrap();
        file.write(&rx).unwrap();
        file.write(&drop).unwrap();
        let bytes = file.finish().unwrap();
        let mut reader = PcapNgReader::new(&bytes[..]).unwrap();
        let mut packets = Vec::new();
        while let Some(block) = reader.next_block() {
            if let Block::EnhancedPacket(epb) = block.unwrap() {
                packets.push((
                    epb.timestamp.as_nanos() as u64,
                    epb.original_len,
                    epb.data.to_vec(),
                    epb.options.iter().any(|o| {
                        matches!(o, EnhancedPacketOption::Comment(c) if c == "drop: port_security/spoofed_ip")
                    }),
                ));
            }
        }
        assert_eq!(
            packets,
            vec![
                (1_700_000_000_123_456_789, 60, vec![0xaa; 60], false),
                (5, 100, vec![0, 1, 2], true),
            ]
        );
        for (bad, says) in [
            (json!({ "direction": "up" }), "direction"),
            (
                json!({ "direction": "rx", "timestamp_ns": 1, "orig_len": 1, "data": "AAEC" }),
                "more data",
            ),
            (
                json!({ "direction": "drop", "timestamp_ns": 1, "orig_len": 9, "data": "" }),
                "stage",
            ),
        ] {
            let e = StreamedFrame::from_params(&bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    proptest! {
        #[test]
        fn notification_params_never_panic(
            direction in "[a-z]{0,5}",
            ts in any::<i64>(),
            len in any::<i64>(),
            data in "[A-Za-z0-9+/=]{0,12}",
            stage in proptest::option::of("[ -~]{0,70}"),
        ) {
            let mut p = json!({ "direction": direction, "timestamp_ns": ts, "orig_len": len, "data": data });
            if let Some(s) = stage {
                p["stage"] = json!(s.clone());
                p["reason"] = json!(s);
            }
            if let Ok(f) = StreamedFrame::from_params(&p) {
                prop_assert!(f.data.len() as u64 <= u64::from(f.orig_len));
                let mut file = PcapngFile::new(Vec::new(), "p", 64).unwrap();
                prop_assert!(file.write(&f).is_ok());
            }
        }
    }
}
