//! The model's parameters laid out in flat buffers: one f32 buffer holds a value per
//! parameter element, in two contiguous groups (the decayed matrices and embeddings, then
//! the vectors AdamW does not decay), each parameter a contiguous range of its group.
//!
//! ```text
//! flat buffer:  [ group 0: h.0.attn.c_attn.weight | h.0.attn.c_proj.weight | ... | wte ]
//!               [ group 1: h.0.attn.c_attn.bias   | h.0.ln_1.bias          | ... ]
//! ```
//!
//! The gradients ([`crate::gradients::Gradients`]), the optimizer's master weights and
//! moments ([`crate::adamw::AdamW`]) and the model's own variables (views of the masters,
//! or of their bf16 copies) all use this one layout: an update is one fused kernel per
//! group, clipping reads one norm, and the all-reduce of data-parallel ranks sends one
//! buffer.
//!
//! When the optimizer state is sharded across ranks (ZeRO-1, [`Partition`]), each group is
//! split into one contiguous part per rank; the group is padded with zeros to a multiple of
//! the number of ranks, so that the parts are equal, as the collectives need:
//!
//! ```text
//! group 0 of 2 ranks:  [ rank 0's part | rank 1's part (its tail padding) ]
//! ```

use std::ops::Range;

use tch::{Kind, Tensor};

/// Every group's part is a multiple of this many elements. The fused AdamW kernel works
/// through a range in vector registers and finishes its odd end with scalar instructions,
/// which may round differently: parts that start and end on such multiples take every
/// element through the same instructions as the whole group does, so that a sharded update
/// is the whole update bit for bit.
pub const PART_ALIGNMENT: i64 = 64;

/// One parameter's place in the flat buffers.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// The variable's name (the checkpoint key).
    pub name: String,
    /// Its shape.
    pub shape: Vec<i64>,
    /// Its first element in the flat buffer.
    pub offset: i64,
    /// Its number of elements.
    pub numel: i64,
}

/// A contiguous range of the flat buffer whose parameters share their weight decay.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Whether AdamW's weight decay applies (parameters of two or more dimensions, as
    /// nanoGPT decays them).
    pub decayed: bool,
    /// The group's first element in the flat buffer.
    pub offset: i64,
    /// The group's number of elements.
    pub numel: i64,
    /// Its length in the flat buffer: `numel` padded to a multiple of [`PART_ALIGNMENT`]
    /// times the number of ranks the layout was made for (the padding holds zeros).
    pub padded: i64,
    /// The indices of its parameters in [`FlatLayout::members`].
    pub members: std::ops::Range<usize>,
}

impl Group {
    /// The part of the group (group-relative, padding included) that `partition`'s rank
    /// holds.
    ///
    /// # Panics
    /// If the group is not padded for `partition.ranks` ranks.
    pub fn part(&self, partition: Partition) -> Range<i64> {
        assert_eq!(self.padded, padded_len(self.numel, partition.ranks), "padded for other ranks");
        part_of(self.numel, partition)
    }
}

/// The length of a group of `numel` elements padded for `ranks` ranks.
fn padded_len(numel: i64, ranks: usize) -> i64 {
    let multiple = ranks.max(1) as u64 * PART_ALIGNMENT as u64;
    ((numel as u64).div_ceil(multiple) * multiple) as i64
}

/// The part (padding included) of a group of `numel` elements that `partition`'s rank
/// holds, whatever layout the group is in now: also the part a checkpoint saved by other
/// ranks holds.
pub fn part_of(numel: i64, partition: Partition) -> Range<i64> {
    let len = padded_len(numel, partition.ranks) / partition.ranks as i64;
    let start = partition.rank as i64 * len;
    start..start + len
}

/// Which part of the optimizer state a rank holds: part `rank` of `ranks` of every group
/// (ZeRO-1); [`Partition::WHOLE`] holds everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// This rank, `0..ranks`.
    pub rank: usize,
    /// The number of parts.
    pub ranks: usize,
}

impl Partition {
    /// One part, all of it: the optimizer of a run alone, or of replicated ranks.
    pub const WHOLE: Partition = Partition { rank: 0, ranks: 1 };

    /// Whether this is all of the state.
    pub fn is_whole(&self) -> bool {
        self.ranks == 1
    }
}

/// Where every parameter lives in the flat buffers.
#[derive(Debug, Clone, PartialEq)]
pub struct FlatLayout {
    /// Every parameter, group by group, by name within a group.
    pub members: Vec<Member>,
    /// The groups, decayed first; a group without parameters is left out.
    pub groups: Vec<Group>,
}

impl FlatLayout {
    /// The layout of `variables` (name, tensor): decayed parameters first, then the others,
    /// each group in name order, each padded to `ranks` equal parts of a multiple of
    /// [`PART_ALIGNMENT`] elements.
    pub fn of(variables: &[(String, Tensor)], ranks: usize) -> Self {
        let mut sorted: Vec<(&String, &Tensor)> = variables.iter().map(|(n, t)| (n, t)).collect();
        sorted.sort_by(|a, b| (a.1.dim() < 2, a.0).cmp(&(b.1.dim() < 2, b.0)));
        let (mut members, mut groups) = (Vec::new(), Vec::new());
        let mut offset = 0;
        for decayed in [true, false] {
            let first = members.len();
            let group_offset = offset;
            for (name, tensor) in sorted.iter().filter(|(_, t)| (t.dim() >= 2) == decayed) {
                let numel = tensor.numel() as i64;
                members.push(Member {
                    name: name.to_string(),
                    shape: tensor.size(),
                    offset,
                    numel,
                });
                offset += numel;
            }
            if members.len() > first {
                let members = first..members.len();
                let numel = offset - group_offset;
                let padded = padded_len(numel, ranks);
                offset = group_offset + padded;
                groups.push(Group { decayed, offset: group_offset, numel, padded, members });
            }
        }
        Self { members, groups }
    }

    /// The length of a flat buffer: every group with its padding.
    pub fn numel(&self) -> i64 {
        self.groups.iter().map(|g| g.padded).sum()
    }

    /// A zeroed flat buffer of this layout.
    pub fn zeros(&self, kind: Kind, device: tch::Device) -> Tensor {
        Tensor::zeros([self.numel()], (kind, device))
    }

    /// Every parameter's view of `flat`, in member order, shaped like the parameter.
    pub fn member_views(&self, flat: &Tensor) -> Vec<Tensor> {
        self.members
            .iter()
            .map(|m| flat.narrow(0, m.offset, m.numel).view(m.shape.as_slice()))
            .collect()
    }

    /// Every group's view of `flat`, padding included, in group order.
    pub fn group_views(&self, flat: &Tensor) -> Vec<Tensor> {
        self.groups.iter().map(|g| flat.narrow(0, g.offset, g.padded)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn matrices_first_then_vectors_each_a_contiguous_range() {
        let t = |shape: &[i64]| Tensor::zeros(shape, (Kind::Float, Device::Cpu));
        let variables = vec![
            ("b.bias".to_string(), t(&[3])),
            ("a.weight".to_string(), t(&[2, 3])),
            ("wte".to_string(), t(&[4, 2])),
            ("a.bias".to_string(), t(&[2])),
        ];
        let layout = FlatLayout::of(&variables, 1);
        let names: Vec<&str> = layout.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a.weight", "wte", "a.bias", "b.bias"]);
        // Each group padded to a multiple of 64 elements.
        let offsets: Vec<i64> = layout.members.iter().map(|m| m.offset).collect();
        assert_eq!(offsets, [0, 6, 64, 66]);
        assert_eq!(layout.numel(), 128);
        assert_eq!(layout.groups.len(), 2);
        assert!(layout.groups[0].decayed && !layout.groups[1].decayed);
        let group = &layout.groups[1];
        assert_eq!((group.offset, group.numel, group.padded), (64, 5, 64));
        let flat = Tensor::arange(128, (Kind::Float, Device::Cpu));
        let views = layout.member_views(&flat);
        assert_eq!(views[1].size(), [4, 2]);
        assert_eq!(views[1].double_value(&[0, 1]), 7.0);
        assert_eq!(layout.group_views(&flat)[1].double_value(&[0]), 64.0);
        assert_eq!(layout.groups[0].part(Partition::WHOLE), 0..64);

        // For 3 ranks, each group is 3 parts of 64.
        let sharded = FlatLayout::of(&variables, 3);
        let padded: Vec<(i64, i64, i64)> =
            sharded.groups.iter().map(|g| (g.offset, g.numel, g.padded)).collect();
        assert_eq!(padded, [(0, 14, 192), (192, 5, 192)]);
        assert_eq!(sharded.members[2].offset, 192, "the second group starts after the padding");
        let parts: Vec<_> =
            (0..3).map(|rank| sharded.groups[1].part(Partition { rank, ranks: 3 })).collect();
        assert_eq!(parts, [0..64, 64..128, 128..192]);
    }
}
