//! The output buffer of a kernel call whose parallel pieces write disjoint elements of it (the
//! skinny and packed matmuls' column ranges, the fused attention's (sequence, head) units): a
//! raw pointer, since the pieces cannot each hold a `&mut` to the same slice.

/// A call's output, shared by its pieces; each element is written by one piece only.
#[derive(Clone, Copy)]
pub(super) struct DisjointOut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: pieces write disjoint elements, and the buffer outlives the pool's call, which
// returns only when every piece is done.
unsafe impl Send for DisjointOut {}
unsafe impl Sync for DisjointOut {}

impl DisjointOut {
    pub(super) fn new(y: &mut [f32]) -> Self {
        DisjointOut {
            ptr: y.as_mut_ptr(),
            len: y.len(),
        }
    }

    /// Writes y[idx] (checked against the length).
    ///
    /// # Safety
    /// No other piece may access `idx` concurrently.
    #[inline(always)]
    pub(super) unsafe fn write(self, idx: usize, v: f32) {
        assert!(
            idx < self.len,
            "kernel output index {idx} out of range {}",
            self.len
        );
        // SAFETY: in bounds (checked above); exclusivity is the caller's promise.
        unsafe { *self.ptr.add(idx) = v };
    }

    /// Writes y[at..at + N] (checked against the length): [`Self::write_slice`] with the length
    /// known when compiling, so the copy is a few vector moves, not a `memmove` call (a decode
    /// step's packed matmuls write ≈ 90 000 16-float panels at batch 8).
    ///
    /// # Safety
    /// No other piece may access those elements concurrently.
    #[inline(always)]
    pub(super) unsafe fn write_array<const N: usize>(self, at: usize, values: &[f32; N]) {
        assert!(
            at + N <= self.len,
            "kernel output range {at}..{} out of range {}",
            at + N,
            self.len
        );
        // SAFETY: as in write_slice.
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), self.ptr.add(at), N) };
    }

    /// Writes y[at..at + values.len()] (checked against the length).
    ///
    /// # Safety
    /// No other piece may access those elements concurrently.
    #[inline(always)]
    pub(super) unsafe fn write_slice(self, at: usize, values: &[f32]) {
        assert!(
            at + values.len() <= self.len,
            "kernel output range {at}..{} out of range {}",
            at + values.len(),
            self.len
        );
        // SAFETY: in bounds (checked above); exclusivity is the caller's promise; a caller's
        // values never alias the output (they are its own scratch).
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), self.ptr.add(at), values.len()) };
    }
}
