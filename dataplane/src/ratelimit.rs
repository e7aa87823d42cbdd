//! Token buckets for the packets a router generates itself (ICMP errors, echo replies),
//! and byte buckets for policing a port's bandwidth ([`ByteBucket`]).
//!
//! Time comes from the caller as monotonic nanoseconds (the worker reads its clock once per
//! pass), so nothing here makes a syscall and tests can drive a simulated clock. Credit is
//! kept in nano-tokens (one token is 10^9 units) so refilling is one multiplication of
//! integers: `rate` tokens per second is exactly `rate` units per nanosecond. No floats.
//!
//! Use a [`KeyedLimiter`] keyed by the offender's source address *and* a global
//! [`TokenBucket`]: the keyed one stops one noisy sender from spending the whole global
//! budget, the global one caps what the router sends in total however many senders there
//! are. Checking the keyed limiter first means a packet it refuses costs no global token;
//! a packet it allows but the global bucket refuses has still spent its key's token, which
//! only ever makes limiting stricter.
//!
//! Linux exempts "fragmentation needed" from its ICMP rate limits (`icmpv4_mask_allow`)
//! because path MTU discovery stalls without it; a caller that wants the same skips the
//! limiter for [`crate::icmp_error::IcmpErrorKind::FragNeeded`].

/// Nano-tokens per token.
const UNIT: u64 = 1_000_000_000;

/// Default global rate of ICMP errors per second: Linux's `icmp_msgs_per_sec`.
pub const DEFAULT_GLOBAL_RATE: u32 = 1000;
/// Default global burst: Linux's `icmp_msgs_burst`.
pub const DEFAULT_GLOBAL_BURST: u32 = 50;
/// Default rate per key (per offending source address). Linux allows one error per second
/// per peer (`icmp_ratelimit` = 1000 ms, burst 6), tuned for hosts with many peers; a
/// virtual router's peers are a handful of VMs running traceroute or mtr, which would see
/// gaps at that rate. A tenth of the global rate still leaves room for ten busy senders.
pub const DEFAULT_PER_KEY_RATE: u32 = 100;
/// Default burst per key: a traceroute round (3 probes per hop) several times over.
pub const DEFAULT_PER_KEY_BURST: u32 = 20;
/// Default number of buckets of a keyed limiter (16 bytes each).
pub const DEFAULT_KEYED_BUCKETS: usize = 256;

/// Rate and burst of a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketConfig {
    /// Tokens added per second. 0: the bucket never refills.
    pub rate_per_sec: u32,
    /// Most tokens the bucket holds; also how many it starts with. 0: never allows.
    pub burst: u32,
}

impl BucketConfig {
    /// The global ICMP error budget ([`DEFAULT_GLOBAL_RATE`], [`DEFAULT_GLOBAL_BURST`]).
    pub const ICMP_GLOBAL: BucketConfig = BucketConfig {
        rate_per_sec: DEFAULT_GLOBAL_RATE,
        burst: DEFAULT_GLOBAL_BURST,
    };
    /// The per-source ICMP error budget ([`DEFAULT_PER_KEY_RATE`], [`DEFAULT_PER_KEY_BURST`]).
    pub const ICMP_PER_SOURCE: BucketConfig = BucketConfig {
        rate_per_sec: DEFAULT_PER_KEY_RATE,
        burst: DEFAULT_PER_KEY_BURST,
    };

    /// Capacity in nano-tokens; `u32::MAX * 10^9` fits in a `u64`.
    #[inline]
    const fn capacity(self) -> u64 {
        self.burst as u64 * UNIT
    }
}

/// The mutable part of a bucket, kept apart from the configuration so a keyed limiter
/// stores the configuration once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BucketState {
    credit: u64,
    last_ns: u64,
}

impl BucketState {
    const fn full(config: BucketConfig) -> Self {
        BucketState {
            credit: config.capacity(),
            last_ns: 0,
        }
    }

    #[inline]
    fn allow(&mut self, config: BucketConfig, now_ns: u64) -> bool {
        // A clock that goes backwards (another worker's timestamp, a caller bug) adds
        // nothing and does not move `last_ns` back, so the same interval is never credited
        // twice.
        if now_ns > self.last_ns {
            let elapsed = now_ns - self.last_ns;
            let refill = elapsed.saturating_mul(u64::from(config.rate_per_sec));
            self.credit = self.credit.saturating_add(refill).min(config.capacity());
            self.last_ns = now_ns;
        }
        if self.credit >= UNIT {
            self.credit -= UNIT;
            true
        } else {
            false
        }
    }
}

/// A token bucket: allows `burst` events at once and `rate_per_sec` on average.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    config: BucketConfig,
    state: BucketState,
}

impl TokenBucket {
    /// A full bucket. Its clock starts at 0, so the first call's time only adds credit to
    /// a bucket that is already full.
    pub const fn new(config: BucketConfig) -> Self {
        TokenBucket {
            config,
            state: BucketState::full(config),
        }
    }

    /// The configuration.
    pub const fn config(&self) -> BucketConfig {
        self.config
    }

    /// Takes a token if there is one at `now_ns` (monotonic nanoseconds).
    #[inline]
    pub fn allow(&mut self, now_ns: u64) -> bool {
        self.state.allow(self.config, now_ns)
    }

    /// Whether [`TokenBucket::allow`] would give a token at `now_ns`, taking none.
    pub fn would_allow(&self, now_ns: u64) -> bool {
        let mut state = self.state;
        state.allow(self.config, now_ns)
    }
}

impl Default for TokenBucket {
    /// The global ICMP error budget.
    fn default() -> Self {
        Self::new(BucketConfig::ICMP_GLOBAL)
    }
}

/// `N` token buckets with the same configuration, picked by a seeded hash of a 32-bit key
/// (an IPv4 address, a port number).
///
/// Keys that hash to the same bucket share it: a noisy key can use up the budget of the
/// keys it collides with, roughly `1/N` of the others, but colliding keys never get more
/// than one bucket's worth together. The alternative, remembering the key in the slot and
/// resetting it when another key arrives, would let two colliding senders refill each
/// other's bucket on every packet and escape the limit. The seed (pick it at random at
/// start-up) keeps an outsider from choosing source addresses that collide with a victim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyedLimiter<const N: usize> {
    config: BucketConfig,
    seed: u32,
    buckets: [BucketState; N],
}

impl<const N: usize> KeyedLimiter<N> {
    /// `N` full buckets.
    pub const fn new(config: BucketConfig, seed: u32) -> Self {
        const { assert!(N > 0, "a keyed limiter needs at least one bucket") };
        KeyedLimiter {
            config,
            seed,
            buckets: [BucketState::full(config); N],
        }
    }

    /// The configuration every bucket uses.
    pub const fn config(&self) -> BucketConfig {
        self.config
    }

    /// The bucket `key` uses, in `0..N`.
    #[inline]
    pub fn slot(&self, key: u32) -> usize {
        // Multiplicative hashing (Knuth's golden-ratio constant) spreads nearby addresses
        // over the high bits; mapping the high 32 bits onto 0..N by multiply-shift (Lemire)
        // needs no division and no power-of-two N.
        let h = (key ^ self.seed).wrapping_mul(0x9e37_79b1);
        let h = h ^ (h >> 15);
        ((u64::from(h) * N as u64) >> 32) as usize
    }

    /// Takes a token from `key`'s bucket if it has one at `now_ns` (monotonic nanoseconds).
    #[inline]
    pub fn allow(&mut self, key: u32, now_ns: u64) -> bool {
        let slot = self.slot(key);
        let config = self.config;
        // `slot` is below N by construction; `get_mut` keeps that from being a panic site.
        self.buckets
            .get_mut(slot)
            .is_some_and(|b| b.allow(config, now_ns))
    }

    /// Whether [`KeyedLimiter::allow`] would give `key` a token at `now_ns`, taking none.
    pub fn would_allow(&self, key: u32, now_ns: u64) -> bool {
        let mut bucket = self.buckets.get(self.slot(key)).copied();
        bucket
            .as_mut()
            .is_some_and(|b| b.allow(self.config, now_ns))
    }
}

impl Default for KeyedLimiter<DEFAULT_KEYED_BUCKETS> {
    /// The per-source ICMP error budget with seed 0; seed it with [`KeyedLimiter::new`]
    /// where senders are not trusted.
    fn default() -> Self {
        Self::new(BucketConfig::ICMP_PER_SOURCE, 0)
    }
}

/// A byte policer's rate and burst, in Neutron's units: kilobits of 1000 bits (as OVS's
/// `ingress_policing_rate` and tc's `kbit`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ByteRate {
    /// Average rate in kbit/s. 0 never refills.
    pub max_kbps: u32,
    /// Bucket size in kbit: what may pass at once after an idle spell.
    pub burst_kbit: u32,
}

/// Credit units of a [`ByteBucket`] per byte. The unit is chosen so that a rate of `k`
/// kbit/s adds exactly `k` units per nanosecond (`k * 1000 / 8` bytes per 10^9 ns, so a
/// byte is `8 * 10^6` units): refilling is one integer multiplication, and a burst of
/// `b` kbit is `b * 10^9` units, which fits a `u64` for every `u32` burst.
const UNITS_PER_BYTE: u64 = 8_000_000;
/// Credit units per kbit of burst.
const UNITS_PER_KBIT: u64 = 1_000_000_000;

/// A token bucket counting bytes, for policing a port's traffic (Neutron's
/// `bandwidth_limit` rules). A packet passes when the bucket holds its length, and takes
/// it; a packet larger than the whole bucket never passes, as with tc's policer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ByteBucket {
    rate: ByteRate,
    credit: u64,
    last_ns: u64,
}

impl ByteBucket {
    /// A full bucket for `rate`, its clock at `now_ns`.
    pub const fn full(rate: ByteRate, now_ns: u64) -> Self {
        ByteBucket {
            rate,
            credit: rate.burst_kbit as u64 * UNITS_PER_KBIT,
            last_ns: now_ns,
        }
    }

    /// The rate it polices to.
    pub const fn rate(&self) -> ByteRate {
        self.rate
    }

    /// Takes `bytes` if the bucket holds them at `now_ns` (monotonic nanoseconds).
    #[inline]
    pub fn allow(&mut self, now_ns: u64, bytes: u32) -> bool {
        let capacity = u64::from(self.rate.burst_kbit) * UNITS_PER_KBIT;
        // As in `BucketState::allow`: a clock going backwards adds nothing.
        if now_ns > self.last_ns {
            let refill = (now_ns - self.last_ns).saturating_mul(u64::from(self.rate.max_kbps));
            self.credit = self.credit.saturating_add(refill).min(capacity);
            self.last_ns = now_ns;
        }
        let cost = u64::from(bytes) * UNITS_PER_BYTE;
        if self.credit >= cost {
            self.credit -= cost;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: u64 = 1_000_000_000;

    fn bucket(rate_per_sec: u32, burst: u32) -> TokenBucket {
        TokenBucket::new(BucketConfig {
            rate_per_sec,
            burst,
        })
    }

    #[test]
    fn burst_then_rate_over_a_second() {
        let mut b = TokenBucket::default();
        let start = 5 * SEC;
        let burst = (0..100).filter(|_| b.allow(start)).count();
        assert_eq!(burst, 50);
        // Hammer it every 100 µs for one simulated second, 10 tries each time.
        let mut allowed = 0;
        for step in 1..=10_000u64 {
            let now = start + step * 100_000;
            allowed += (0..10).filter(|_| b.allow(now)).count();
        }
        assert_eq!(allowed, 1000);
        assert!(!b.allow(start + SEC));
    }

    #[test]
    fn refills_only_up_to_burst() {
        let mut b = bucket(10, 3);
        assert_eq!((0..10).filter(|_| b.allow(0)).count(), 3);
        assert!(!b.allow(0));
        // 100 ms is one token.
        assert!(!b.allow(SEC / 10 - 1));
        assert!(b.allow(SEC / 10));
        assert!(!b.allow(SEC / 10));
        // An hour idle fills it to 3, not 36000.
        let later = 3600 * SEC;
        assert_eq!((0..10).filter(|_| b.allow(later)).count(), 3);
    }

    #[test]
    fn clock_going_backwards_adds_nothing() {
        let mut b = bucket(1, 1);
        assert!(b.allow(10 * SEC));
        assert!(!b.allow(SEC));
        assert!(!b.allow(10 * SEC + SEC / 2));
        // The half second before the backwards step is not credited twice.
        assert!(b.allow(11 * SEC));
        assert!(!b.allow(11 * SEC));
    }

    #[test]
    fn degenerate_configs() {
        let mut never = bucket(1000, 0);
        assert!(!never.allow(0) && !never.allow(u64::MAX));
        let mut once = bucket(0, 2);
        assert!(once.allow(0) && once.allow(SEC) && !once.allow(u64::MAX));
        let mut huge = bucket(u32::MAX, u32::MAX);
        assert!(huge.allow(u64::MAX));
        assert!(huge.allow(u64::MAX));
    }

    #[test]
    fn keyed_limiter_isolates_keys() {
        let mut l = KeyedLimiter::<256>::new(
            BucketConfig {
                rate_per_sec: 10,
                burst: 5,
            },
            0x5eed_1234,
        );
        let noisy = u32::from(std::net::Ipv4Addr::new(198, 18, 1, 66));
        let quiet = (1..=255u32)
            .map(|i| u32::from(std::net::Ipv4Addr::new(198, 18, 1, i as u8)))
            .find(|&k| l.slot(k) != l.slot(noisy))
            .unwrap();
        let t = 7 * SEC;
        assert_eq!((0..1000).filter(|_| l.allow(noisy, t)).count(), 5);
        assert_eq!((0..1000).filter(|_| l.allow(quiet, t)).count(), 5);
        // A second later each key's bucket is full again, and only its own.
        assert_eq!((0..1000).filter(|_| l.allow(noisy, t + SEC)).count(), 5);
        assert_eq!((0..1000).filter(|_| l.allow(quiet, t + SEC)).count(), 5);
    }

    #[test]
    fn colliding_keys_share_one_bucket() {
        let mut l = KeyedLimiter::<4>::new(
            BucketConfig {
                rate_per_sec: 1,
                burst: 4,
            },
            99,
        );
        let a = 1u32;
        let b = (2u32..).find(|&k| l.slot(k) == l.slot(a)).unwrap();
        let together = (0..10)
            .flat_map(|_| [a, b])
            .filter(|&k| l.allow(k, 0))
            .count();
        assert_eq!(together, 4);
    }

    #[test]
    fn slots_spread_and_depend_on_the_seed() {
        let l = KeyedLimiter::<64>::default_with_seed(1);
        let mut used = [false; 64];
        for i in 0..=255u8 {
            used[l.slot(u32::from(std::net::Ipv4Addr::new(198, 18, 1, i)))] = true;
        }
        assert!(used.iter().filter(|&&u| u).count() > 48);
        let other = KeyedLimiter::<64>::default_with_seed(2);
        let differ = (0..256u32).filter(|&k| l.slot(k) != other.slot(k)).count();
        assert!(differ > 128);
        let odd = KeyedLimiter::<7>::new(BucketConfig::ICMP_PER_SOURCE, 3);
        assert!((0..10_000u32).all(|k| odd.slot(k) < 7));
        let d = KeyedLimiter::default();
        assert_eq!(d.config(), BucketConfig::ICMP_PER_SOURCE);
        assert_eq!(TokenBucket::default().config(), BucketConfig::ICMP_GLOBAL);
    }

    impl<const N: usize> KeyedLimiter<N> {
        fn default_with_seed(seed: u32) -> Self {
            Self::new(BucketConfig::ICMP_PER_SOURCE, seed)
        }
    }

    #[test]
    fn byte_bucket_passes_its_burst_then_its_rate_to_the_byte() {
        // 8000 kbit/s is 1_000_000 bytes/s; a burst of 80 kbit is 10_000 bytes.
        let rate = ByteRate {
            max_kbps: 8000,
            burst_kbit: 80,
        };
        let mut b = ByteBucket::full(rate, 5 * SEC);
        assert_eq!((0..1000).filter(|_| b.allow(5 * SEC, 100)).count(), 100);
        // One millisecond is 1000 bytes: ten more, not eleven.
        let t = 5 * SEC + SEC / 1000;
        assert_eq!((0..1000).filter(|_| b.allow(t, 100)).count(), 10);
        // A frame larger than the bucket never passes, however long the wait.
        assert!(!b.allow(100 * SEC, 10_001));
        assert!(b.allow(100 * SEC, 10_000));
        assert!(!b.allow(50 * SEC, 1), "a clock going back adds nothing");
    }

    proptest! {
        #[test]
        fn never_more_than_burst_plus_rate(
            rate in 0u32..5000,
            burst in 0u32..100,
            steps in proptest::collection::vec((0u64..50_000_000, 0usize..20), 1..200),
        ) {
            let mut b = bucket(rate, burst);
            let start = 1_000u64;
            let mut now = start;
            let mut allowed = 0u64;
            for (dt, tries) in steps {
                now += dt;
                allowed += (0..tries).filter(|_| b.allow(now)).count() as u64;
            }
            let bound = u64::from(burst) + (now - start) * u64::from(rate) / SEC;
            prop_assert!(allowed <= bound, "{} > {}", allowed, bound);
        }

        #[test]
        fn byte_bucket_never_more_than_burst_plus_rate(
            kbps in 1u32..100_000,
            burst in 0u32..10_000,
            steps in proptest::collection::vec((0u64..5_000_000, 60u32..1600), 1..300),
        ) {
            let start = SEC;
            let mut b = ByteBucket::full(ByteRate { max_kbps: kbps, burst_kbit: burst }, start);
            let mut now = start;
            let mut passed = 0u64;
            for (dt, len) in steps {
                now += dt;
                if b.allow(now, len) {
                    passed += u64::from(len);
                }
            }
            // In bits: the burst plus what the rate adds over the time elapsed.
            let bound = u64::from(burst) * 1000 + (now - start) * u64::from(kbps) / 1_000_000;
            prop_assert!(passed * 8 <= bound, "{} > {}", passed * 8, bound);
        }

        #[test]
        fn keyed_never_panics(keys in proptest::collection::vec(any::<u32>(), 1..100), seed in any::<u32>(), now in any::<u64>()) {
            let mut l = KeyedLimiter::<5>::new(BucketConfig::ICMP_PER_SOURCE, seed);
            for k in keys {
                prop_assert!(l.slot(k) < 5);
                let _ = l.allow(k, now);
            }
        }
    }
}
