//! The ranks of a data-parallel run: which process this is among how many, and the few
//! collective operations the trainer needs, on the engines of `coconut-collective`.
//!
//! Every rank holds the whole model and takes its share of every optimizer step's
//! micro-batches; one all-reduce per step sums the gradients, so every rank applies the
//! same update and the weights stay identical. Rank 0 alone touches the run folder (lock,
//! checkpoints, metrics, report).

use std::sync::Mutex;

use coconut_collective::{Collective, Single};
use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::adamw::AdamW;
use crate::error::TrainError;
use crate::flat::Partition;
use crate::gradients::Gradients;

/// This process's place among the ranks of the run, and the engine that connects them.
pub struct Ranks {
    engine: Mutex<Box<dyn Collective>>,
    // MPI, when it launched an NCCL run: kept (and finalised) until after the engine.
    _launcher: Option<Mutex<Box<dyn Collective>>>,
    rank: usize,
    world_size: usize,
    local_rank: usize,
}

impl std::fmt::Debug for Ranks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ranks {{ rank: {}, world_size: {} }}", self.rank, self.world_size)
    }
}

impl Ranks {
    /// One rank alone: every collective operation is a no-op.
    pub fn single() -> Self {
        Self::new(Box::new(Single::new()))
    }

    /// The ranks over `engine`.
    pub fn new(engine: Box<dyn Collective>) -> Self {
        Self::on_machine(engine, 0)
    }

    /// The ranks over `engine`, this one the `local_rank`-th of its machine.
    fn on_machine(engine: Box<dyn Collective>, local_rank: usize) -> Self {
        let (rank, world_size) = (engine.rank(), engine.world_size());
        Self { engine: Mutex::new(engine), _launcher: None, rank, world_size, local_rank }
    }

    /// The ranks this process was started among, talking through the engine that fits
    /// `device`:
    /// - started by `mpirun` (in a build with the `mpi` feature): MPI on the CPU, NCCL on
    ///   CUDA (its id broadcast with MPI);
    /// - with torchrun's environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
    ///   `MASTER_PORT`) on CUDA: NCCL, its id handed out by rank 0 at the rendezvous
    ///   address; on the CPU an error (launch CPU ranks with `mpirun` or
    ///   `--nproc-per-node`);
    /// - otherwise one rank alone.
    ///
    /// On CUDA each rank uses the GPU of its local rank ([`Ranks::device`]).
    pub fn from_launcher(device: Device) -> Result<Self, TrainError> {
        #[cfg(feature = "mpi")]
        if coconut_collective::Mpi::is_launched_by_mpirun() {
            let mut mpi = coconut_collective::Mpi::init().map_err(TrainError::Ranks)?;
            let local_rank = mpi.local_rank();
            if device.is_cuda() {
                let nccl = coconut_collective::Nccl::from_mpi(&mut mpi, local_rank)
                    .map_err(TrainError::Ranks)?;
                let mut ranks = Self::on_machine(Box::new(nccl), local_rank);
                ranks._launcher = Some(Mutex::new(Box::new(mpi)));
                return Ok(ranks);
            }
            return Ok(Self::on_machine(Box::new(mpi), local_rank));
        }
        if let Some(env) = coconut_collective::TorchrunEnv::from_env() {
            let env = env.map_err(TrainError::Ranks)?;
            if env.world_size > 1 {
                if !device.is_cuda() {
                    return Err(TrainError::Launch(
                        "torchrun's environment (WORLD_SIZE) on the CPU: its ranks talk \
                         through NCCL, which needs CUDA; launch CPU ranks with `cargo xtask \
                         train-all-stages --nproc-per-node N` or mpirun"
                            .to_string(),
                    ));
                }
                let timeout = std::time::Duration::from_secs(RENDEZVOUS_TIMEOUT_S);
                let nccl = coconut_collective::Nccl::from_torchrun(&env, timeout)
                    .map_err(TrainError::Ranks)?;
                return Ok(Self::on_machine(Box::new(nccl), env.local_rank));
            }
        }
        if cfg!(not(feature = "mpi"))
            && std::env::var_os("OMPI_COMM_WORLD_SIZE").is_some_and(|w| w != "1")
        {
            return Err(TrainError::Launch(
                "started by mpirun, but this binary was built without the `mpi` feature; \
                 `cargo xtask train-all-stages --nproc-per-node N` builds and launches its MPI \
                 flavour (or build it with `cargo build --release -p coconut-cli --features mpi`)"
                    .to_string(),
            ));
        }
        Ok(Self::single())
    }

    /// The device this rank trains on: on CUDA with several ranks, the GPU of its local
    /// rank whatever `configured` names; otherwise `configured`.
    pub fn device(&self, configured: Device) -> Device {
        match configured {
            Device::Cuda(_) if self.world_size > 1 => Device::Cuda(self.local_rank),
            other => other,
        }
    }

    /// This process's rank, from 0.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// Whether this is rank 0, the one that writes the run folder.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    fn engine(&self) -> std::sync::MutexGuard<'_, Box<dyn Collective>> {
        self.engine.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until every rank has come here.
    pub fn barrier(&self) -> Result<(), TrainError> {
        self.engine().barrier().map_err(TrainError::Ranks)
    }

    /// Sums `values` over the ranks, in place.
    pub fn sum(&self, values: &mut [f64]) -> Result<(), TrainError> {
        self.engine().all_reduce_sum_f64(values).map_err(TrainError::Ranks)
    }

    /// Rank 0's `bytes` on every rank.
    pub fn broadcast(&self, bytes: &mut Vec<u8>) -> Result<(), TrainError> {
        self.engine().broadcast_bytes(bytes, 0).map_err(TrainError::Ranks)
    }

    /// Every rank's `bytes`, in rank order, on every rank.
    pub fn gather(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, TrainError> {
        self.engine().all_gather_bytes(bytes).map_err(TrainError::Ranks)
    }

    /// Rank 0's values of every variable on every rank (after building a model, so that
    /// every rank starts from the same weights however its initialisation went).
    pub fn broadcast_variables(&self, vs: &VarStore) -> Result<(), TrainError> {
        if self.world_size == 1 {
            return Ok(());
        }
        let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        let flat = tch::no_grad(|| {
            let parts: Vec<Tensor> = variables
                .iter()
                .map(|(_, v)| v.to_device(Device::Cpu).to_kind(Kind::Float).flatten(0, -1))
                .collect();
            Tensor::cat(&parts, 0)
        });
        let mut bytes = vec![0u8; flat.numel() * 4];
        flat.copy_data_u8(&mut bytes, flat.numel());
        self.broadcast(&mut bytes)?;
        let flat = Tensor::from_data_size(&bytes, &[flat.numel() as i64], Kind::Float);
        let mut offset = 0;
        tch::no_grad(|| {
            for (_, v) in &variables {
                let n = v.numel() as i64;
                let part = flat.narrow(0, offset, n).view(v.size().as_slice());
                v.shallow_clone().copy_(&part.to_kind(v.kind()).to_device(v.device()));
                offset += n;
            }
        });
        Ok(())
    }

    /// The part of the optimizer state this rank holds: its own part when `shard` (ZeRO-1,
    /// `train.shard_optimizer`) and there are several ranks, else all of it.
    pub fn partition(&self, shard: bool) -> Partition {
        if shard && self.world_size > 1 {
            Partition { rank: self.rank, ranks: self.world_size }
        } else {
            Partition::WHOLE
        }
    }

    /// Sums the gradients of every rank into every rank's `grads`, together with
    /// `scalars` (the step's loss, token count, stop flag). For a whole `partition`, one
    /// all-reduce of the flat gradient buffer per optimizer step; for a rank's part, one
    /// reduce-scatter per group, after which only that part of `grads` holds the sums. A
    /// parameter keeps no gradient only when no rank had one (as with one rank, it is then
    /// not updated).
    pub fn sum_gradients(
        &self,
        grads: &mut Gradients,
        scalars: &mut [f64],
        partition: Partition,
    ) -> Result<(), TrainError> {
        if self.world_size == 1 {
            return Ok(());
        }
        // Present flags ride with the scalars, exactly (f64).
        let mut small: Vec<f64> = scalars.to_vec();
        small.extend(grads.present().iter().map(|&present| f64::from(u8::from(present))));
        let flat = grads.flat().shallow_clone(); // zero where a parameter has no gradient
        let mut engine = self.engine();
        engine.all_reduce_sum_f64(&mut small).map_err(TrainError::Ranks)?;
        if partition.is_whole() {
            in_place(&mut **engine, &flat, Op::AllReduce)?;
        } else {
            for group in grads.group_views() {
                in_place(&mut **engine, group, Op::ReduceScatter)?;
            }
        }
        drop(engine);
        scalars.copy_from_slice(&small[..scalars.len()]);
        let present: Vec<bool> = small[scalars.len()..].iter().map(|&p| p > 0.0).collect();
        grads.set_present(&present);
        Ok(())
    }

    /// Clips the summed gradients to the global norm `max_norm` (see
    /// [`Gradients::clip_norm`]); for a rank's part of a sharded optimizer, the norm's
    /// square is summed over the ranks and this rank's part alone is scaled.
    pub fn clip_gradients(
        &self,
        grads: &mut Gradients,
        max_norm: f64,
        optimizer: &AdamW,
    ) -> Result<(), TrainError> {
        let partition = optimizer.partition();
        if partition.is_whole() {
            grads.clip_norm(max_norm);
            return Ok(());
        }
        let parts: Vec<_> = (optimizer.layout().groups.iter())
            .map(|g| {
                let part = g.part(partition);
                g.offset + part.start..g.offset + part.end
            })
            .collect();
        grads.clip_norm_of_parts(max_norm, &parts, |squares| {
            in_place(&mut **self.engine(), squares, Op::AllReduce)
        })
    }

    /// After a sharded optimizer's step, every rank's part of the weights the model
    /// computes with, on every rank: one all-gather per group, in the compute kind. Nothing
    /// for a whole partition.
    pub fn gather_weights(&self, optimizer: &AdamW) -> Result<(), TrainError> {
        if optimizer.partition().is_whole() {
            return Ok(());
        }
        let mut engine = self.engine();
        for group in optimizer.layout().group_views(optimizer.weights()) {
            in_place(&mut **engine, &group, Op::AllGather)?;
        }
        Ok(())
    }

    /// The f32 master weights by name, on every rank: the optimizer's own when it holds
    /// them all, else gathered from the ranks' parts into `scratch`, whose buffer (idle
    /// between optimizer steps, and of the same layout) is borrowed so that a checkpoint
    /// needs no more device memory than training: its sums are cleared.
    pub fn gather_masters(
        &self,
        optimizer: &AdamW,
        scratch: &mut Gradients,
    ) -> Result<Vec<(String, Tensor)>, TrainError> {
        if let Some(masters) = optimizer.masters() {
            return Ok(masters);
        }
        let flat = scratch.borrow_buffer().shallow_clone();
        optimizer.write_master_parts(&flat);
        let mut engine = self.engine();
        for group in optimizer.layout().group_views(&flat) {
            in_place(&mut **engine, &group, Op::AllGather)?;
        }
        Ok(optimizer.named(&flat))
    }
}

/// A collective operation on a tensor's elements, in place.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// Every rank's sum (f32).
    AllReduce,
    /// This rank's shard of the sum (f32).
    ReduceScatter,
    /// Every rank's shard (any kind: the bytes).
    AllGather,
}

/// Runs `op` on the contiguous tensor `tensor` where it lives: as a host slice on the CPU,
/// by its device address on CUDA.
fn in_place(engine: &mut dyn Collective, tensor: &Tensor, op: Op) -> Result<(), TrainError> {
    assert!(tensor.is_contiguous(), "a collective on a strided tensor");
    let (ptr, numel) = (tensor.data_ptr(), tensor.numel());
    let bytes = numel * tensor.kind().elt_size_in_bytes();
    if matches!(op, Op::AllReduce | Op::ReduceScatter) {
        assert_eq!(tensor.kind(), Kind::Float, "sums are of f32");
    }
    let result =
        if tensor.device() == Device::Cpu {
            // SAFETY: `tensor` is a contiguous CPU tensor of `numel` elements (`bytes` bytes)
            // that nothing else reads or writes until the call returns.
            unsafe {
                match op {
                    Op::AllReduce => engine
                        .all_reduce_sum(std::slice::from_raw_parts_mut(ptr as *mut f32, numel)),
                    Op::ReduceScatter => engine
                        .reduce_scatter_sum(std::slice::from_raw_parts_mut(ptr as *mut f32, numel)),
                    Op::AllGather => engine
                        .all_gather_shards(std::slice::from_raw_parts_mut(ptr as *mut u8, bytes)),
                }
            }
        } else {
            // SAFETY: `tensor` is contiguous on the device, alive until the queued call has run
            // (the caller keeps it), and torch works on the default stream the engine uses.
            unsafe {
                match op {
                    Op::AllReduce => engine.all_reduce_sum_device(ptr as u64, numel),
                    Op::ReduceScatter => engine.reduce_scatter_sum_device(ptr as u64, numel),
                    Op::AllGather => engine.all_gather_shards_device(ptr as u64, bytes),
                }
            }
        };
    result.map_err(TrainError::Ranks)
}

/// How long the ranks of a torchrun launch wait for each other at the rendezvous.
const RENDEZVOUS_TIMEOUT_S: u64 = 300;
