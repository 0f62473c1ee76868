//! Growing and overwriting rows of an embedding (or LM head) matrix, for added tokens.

use tch::Tensor;

/// Grows `matrix` (V, C) to `new_rows` rows, every new row a copy of row `init_from`.
/// A no-op when the size already matches.
///
/// # Panics
/// If the matrix would shrink or `init_from` is outside it.
pub(crate) fn grow_rows(matrix: &mut Tensor, new_rows: usize, init_from: i64) {
    let old = matrix.size()[0];
    let new = new_rows as i64;
    assert!(new >= old, "the vocabulary can only grow ({old} -> {new})");
    assert!((0..old).contains(&init_from), "init token {init_from} is outside the vocabulary");
    if new == old {
        return;
    }
    tch::no_grad(|| {
        let extra = matrix.get(init_from).unsqueeze(0).expand([new - old, -1], false); // (new-old, C)
        let grown = Tensor::cat(&[matrix.detach(), extra.contiguous()], 0); // (new, C)
                                                                            // set_data swaps the storage under the same variable, so the VarStore (and an
                                                                            // optimizer created afterwards) sees the grown matrix.
        matrix.set_data(&grown);
    });
}

/// Sets rows `rows` of `matrix` to row `source`.
pub(crate) fn copy_rows(matrix: &Tensor, rows: &[i64], source: i64) {
    tch::no_grad(|| {
        let row = matrix.get(source); // (C)
        for &r in rows {
            matrix.get(r).copy_(&row);
        }
    });
}
