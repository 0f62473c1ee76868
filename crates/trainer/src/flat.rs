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

use tch::{Kind, Tensor};

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
    /// The indices of its parameters in [`FlatLayout::members`].
    pub members: std::ops::Range<usize>,
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
    /// each group in name order.
    pub fn of(variables: &[(String, Tensor)]) -> Self {
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
                groups.push(Group {
                    decayed,
                    offset: group_offset,
                    numel: offset - group_offset,
                    members,
                });
            }
        }
        Self { members, groups }
    }

    /// The number of elements of all parameters.
    pub fn numel(&self) -> i64 {
        self.members.iter().map(|m| m.numel).sum()
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

    /// Every group's view of `flat`, in group order.
    pub fn group_views(&self, flat: &Tensor) -> Vec<Tensor> {
        self.groups.iter().map(|g| flat.narrow(0, g.offset, g.numel)).collect()
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
        let layout = FlatLayout::of(&variables);
        let names: Vec<&str> = layout.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a.weight", "wte", "a.bias", "b.bias"]);
        let offsets: Vec<i64> = layout.members.iter().map(|m| m.offset).collect();
        assert_eq!(offsets, [0, 6, 14, 16]);
        assert_eq!(layout.numel(), 19);
        assert_eq!(layout.groups.len(), 2);
        assert!(layout.groups[0].decayed && !layout.groups[1].decayed);
        assert_eq!((layout.groups[1].offset, layout.groups[1].numel), (14, 5));
        let flat = Tensor::arange(19, (Kind::Float, Device::Cpu));
        let views = layout.member_views(&flat);
        assert_eq!(views[1].size(), [4, 2]);
        assert_eq!(views[1].double_value(&[0, 1]), 7.0);
        assert_eq!(layout.group_views(&flat)[1].double_value(&[0]), 14.0);
    }
}
