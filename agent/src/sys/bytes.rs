//! Plain-data values out of byte buffers the kernel filled (ring-buffer records).

/// A `T` from the start of `bytes`, or None when `bytes` is too short.
pub fn read_pod<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: the length is checked, the read is unaligned, and `aya::Pod` promises plain
    // data for which every bit pattern is valid.
    Some(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}
