//! The instance id's signature Nova checks (`X-Instance-ID-Signature`): HMAC-SHA256 of the
//! id keyed with `metadata_proxy_shared_secret`, in lower-case hex, as Neutron's metadata
//! agent computes it.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// HMAC-SHA256 of `instance_id` under `secret`, hex.
pub fn sign_instance_id(secret: &[u8], instance_id: &str) -> String {
    // HMAC takes a key of any length (RFC 2104 hashes longer ones): `new_from_slice`
    // cannot fail for it.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(instance_id.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_4231_test_case_2() {
        // Key "Jefe", data "what do ya want for nothing?" (RFC 4231 §4.3).
        assert_eq!(
            sign_instance_id(b"Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn pythons_hmac_agrees() {
        // /usr/bin/python3: hmac.new(b"s3cret", b"inst-1", hashlib.sha256).hexdigest()
        assert_eq!(
            sign_instance_id(b"s3cret", "inst-1"),
            "0423ac5ab426fe85654f33cf6ebc38df4ce8ffe5bf842017ce9f21a5bd299eae"
        );
    }
}
