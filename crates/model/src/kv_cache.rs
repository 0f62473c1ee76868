//! The keys and values of every layer for the positions processed so far.
//!
//! The cache lives outside the model so that the caller decides what to keep: Coconut runs
//! one pass per thought and each pass attends to everything before it. How a layer stores
//! what it holds depends on what the positions are for, and is spelled out by [`Storage`].

use tch::Tensor;

/// The keys and values of one forward call or more: (B, n_kv_heads, T, head_size) each.
pub type KeysValues = (Tensor, Tensor);

/// How one layer holds its keys and values.
#[derive(Debug, Default)]
enum Storage {
    /// Nothing yet; the first call chooses between [`Storage::Decoding`] and
    /// [`Storage::Training`] by whether its keys require gradients.
    #[default]
    Empty,
    /// Without gradients (decoding): a preallocated buffer whose first `len` columns are
    /// held. It grows by doubling, so a new token costs no copy of the past.
    Decoding { keys: Tensor, values: Tensor },
    /// With gradients (training): at most two chunks, the first call's (the question) and
    /// everything after it merged into one. Concatenating the question with later keys
    /// would keep a full copy of it alive for the backward pass at every thought, so
    /// attention reads the chunks side by side instead; one chunk per thought would cost
    /// every later pass a few small operations per thought.
    Training(Vec<KeysValues>),
    /// Every call's keys and values are a chunk of their own, with or without gradients: a
    /// pass recomputed in the backward pass reads its own chunk back (see `recompute.rs`).
    PerCall(Vec<KeysValues>),
}

#[derive(Debug, Default)]
struct LayerCache {
    storage: Storage,
    len: i64, // positions held
}

impl LayerCache {
    /// Everything held, as chunks.
    fn views(&self) -> Vec<KeysValues> {
        match &self.storage {
            Storage::Empty => Vec::new(),
            Storage::Decoding { keys, values } => {
                vec![(keys.narrow(2, 0, self.len), values.narrow(2, 0, self.len))]
            }
            Storage::Training(chunks) | Storage::PerCall(chunks) => shallow_clones(chunks),
        }
    }

    fn append(&mut self, k: Tensor, v: Tensor) {
        let t = k.size()[2];
        if let Storage::Empty = self.storage {
            self.storage = if k.requires_grad() {
                Storage::Training(Vec::new())
            } else {
                Storage::Decoding { keys: Tensor::new(), values: Tensor::new() }
            };
        }
        if let (Storage::Decoding { keys, values }, true) = (&self.storage, k.requires_grad()) {
            // Gradients after a prompt run without them: the buffer becomes the first chunk.
            let first = (keys.narrow(2, 0, self.len), values.narrow(2, 0, self.len));
            self.storage = Storage::Training(vec![first]);
        }
        match &mut self.storage {
            Storage::Empty => unreachable!("chosen above"),
            Storage::PerCall(chunks) => chunks.push((k.contiguous(), v.contiguous())),
            Storage::Training(chunks) => {
                // Contiguous chunks let every later pass's matmuls read them in place (a
                // strided view would be copied, and the copy kept for the backward pass, at
                // every pass).
                let merged = if chunks.len() >= 2 {
                    let (pk, pv) = chunks.pop().expect("two chunks");
                    (Tensor::cat(&[pk, k], 2), Tensor::cat(&[pv, v], 2))
                } else {
                    (k.contiguous(), v.contiguous())
                };
                chunks.push(merged);
            }
            Storage::Decoding { keys, values } => {
                let capacity = if keys.defined() { keys.size()[2] } else { 0 };
                if self.len + t > capacity {
                    let mut size = k.size();
                    size[2] = (2 * (self.len + t)).max(64);
                    let grown_keys = Tensor::zeros(&size, (k.kind(), k.device()));
                    let grown_values = Tensor::zeros(&size, (v.kind(), v.device()));
                    if self.len > 0 {
                        grown_keys.narrow(2, 0, self.len).copy_(&keys.narrow(2, 0, self.len));
                        grown_values.narrow(2, 0, self.len).copy_(&values.narrow(2, 0, self.len));
                    }
                    (*keys, *values) = (grown_keys, grown_values);
                }
                keys.narrow(2, self.len, t).copy_(&k);
                values.narrow(2, self.len, t).copy_(&v);
            }
        }
        self.len += t;
    }
}

/// The keys and values of every layer for the positions processed so far.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    /// Whether every call gets a chunk of its own ([`Storage::PerCall`]).
    per_call: bool,
}

impl KvCache {
    /// An empty cache. Its layers store keys and values for decoding or for training,
    /// chosen by whether the first call's keys require gradients.
    pub fn new() -> Self {
        Self::default()
    }

    /// A cache whose layers hold `past` (each layer's chunks) and to which every call adds a
    /// chunk of its own: the scratch cache of a recomputed pass.
    pub(crate) fn per_call(past: Vec<Vec<KeysValues>>) -> Self {
        let layers = past
            .into_iter()
            .map(|chunks| LayerCache {
                len: chunks.iter().map(|(k, _)| k.size()[2]).sum(),
                storage: Storage::PerCall(chunks),
            })
            .collect();
        Self { layers, per_call: true }
    }

    /// Number of cached positions (columns).
    pub fn len(&self) -> i64 {
        self.layers.first().map_or(0, |l| l.len)
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the first `len` positions and drops the rest.
    pub fn truncate(&mut self, len: i64) {
        for layer in &mut self.layers {
            if let Storage::Training(chunks) | Storage::PerCall(chunks) = &mut layer.storage {
                if !chunks.is_empty() {
                    let (k, v) = concat(chunks);
                    *chunks = vec![(k.narrow(2, 0, len), v.narrow(2, 0, len))];
                }
            }
            layer.len = layer.len.min(len);
        }
    }

    /// Appends the new keys and values of `layer` and returns everything that layer holds,
    /// as chunks to be read side by side.
    pub fn append(&mut self, layer: usize, k: Tensor, v: Tensor) -> Vec<KeysValues> {
        if self.layers.len() <= layer {
            let per_call = self.per_call;
            self.layers.resize_with(layer + 1, || LayerCache {
                storage: if per_call { Storage::PerCall(Vec::new()) } else { Storage::Empty },
                len: 0,
            });
        }
        let cache = &mut self.layers[layer];
        cache.append(k, v);
        cache.views()
    }

    /// The keys and values the last call appended to `layer` (a per-call cache's last chunk).
    pub(crate) fn last_chunk(&self, layer: usize) -> &KeysValues {
        match &self.layers[layer].storage {
            Storage::PerCall(chunks) => chunks.last().expect("the call's own chunk"),
            _ => panic!("only a per-call cache keeps each call's chunk"),
        }
    }

    /// Every layer's chunks, for `n_layer` layers (empty for layers not reached yet).
    pub(crate) fn chunks_per_layer(&self, n_layer: usize) -> Vec<Vec<KeysValues>> {
        (0..n_layer).map(|l| self.layers.get(l).map_or_else(Vec::new, LayerCache::views)).collect()
    }

    /// Stacks the rows of caches filled without gradients (decoding) into one cache of
    /// their longest length, each shorter one left-padded with zero keys and values. The
    /// caller masks the padded columns, as it does a left-padded prompt's.
    ///
    /// # Panics
    /// If a cache holds gradient chunks, or the caches differ in layer count.
    pub fn stack_left_padded(caches: &[KvCache]) -> KvCache {
        let len = caches.iter().map(KvCache::len).max().unwrap_or(0);
        let n_layers = caches.first().map_or(0, |c| c.layers.len());
        let layers = (0..n_layers)
            .map(|layer| {
                let (mut all_keys, mut all_values) = (Vec::new(), Vec::new());
                for cache in caches {
                    assert_eq!(cache.layers.len(), n_layers, "caches of different models");
                    let held = &cache.layers[layer];
                    let Storage::Decoding { keys, values } = &held.storage else {
                        panic!("a decoding cache (no gradient chunks)");
                    };
                    for (buffer, out) in [(keys, &mut all_keys), (values, &mut all_values)] {
                        let mut size = buffer.size(); // (B_i, nh, capacity_i, hs)
                        size[2] = 2 * len; // room to decode as much again before growing
                        let padded = Tensor::zeros(&size, (buffer.kind(), buffer.device()));
                        padded
                            .narrow(2, len - held.len, held.len)
                            .copy_(&buffer.narrow(2, 0, held.len));
                        out.push(padded);
                    }
                }
                let storage = Storage::Decoding {
                    keys: Tensor::cat(&all_keys, 0),
                    values: Tensor::cat(&all_values, 0),
                };
                LayerCache { storage, len }
            })
            .collect();
        KvCache { layers, per_call: false }
    }

    /// Selects rows of the batch (for example the rows still decoding).
    pub fn index_rows(&mut self, rows: &Tensor) {
        for layer in &mut self.layers {
            let pairs: Vec<(&mut Tensor, &mut Tensor)> = match &mut layer.storage {
                Storage::Empty => Vec::new(),
                Storage::Decoding { keys, values } => vec![(keys, values)],
                Storage::Training(chunks) | Storage::PerCall(chunks) => {
                    chunks.iter_mut().map(|(k, v)| (k, v)).collect()
                }
            };
            for (k, v) in pairs {
                *k = k.index_select(0, rows);
                *v = v.index_select(0, rows);
            }
        }
    }
}

/// The chunks of one layer as one (keys, values) pair.
fn concat(chunks: &[KeysValues]) -> KeysValues {
    let (ks, vs): (Vec<&Tensor>, Vec<&Tensor>) = chunks.iter().map(|(k, v)| (k, v)).unzip();
    (Tensor::cat(&ks, 2), Tensor::cat(&vs, 2))
}

/// Shallow copies (sharing storage) of every chunk.
pub(crate) fn shallow_clones(chunks: &[KeysValues]) -> Vec<KeysValues> {
    chunks.iter().map(|(k, v)| (k.shallow_clone(), v.shallow_clone())).collect()
}
