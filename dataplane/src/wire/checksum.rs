//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! A *sum* here is the 16-bit one's-complement sum of big-endian words, folded but not
//! complemented; a *checksum* is its complement, as stored in headers. Verifying a header
//! means its sum, checksum field included, is `0xffff`.

use std::net::Ipv4Addr;

/// Folds a wide one's-complement accumulator into 16 bits, without a loop: 64 → 33 →
/// 18 → 17 bits, then one last carry.
#[inline]
pub fn fold(acc: u64) -> u16 {
    let a = (acc >> 32) + (acc & 0xffff_ffff);
    let a = (a >> 16) + (a & 0xffff);
    let a = (a >> 16) + (a & 0xffff);
    ((a >> 16) + (a & 0xffff)) as u16
}

/// One's-complement sum of `data` as big-endian 16-bit words; an odd last byte is padded
/// with a zero low byte.
///
/// Adds 64-bit words with end-around carry and folds once at the end: one's-complement
/// addition is the same in any word size that is a multiple of 16 bits (RFC 1071 §2(B)).
#[inline]
pub fn sum(data: &[u8]) -> u16 {
    let mut acc: u64 = 0;
    let mut add = |w: u64| {
        let (s, carry) = acc.overflowing_add(w);
        // `s` is at most 2^64 - 2 when the add carried, so this cannot overflow.
        acc = s + u64::from(carry);
    };
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        // `chunks_exact` yields 8-byte slices, so the fallback never happens.
        add(u64::from_be_bytes(c.try_into().unwrap_or([0; 8])));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        // The remainder starts at a multiple of 8, so zero padding on the right keeps
        // every byte in its place within its 16-bit word.
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        add(u64::from_be_bytes(last));
    }
    fold(acc)
}

/// Whether a 20-byte header sums to all ones (its checksum is right). The words are read
/// in the machine's byte order: a one's-complement sum read in the other order is the
/// same sum byte-swapped (RFC 1071 §2(B)), and all ones is the same either way, so the
/// check needs no byte swaps.
#[inline(always)]
pub fn sums_to_ones20(header: &[u8; 20]) -> bool {
    let word = |i: usize| {
        u64::from(u32::from_ne_bytes([
            header[i],
            header[i + 1],
            header[i + 2],
            header[i + 3],
        ]))
    };
    fold(word(0) + word(4) + word(8) + word(12) + word(16)) == 0xffff
}

/// [`apply`] for a difference already folded to 16 bits ([`fold`] of the sum of
/// [`delta16`]/[`delta32`]): a translation applied to many packets folds it once, and each
/// packet then needs one end-around carry instead of a fold.
#[inline(always)]
pub fn apply_folded(csum: u16, delta: u16) -> u16 {
    let t = u32::from(!csum) + u32::from(delta);
    !((t & 0xffff) + (t >> 16)) as u16
}

/// The checksum of `data`: the complement of its [`sum`].
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !sum(data)
}

/// One's-complement addition of two sums.
#[inline]
pub fn add(a: u16, b: u16) -> u16 {
    fold(u64::from(a) + u64::from(b))
}

/// One's-complement sum of several partial sums (for data in separate buffers, each part
/// summed over an even number of bytes except possibly the last).
#[inline]
pub fn combine(sums: &[u16]) -> u16 {
    fold(sums.iter().map(|&s| u64::from(s)).sum())
}

/// Sum of the IPv4 pseudo-header that UDP and TCP include in their checksums (RFC 768,
/// RFC 9293 §3.1): source, destination, zero byte, protocol, and the L4 length.
#[inline]
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u16) -> u16 {
    let s = src.octets();
    let d = dst.octets();
    let words = [
        u16::from_be_bytes([s[0], s[1]]),
        u16::from_be_bytes([s[2], s[3]]),
        u16::from_be_bytes([d[0], d[1]]),
        u16::from_be_bytes([d[2], d[3]]),
        u16::from(protocol),
        length,
    ];
    combine(&words)
}

/// The new checksum after one 16-bit word of the covered data changes from `old` to `new`:
/// RFC 1624 eqn. 3, `HC' = ~(~HC + ~m + m')`.
///
/// Equals full recomputation whenever the covered data is non-zero both before and after
/// (true of every real header: IPv4 has its version, the pseudo-header its protocol). Only
/// all-zero data could come out as `0x0000` instead of `0xffff`, the other zero.
#[inline]
pub fn update16(old_csum: u16, old: u16, new: u16) -> u16 {
    !fold(u64::from(!old_csum) + u64::from(!old) + u64::from(new))
}

/// What changing one 16-bit word from `old` to `new` adds to a checksum's complement
/// (`~m + m'` of RFC 1624 eqn. 3), to be summed with other changes and applied once by
/// [`apply`].
#[inline(always)]
pub fn delta16(old: u16, new: u16) -> u64 {
    u64::from(!old) + u64::from(new)
}

/// [`delta16`] for an aligned 32-bit field, such as an IPv4 address.
#[inline(always)]
pub fn delta32(old: u32, new: u32) -> u64 {
    u64::from(!(old >> 16) as u16)
        + u64::from(!old as u16)
        + (u64::from(new) >> 16)
        + u64::from(new & 0xffff)
}

/// The checksum `csum` after the changes summed in `delta` (from [`delta16`] and
/// [`delta32`]): one fold for any number of changed fields, the same result as applying
/// [`update16`]/[`update32`] one by one.
#[inline(always)]
pub fn apply(csum: u16, delta: u64) -> u16 {
    !fold(u64::from(!csum) + delta)
}

/// [`update16`] for an aligned 32-bit field, such as an IPv4 address.
#[inline]
pub fn update32(old_csum: u16, old: u32, new: u32) -> u16 {
    let acc = u64::from(!old_csum)
        + u64::from(!(old >> 16) as u16)
        + u64::from(!old as u16)
        + u64::from(new >> 16)
        + u64::from(new & 0xffff);
    !fold(acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 1071 as written: 16-bit words into a 32-bit accumulator.
    fn naive_sum(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for pair in data.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |&b| u32::from(b));
            acc += hi | lo;
            acc = (acc >> 16) + (acc & 0xffff);
        }
        acc as u16
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        assert_eq!(
            sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0xddf2
        );
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }

    #[test]
    fn ipv4_header_from_the_literature() {
        // A widely quoted example header whose checksum is 0xb861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(sum(&h), 0xffff);
        h[10] = 0;
        h[11] = 0;
        assert_eq!(checksum(&h), 0xb861);
    }

    #[test]
    fn edge_cases() {
        assert_eq!(sum(&[]), 0);
        assert_eq!(sum(&[0xab]), 0xab00);
        assert_eq!(sum(&[0xff; 64]), 0xffff);
        assert_eq!(add(0xffff, 0x0001), 0x0001);
        assert_eq!(combine(&[]), 0);
        assert_eq!(combine(&[0x8000, 0x8000]), 0x0001);
        assert_eq!(fold(u64::MAX), 0xffff);
    }

    #[test]
    fn pseudo_header_matches_bytes() {
        let src = Ipv4Addr::new(192, 168, 1, 10);
        let dst = Ipv4Addr::new(8, 8, 8, 8);
        let bytes = [192, 168, 1, 10, 8, 8, 8, 8, 0, 17, 0x01, 0x2c];
        assert_eq!(pseudo_header_v4(src, dst, 17, 300), sum(&bytes));
    }

    proptest! {
        #[test]
        fn fold_matches_the_loop(acc in any::<u64>()) {
            let mut slow = acc;
            while slow > 0xffff {
                slow = (slow >> 16) + (slow & 0xffff);
            }
            prop_assert_eq!(fold(acc), slow as u16);
        }

        #[test]
        fn deltas_applied_at_once_equal_updates_one_by_one(
            csum in any::<u16>(),
            a in any::<(u32, u32)>(),
            b in any::<(u16, u16)>(),
        ) {
            let one_by_one = update16(update32(csum, a.0, a.1), b.0, b.1);
            prop_assert_eq!(apply(csum, delta32(a.0, a.1) + delta16(b.0, b.1)), one_by_one);
        }

        #[test]
        fn sums_to_ones20_matches_sum(header in proptest::array::uniform20(any::<u8>()), fix in any::<bool>()) {
            let mut header = header;
            if fix {
                // Make it a valid header: the checksum field (bytes 10 and 11) set as a
                // sender would.
                header[10] = 0;
                header[11] = 0;
                let c = !sum(&header);
                header[10..12].copy_from_slice(&c.to_be_bytes());
            }
            prop_assert_eq!(sums_to_ones20(&header), sum(&header) == 0xffff);
        }

        #[test]
        fn apply_folded_matches_apply(csum in any::<u16>(), a in any::<u32>(), b in any::<u32>(), c in any::<u16>(), d in any::<u16>()) {
            let delta = delta32(a, b) + delta16(c, d);
            prop_assert_eq!(apply_folded(csum, fold(delta)), apply(csum, delta));
        }


        #[test]
        fn sum_matches_naive(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(sum(&data), naive_sum(&data));
        }

        #[test]
        fn combine_matches_concatenation(
            a in proptest::collection::vec(any::<u8>(), 0..40).prop_map(|mut v| { v.truncate(v.len() & !1); v }),
            b in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let whole: Vec<u8> = a.iter().chain(&b).copied().collect();
            prop_assert_eq!(combine(&[sum(&a), sum(&b)]), sum(&whole));
        }

        #[test]
        fn update16_matches_recompute(
            mut words in proptest::collection::vec(any::<u16>(), 1..40),
            at in any::<prop::sample::Index>(),
            new in any::<u16>(),
        ) {
            // A fixed non-zero word, as every real header has.
            words.insert(0, 0x4500);
            let bytes = |w: &[u16]| w.iter().flat_map(|x| x.to_be_bytes()).collect::<Vec<u8>>();
            let i = 1 + at.index(words.len() - 1);
            let old_csum = checksum(&bytes(&words));
            let old = words[i];
            words[i] = new;
            prop_assert_eq!(update16(old_csum, old, new), checksum(&bytes(&words)));
        }

        #[test]
        fn update32_matches_recompute(
            mut words in proptest::collection::vec(any::<u32>(), 1..20),
            at in any::<prop::sample::Index>(),
            new in any::<u32>(),
        ) {
            words.insert(0, 0x4500_0000);
            let bytes = |w: &[u32]| w.iter().flat_map(|x| x.to_be_bytes()).collect::<Vec<u8>>();
            let i = 1 + at.index(words.len() - 1);
            let old_csum = checksum(&bytes(&words));
            let old = words[i];
            words[i] = new;
            prop_assert_eq!(update32(old_csum, old, new), checksum(&bytes(&words)));
        }
    }
}
