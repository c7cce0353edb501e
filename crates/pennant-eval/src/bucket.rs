//! LaunchDarkly's bucketing: a context's position in [0, 1) from SHA-1 of `prefix.value`.

use sha1::{Digest, Sha1};

use crate::attr_ref::{AttrRef, AttrRefError};
use crate::context::{Context, KindName};
use crate::value::{Bucketable, bucketable};

/// 2^60 - 1 as f32, the divisor LaunchDarkly's engines use (in f32, which matters at bucket boundaries).
const BUCKET_SCALE: f32 = 0x0FFF_FFFF_FFFF_FFFF_u64 as f32;

/// The bucket in [0, 1) for a hash prefix (`seed`, or `key.salt`) and an identifier.
pub fn bucket_value(key: &str, salt: &str, seed: Option<i64>, id: &str) -> f32 {
    let mut seed_buf = itoa::Buffer::new();
    match seed {
        Some(seed) => bucket_of(&[seed_buf.format(seed), id]),
        None => bucket_of(&[key, salt, id]),
    }
}

/// The bucket for `parts` joined with dots: the first 15 hex digits of its SHA-1 (the top 60 bits) as a
/// fraction of 2^60 - 1.
#[inline]
fn bucket_of(parts: &[&str]) -> f32 {
    let value = sha1_head(parts) >> 4;
    #[allow(clippy::cast_precision_loss)]
    let value = value as f32;
    value / BUCKET_SCALE
}

/// SHA-1's initial state (FIPS 180-4, 5.3.1).
const SHA1_INIT: [u32; 5] = [0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476, 0xC3D2_E1F0];

/// The longest message that fits in two blocks with SHA-1's padding (a 0x80 byte and a 64-bit length).
const TWO_BLOCKS: usize = 2 * 64 - 9;

/// The first 8 bytes, big-endian, of the SHA-1 digest of `parts` joined with dots. Bucketing hashes are short
/// (`key.salt.id`), so the padded message is laid out on the stack and handed to the compression function
/// directly: the streaming hasher's buffering and finalisation cost about as much as the compression itself.
/// Inlined, like `context_bucket`, into the rollout code: a rollout evaluation is short enough that the calls'
/// register saves and reloads were a measurable share of it.
#[inline(always)]
fn sha1_head(parts: &[&str]) -> u64 {
    let len = parts.iter().map(|p| p.len() + 1).sum::<usize>().saturating_sub(1);
    if len > TWO_BLOCKS {
        let mut hasher = Sha1::new();
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                hasher.update(b".");
            }
            hasher.update(part.as_bytes());
        }
        let digest = hasher.finalize();
        let mut head = [0u8; 8];
        head.copy_from_slice(&digest[..8]);
        return u64::from_be_bytes(head);
    }
    let mut blocks = [[0u8; 64]; 2];
    let used = if len + 9 <= 64 { 1 } else { 2 };
    let bytes = blocks.as_flattened_mut();
    let mut at = 0;
    for part in parts {
        if at > 0 {
            put(bytes, at - 1, b".");
        }
        put(bytes, at, part.as_bytes());
        at += part.len() + 1;
    }
    put(bytes, len, &[0x80]);
    let bit_len = (len as u64) * 8;
    put(bytes, used * 64 - 8, &bit_len.to_be_bytes());
    let mut state = SHA1_INIT;
    sha1::block_api::compress(&mut state, blocks.get(..used).unwrap_or_default());
    (u64::from(state[0]) << 32) | u64::from(state[1])
}

/// Writes `src` into `dst` at `at` (which the caller has sized to fit). Keys, salts and ids are mostly under 16
/// bytes, and two overlapping word copies inline are cheaper than a `memcpy` call.
#[inline(always)]
fn put(dst: &mut [u8], at: usize, src: &[u8]) {
    let Some(dst) = dst.get_mut(at..at + src.len()) else { return };
    match src.len() {
        0 => {}
        1..4 => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = *s;
            }
        }
        4..8 => {
            copy_chunk::<4>(dst.first_chunk_mut(), src.first_chunk());
            copy_chunk::<4>(dst.last_chunk_mut(), src.last_chunk());
        }
        8..=16 => {
            copy_chunk::<8>(dst.first_chunk_mut(), src.first_chunk());
            copy_chunk::<8>(dst.last_chunk_mut(), src.last_chunk());
        }
        _ => dst.copy_from_slice(src),
    }
}

#[inline]
fn copy_chunk<const N: usize>(dst: Option<&mut [u8; N]>, src: Option<&[u8; N]>) {
    if let (Some(d), Some(s)) = (dst, src) {
        *d = *s;
    }
}

/// Which kind, attribute and hash prefix to bucket by.
pub(crate) struct BucketSpec<'a> {
    pub is_experiment: bool,
    pub seed: Option<i64>,
    pub kind: &'a KindName,
    pub key: &'a str,
    pub salt: &'a str,
    pub bucket_by: Option<&'a AttrRef>,
}

/// The bucket for a context, `Ok(None)` when the context has no individual context of the kind, and an error
/// for an invalid `bucketBy` reference. A value that cannot be bucketed (not a string or an integer) gives 0.
#[inline(always)]
pub(crate) fn context_bucket(context: &Context, spec: &BucketSpec<'_>) -> Result<Option<f32>, AttrRefError> {
    // Experiments always bucket by key.
    let by_key = spec.is_experiment || spec.bucket_by.is_none();
    if !by_key && let Some(r) = spec.bucket_by {
        r.components()?;
    }
    let Some(individual) = context.individual_of(spec.kind) else { return Ok(None) };
    let value = match spec.bucket_by {
        Some(r) if !by_key => individual.get(r),
        _ => Some(individual.key_value()),
    };
    let Some(id) = value.and_then(bucketable) else { return Ok(Some(0.0)) };
    let mut int_buf = itoa::Buffer::new();
    let id = match id {
        Bucketable::Str(s) => s,
        Bucketable::Int(i) => int_buf.format(i),
    };
    let mut seed_buf = itoa::Buffer::new();
    Ok(Some(match spec.seed {
        Some(seed) => bucket_of(&[seed_buf.format(seed), id]),
        None => bucket_of(&[spec.key, spec.salt, id]),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_vectors() {
        // From LaunchDarkly's published bucketing tests.
        assert_eq!(bucket_value("hashKey", "saltyA", None, "userKeyA"), 0.421_575_87);
        assert_eq!(bucket_value("hashKey", "saltyA", None, "userKeyB"), 0.670_848_5);
        assert_eq!(bucket_value("hashKey", "saltyA", None, "userKeyC"), 0.103_431_06);
        assert_eq!(bucket_value("hashKey", "saltyA", Some(61), "userKeyA"), 0.098_012_07);
        assert_eq!(bucket_value("hashKey", "saltyA", Some(61), "userKeyB"), 0.144_837_77);
        assert_eq!(bucket_value("hashKey", "saltyA", Some(61), "userKeyC"), 0.924_264_1);
        assert_eq!(bucket_value("hashKey", "saltyA", None, "33333"), 0.547_714_23);
        assert_eq!(bucket_value("hashKey", "saltyA", None, "99999"), 0.730_965_8);
    }

    #[test]
    fn one_shot_sha1_agrees_with_the_streaming_hasher_at_every_length() {
        let text = "0123456789abcdef".repeat(12);
        for len in 0..text.len() {
            let (a, b) = text[..len].split_at(len / 3);
            let digest = Sha1::digest(format!("{a}.{b}").as_bytes());
            let mut head = [0u8; 8];
            head.copy_from_slice(&digest[..8]);
            assert_eq!(sha1_head(&[a, b]), u64::from_be_bytes(head), "{len}");
            let digest = Sha1::digest(&text.as_bytes()[..len]);
            head.copy_from_slice(&digest[..8]);
            assert_eq!(sha1_head(&[&text[..len]]), u64::from_be_bytes(head), "{len}");
        }
    }
}
