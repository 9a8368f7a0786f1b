//! Asking the CPU for memory a loop will read soon: walks over 100,000 sockets in no useful
//! order spent most of their time waiting for memory, one miss after another.

/// How many items ahead of the one being read the next is asked for.
pub const AHEAD: usize = 4;

/// Asks for every cache line of `value`; a hint only, it reads nothing.
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let start = std::ptr::from_ref(value).cast::<i8>();
        for line in (0..size_of::<T>()).step_by(64) {
            // SAFETY: prefetching never faults, and every address is inside `value`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(line)) };
        }
    }
}
