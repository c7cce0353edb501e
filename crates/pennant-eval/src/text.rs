//! Comparisons of the short strings evaluation is made of: context kinds, attribute names, clause values.
//!
//! `==` on strings calls the C library's `memcmp` for any length. For up to 16 bytes, two overlapping word
//! compares inlined into the caller are several times cheaper than that call, and rules compare a handful of
//! short strings each.

/// Byte-wise string equality.
#[inline]
pub(crate) fn eq(a: &str, b: &str) -> bool {
    bytes_eq(a.as_bytes(), b.as_bytes())
}

/// Whether `s` starts with `prefix`.
#[inline]
pub(crate) fn starts_with(s: &str, prefix: &str) -> bool {
    s.as_bytes().get(..prefix.len()).is_some_and(|head| bytes_eq(head, prefix.as_bytes()))
}

/// Whether `s` ends with `suffix`.
#[inline]
pub(crate) fn ends_with(s: &str, suffix: &str) -> bool {
    let tail = s.len().checked_sub(suffix.len()).and_then(|start| s.as_bytes().get(start..));
    tail.is_some_and(|tail| bytes_eq(tail, suffix.as_bytes()))
}

#[inline]
fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    let len = a.len();
    if len != b.len() {
        return false;
    }
    if len >= 8 {
        if len > 16 {
            return a == b;
        }
        // The first and the last eight bytes overlap for lengths under 16 and together cover every byte.
        return word8(a.first_chunk()) == word8(b.first_chunk()) && word8(a.last_chunk()) == word8(b.last_chunk());
    }
    if len >= 4 {
        return word4(a.first_chunk()) == word4(b.first_chunk()) && word4(a.last_chunk()) == word4(b.last_chunk());
    }
    // Up to three bytes: the first, middle and last byte are all of them.
    a.first() == b.first() && a.get(len / 2) == b.get(len / 2) && a.last() == b.last()
}

#[inline]
fn word8(chunk: Option<&[u8; 8]>) -> u64 {
    chunk.map_or(0, |c| u64::from_ne_bytes(*c))
}

#[inline]
fn word4(chunk: Option<&[u8; 4]>) -> u32 {
    chunk.map_or(0, |c| u32::from_ne_bytes(*c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_std_for_every_length_and_position() {
        let base = "abcdefghijklmnopqrstuvwxyz0123456789";
        for len in 0..=base.len() {
            let a = &base[..len];
            assert!(eq(a, a));
            for at in 0..len {
                let mut changed = a.to_owned().into_bytes();
                changed[at] = b'_';
                let changed = String::from_utf8(changed).unwrap_or_default();
                assert!(!eq(a, &changed), "{a:?} vs {changed:?}");
            }
            for cut in 0..=len {
                assert_eq!(starts_with(a, &base[..cut]), a.starts_with(&base[..cut]));
                assert!(ends_with(a, &a[cut..]));
                assert_eq!(starts_with(&a[cut..], a), a[cut..].starts_with(a));
                assert_eq!(ends_with(&base[..cut], a), base[..cut].ends_with(a));
            }
            assert!(!eq(a, &base[..len.saturating_sub(1)]) || len == 0);
        }
        assert!(!ends_with("alice@example.com", "@corp1.example"));
        assert!(ends_with("alice@example.com", "@example.com"));
        assert!(starts_with("é", "é") && !starts_with("é", "e"));
    }
}
