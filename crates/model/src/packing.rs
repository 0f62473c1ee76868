//! Skipping the padding of a pass: its blocks run over the real tokens alone.
//!
//! A collated batch is a (B, T) grid, and without length grouping (the paper's runs) about a
//! quarter of it is padding (ProsQA, batches of 8 to 32). Everything in a block but attention
//! works token by token (the projections, the MLP, the norms, dropout), so it can run over
//! the N real tokens as an (N, C) matrix instead of (B, T, C). Only attention needs the grid:
//! its queries, keys and values are scattered into it (zero at padding, which the bias
//! hides from every real query), and its output is gathered back. The keys and values enter
//! the KV cache in the grid, as without packing, so the passes after a packed one do not
//! change.

use tch::{Device, Tensor};

/// The real tokens of one pass's (B, T) columns, and of the columns `[outputs_from, T)` whose
/// outputs the pass computes (see `forward_embeds_from` on [`crate::CausalLm`]).
#[derive(Debug)]
pub struct Packing {
    batch: i64,
    columns: i64,
    outputs_from: i64,
    tokens: Tensor,     // (N,) flat indices of the real tokens into the (B, T) grid
    read: Tensor,       // (M,) the real tokens of columns >= outputs_from, as indices into `tokens`
    read_cells: Tensor, // (M,) the same tokens' flat indices into the (B, T - outputs_from) grid
}

impl Packing {
    /// The packing of a pass over `columns` columns of `batch` rows, where `real[b * T + t]`
    /// says whether column t of row b holds a real token, for a pass that computes the
    /// outputs of columns `[outputs_from, T)`. The indices go to `device` without waiting.
    ///
    /// # Panics
    /// If `real` does not hold `batch * columns` cells or `outputs_from` is not a column.
    pub fn new(
        real: &[bool],
        batch: usize,
        columns: usize,
        outputs_from: usize,
        device: Device,
    ) -> Self {
        assert_eq!(real.len(), batch * columns, "one cell per row and column");
        assert!(outputs_from < columns, "outputs_from {outputs_from} outside 0..{columns}");
        let read_width = columns - outputs_from;
        let (mut tokens, mut read, mut read_cells) = (Vec::new(), Vec::new(), Vec::new());
        for row in 0..batch {
            for column in 0..columns {
                if !real[row * columns + column] {
                    continue;
                }
                if column >= outputs_from {
                    read.push(tokens.len() as i64);
                    read_cells.push((row * read_width + column - outputs_from) as i64);
                }
                tokens.push((row * columns + column) as i64);
            }
        }
        let index = |v: &[i64]| upload(Tensor::from_slice(v), device);
        Self {
            batch: batch as i64,
            columns: columns as i64,
            outputs_from: outputs_from as i64,
            tokens: index(&tokens),
            read: index(&read),
            read_cells: index(&read_cells),
        }
    }

    /// The number of real tokens, N.
    pub fn len(&self) -> i64 {
        self.tokens.size()[0]
    }

    /// Whether the pass holds no real token.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The columns `[from, T)` hold the outputs of the pass's last block; `from` is 0 (every
    /// token) or the pass's `outputs_from`. Returns the number of grid columns and the flat
    /// indices of the tokens there.
    fn cells(&self, from: i64) -> (i64, &Tensor) {
        if from == 0 {
            (self.columns, &self.tokens)
        } else {
            assert_eq!(from, self.outputs_from, "the packing was made for another outputs_from");
            (self.columns - from, &self.read_cells)
        }
    }

    /// Tokens (n, W) of columns `[from, T)` into their grid, (B, T - from, W), zero at padding.
    pub(crate) fn grid(&self, tokens: &Tensor, from: i64) -> Tensor {
        let (columns, index) = self.cells(from);
        let width = tokens.size()[1];
        Tensor::zeros([self.batch * columns, width], (tokens.kind(), tokens.device()))
            .index_copy(0, index, tokens)
            .view([self.batch, columns, width])
    }

    /// The tokens of a grid (B, T - from, W) of columns `[from, T)`: (n, W).
    pub(crate) fn tokens(&self, grid: &Tensor, from: i64) -> Tensor {
        let (_, index) = self.cells(from);
        let width = *grid.size().last().expect("a grid has a last dimension");
        grid.reshape([-1, width]).index_select(0, index)
    }

    /// Of every token (N, W), those of columns `[from, T)`: (n, W).
    pub(crate) fn columns_from(&self, tokens: &Tensor, from: i64) -> Tensor {
        if from == 0 {
            return tokens.shallow_clone();
        }
        self.cells(from); // checks `from`
        tokens.index_select(0, &self.read)
    }
}

impl Clone for Packing {
    fn clone(&self) -> Self {
        Self {
            batch: self.batch,
            columns: self.columns,
            outputs_from: self.outputs_from,
            tokens: self.tokens.shallow_clone(),
            read: self.read.shallow_clone(),
            read_cells: self.read_cells.shallow_clone(),
        }
    }
}

/// `host` on `device`. To a GPU the copy goes from pinned memory without waiting: a copy
/// from ordinary memory first waits for every kernel queued, which would stall the device
/// at every pass while the host prepares the next. (`_pin_memory` rather than `pin_memory`:
/// tch passes the latter a device, which LibTorch 2.11 warns about at every call.)
pub fn upload(host: Tensor, device: Device) -> Tensor {
    if device.is_cuda() {
        host.internal_pin_memory(device).to_device_(device, host.kind(), true, false)
    } else {
        host
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn tokens_and_grid_invert_each_other_on_real_cells() {
        // Two rows of four columns; row 0 is left-padded by one, row 1 right-padded by two.
        let real = [false, true, true, true, true, true, false, false];
        let packing = Packing::new(&real, 2, 4, 2, Device::Cpu);
        assert_eq!(packing.len(), 5);
        let grid = Tensor::arange(8, (Kind::Float, Device::Cpu)).view([2, 4, 1]) + 1.0;
        let tokens = packing.tokens(&grid, 0);
        assert_eq!(Vec::<f32>::try_from(tokens.view([-1])).unwrap(), [2.0, 3.0, 4.0, 5.0, 6.0]);
        let back = packing.grid(&tokens, 0).view([-1]);
        assert_eq!(Vec::<f32>::try_from(back).unwrap(), [0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0, 0.0]);
        // Columns [2, 4): row 0's last two, nothing of row 1.
        let read = packing.columns_from(&tokens, 2);
        assert_eq!(Vec::<f32>::try_from(read.view([-1])).unwrap(), [3.0, 4.0]);
        let read_grid = packing.grid(&read, 2).view([-1]);
        assert_eq!(Vec::<f32>::try_from(read_grid).unwrap(), [3.0, 4.0, 0.0, 0.0]);
        let from_grid = packing.tokens(&grid.narrow(1, 2, 2), 2).view([-1]);
        assert_eq!(Vec::<f32>::try_from(from_grid).unwrap(), [3.0, 4.0]);
    }
}
