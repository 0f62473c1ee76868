//! The engine of a run alone: rank 0 of 1.

use crate::{check_root, shard_len, Collective, CollectiveError};

/// Rank 0 of a world of one: every sum is the identity, a broadcast keeps the bytes, a
/// gather returns them alone, and a barrier returns at once. What the trainer did before
/// data parallelism, behind the same trait.
#[derive(Debug, Default, Clone, Copy)]
pub struct Single;

impl Single {
    /// The engine of a single process.
    pub fn new() -> Self {
        Single
    }
}

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_sum(&mut self, _values: &mut [f32]) -> Result<(), CollectiveError> {
        Ok(())
    }

    fn all_reduce_sum_f64(&mut self, _values: &mut [f64]) -> Result<(), CollectiveError> {
        Ok(())
    }

    /// The sum over one rank is the buffer itself: nothing is read or written, so a
    /// single-GPU run can take the same path as a multi-GPU one.
    unsafe fn all_reduce_sum_device(
        &mut self,
        _ptr: u64,
        _len: usize,
    ) -> Result<(), CollectiveError> {
        Ok(())
    }

    /// One shard, the whole buffer: already its own sum.
    fn reduce_scatter_sum(&mut self, values: &mut [f32]) -> Result<(), CollectiveError> {
        shard_len(self.name(), "reduce_scatter_sum", values.len(), 1).map(drop)
    }

    /// One shard, already in place.
    fn all_gather_shards(&mut self, values: &mut [u8]) -> Result<(), CollectiveError> {
        shard_len(self.name(), "all_gather_shards", values.len(), 1).map(drop)
    }

    unsafe fn reduce_scatter_sum_device(
        &mut self,
        _ptr: u64,
        _len: usize,
    ) -> Result<(), CollectiveError> {
        Ok(())
    }

    unsafe fn all_gather_shards_device(
        &mut self,
        _ptr: u64,
        _bytes: usize,
    ) -> Result<(), CollectiveError> {
        Ok(())
    }

    fn broadcast_bytes(
        &mut self,
        _bytes: &mut Vec<u8>,
        root: usize,
    ) -> Result<(), CollectiveError> {
        check_root(self.name(), root, 1)
    }

    fn all_gather_bytes(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CollectiveError> {
        Ok(vec![bytes.to_vec()])
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        "single"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_rank_zero_of_one() {
        let single = Single::new();
        assert_eq!((single.rank(), single.world_size(), single.name()), (0, 1, "single"));
    }

    #[test]
    fn sums_are_the_identity() {
        let mut single = Single::new();
        let mut values = vec![1.5f32, -2.0, 0.0, f32::MAX];
        single.all_reduce_sum(&mut values).unwrap();
        assert_eq!(values, [1.5, -2.0, 0.0, f32::MAX]);
        let mut exact = vec![1e300f64, 3.0];
        single.all_reduce_sum_f64(&mut exact).unwrap();
        assert_eq!(exact, [1e300, 3.0]);
        single.all_reduce_sum(&mut []).unwrap();
    }

    #[test]
    fn device_sum_touches_nothing() {
        // A null pointer is fine: the sum over one rank reads and writes nothing.
        unsafe { Single::new().all_reduce_sum_device(0, 1 << 20) }.unwrap();
        unsafe { Single::new().reduce_scatter_sum_device(0, 1 << 20) }.unwrap();
        unsafe { Single::new().all_gather_shards_device(0, 1 << 20) }.unwrap();
    }

    #[test]
    fn one_shard_is_the_whole_buffer() {
        let mut single = Single::new();
        let mut values = vec![1.5f32, -2.0, 7.0];
        single.reduce_scatter_sum(&mut values).unwrap();
        assert_eq!(values, [1.5, -2.0, 7.0]);
        let mut bytes = b"weights".to_vec();
        single.all_gather_shards(&mut bytes).unwrap();
        assert_eq!(bytes, b"weights");
    }

    #[test]
    fn broadcast_from_rank_zero_keeps_the_bytes() {
        let mut single = Single::new();
        let mut bytes = b"config".to_vec();
        single.broadcast_bytes(&mut bytes, 0).unwrap();
        assert_eq!(bytes, b"config");
    }

    #[test]
    fn broadcast_from_a_missing_rank_is_an_error_naming_it() {
        let mut bytes = vec![1, 2, 3];
        let err = Single::new().broadcast_bytes(&mut bytes, 1).unwrap_err();
        assert!(matches!(err, CollectiveError::InvalidArgument { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "single: broadcast_bytes: root 1 is not a rank of a world of 1"
        );
        assert_eq!(bytes, [1, 2, 3]);
    }

    #[test]
    fn gather_returns_the_bytes_alone() {
        let mut single = Single::new();
        assert_eq!(single.all_gather_bytes(b"acc=0.5").unwrap(), vec![b"acc=0.5".to_vec()]);
        assert_eq!(single.all_gather_bytes(&[]).unwrap(), vec![Vec::<u8>::new()]);
    }

    #[test]
    fn barrier_returns() {
        Single::new().barrier().unwrap();
    }

    #[test]
    fn works_behind_the_trait_object() {
        let mut boxed: Box<dyn Collective> = Box::new(Single::new());
        let mut values = [2.0f32];
        boxed.all_reduce_sum(&mut values).unwrap();
        assert_eq!(values, [2.0]);
        assert_eq!(boxed.name(), "single");
    }
}
