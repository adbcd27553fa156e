//! A data loader that keeps the model busy: samples are decoded and augmented on worker threads
//! (std threads, one bounded channel per worker, `prefetch` batches ahead each), batches come back
//! in order, the shuffle is a deterministic function of `(seed, epoch)`, and each sample's
//! augmentation draws from its own generator seeded by `(seed, epoch, index)`, so the batches do
//! not depend on the number of workers or on thread timing.
//!
//! As PyTorch's `DataLoader` with an index queue per worker: worker `w` builds batches
//! `start + w`, `start + w + W`, …; the consumer reads worker `(k - start) % W` for batch `k`.
//!
//! Resuming: [`Batches::position`] is the position of the next batch; a loader started with
//! [`DataLoader::resume`] at that position yields the same batches the first one would have
//! yielded from there on (same order, no reshuffle).
//!
//! With `skip_bad_samples`, a sample whose `get` fails (a missing or corrupt image: the error
//! names the file) is left out of its batch and counted; [`Batches::skipped`] tells how many, and
//! the count is printed to stderr when the epoch ends. Without it, the error is yielded in the
//! batch's place.
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use vlp_core::{Result, VlpError};

/// A random-access data set: `get` builds sample `index`, drawing any augmentation from `rng`.
pub trait Dataset: Send + Sync + 'static {
    /// What `get` returns.
    type Sample: Send + 'static;
    /// Number of samples.
    fn len(&self) -> usize;
    /// Whether there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Sample `index` (`0 <= index < len`).
    fn get(&self, index: usize, rng: &mut StdRng) -> Result<Self::Sample>;
}

fn default_true() -> bool {
    true
}
fn default_workers() -> usize {
    2
}
fn default_prefetch() -> usize {
    2
}

/// Configuration of a [`DataLoader`] (a `loader:` section of a task config).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoaderConfig {
    /// Samples per batch.
    pub batch_size: usize,
    /// Shuffle every epoch (a permutation drawn from `(seed, epoch)`).
    #[serde(default = "default_true")]
    pub shuffle: bool,
    /// Seed of the shuffle and of the per-sample augmentation generators.
    #[serde(default)]
    pub seed: u64,
    /// Drop the last incomplete batch.
    #[serde(default)]
    pub drop_last: bool,
    /// Worker threads (0: build batches on the calling thread).
    #[serde(default = "default_workers")]
    pub num_workers: usize,
    /// Batches each worker prepares ahead.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// Leave out (and count) samples whose `get` fails instead of failing the batch.
    #[serde(default)]
    pub skip_bad_samples: bool,
}

impl LoaderConfig {
    /// A configuration with the given batch size and the defaults (shuffle, seed 0, 2 workers,
    /// prefetch 2, keep the last batch, stop on errors).
    pub fn new(batch_size: usize) -> Self {
        LoaderConfig {
            batch_size,
            shuffle: true,
            seed: 0,
            drop_last: false,
            num_workers: default_workers(),
            prefetch: default_prefetch(),
            skip_bad_samples: false,
        }
    }
}

/// Where a loader is: the epoch and the index of the next batch in it (serialisable, to store in
/// a training checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Position {
    /// Epoch (0-based).
    pub epoch: u64,
    /// Next batch within the epoch.
    pub batch: usize,
}

type Collate<S, B> = dyn Fn(Vec<S>) -> Result<B> + Send + Sync;

/// A loader over a [`Dataset`] and a collate function.
pub struct DataLoader<D: Dataset, B> {
    dataset: Arc<D>,
    collate: Arc<Collate<D::Sample, B>>,
    cfg: LoaderConfig,
}

impl<D: Dataset, B> std::fmt::Debug for DataLoader<D, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataLoader")
            .field("len", &self.dataset.len())
            .field("cfg", &self.cfg)
            .finish()
    }
}

/// splitmix64 finaliser.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of sample `index`'s generator in `epoch`.
pub fn sample_seed(seed: u64, epoch: u64, index: usize) -> u64 {
    mix(mix(mix(seed) ^ epoch) ^ index as u64)
}

/// The epoch order: a permutation of `0..n` drawn from `(seed, epoch)`, or `0..n` unshuffled.
pub fn epoch_order(n: usize, shuffle: bool, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut rng = StdRng::seed_from_u64(mix(mix(seed ^ 0x5348_5546) ^ epoch));
        order.shuffle(&mut rng);
    }
    order
}

struct Shared<D: Dataset, B> {
    dataset: Arc<D>,
    collate: Arc<Collate<D::Sample, B>>,
    order: Arc<Vec<usize>>,
    cfg: LoaderConfig,
    epoch: u64,
    first_errors: Arc<Mutex<Vec<String>>>,
}

/// A built batch and the number of samples left out of it.
type Built<B> = (Option<Result<B>>, usize);

impl<D: Dataset, B> Shared<D, B> {
    fn build(&self, batch: usize) -> Built<B> {
        let bs = self.cfg.batch_size;
        let lo = batch * bs;
        let hi = (lo + bs).min(self.order.len());
        let mut samples = Vec::with_capacity(hi - lo);
        let mut skipped = 0;
        for &index in &self.order[lo..hi] {
            let mut rng = StdRng::seed_from_u64(sample_seed(self.cfg.seed, self.epoch, index));
            match self.dataset.get(index, &mut rng) {
                Ok(s) => samples.push(s),
                Err(e) if self.cfg.skip_bad_samples => {
                    skipped += 1;
                    let mut first = self.first_errors.lock().unwrap_or_else(|p| p.into_inner());
                    if first.len() < 3 {
                        first.push(format!("sample {index}: {e}"));
                    }
                }
                Err(e) => return (Some(Err(e)), 0),
            }
        }
        if samples.is_empty() {
            return (None, skipped);
        }
        (Some((self.collate)(samples)), skipped)
    }
}

impl<D: Dataset, B: Send + 'static> DataLoader<D, B> {
    /// A loader; rejects a zero batch size.
    pub fn new(
        dataset: D,
        collate: impl Fn(Vec<D::Sample>) -> Result<B> + Send + Sync + 'static,
        cfg: LoaderConfig,
    ) -> Result<Self> {
        if cfg.batch_size == 0 {
            return Err(VlpError::Config {
                path: "<loader>".into(),
                msg: "batch_size must be positive".into(),
            });
        }
        Ok(DataLoader {
            dataset: Arc::new(dataset),
            collate: Arc::new(collate),
            cfg,
        })
    }

    /// The data set.
    pub fn dataset(&self) -> &D {
        &self.dataset
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        let n = self.dataset.len();
        let bs = self.cfg.batch_size;
        if self.cfg.drop_last {
            n / bs
        } else {
            n.div_ceil(bs)
        }
    }

    /// The sample order of `epoch`.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        epoch_order(self.dataset.len(), self.cfg.shuffle, self.cfg.seed, epoch)
    }

    /// The batches of `epoch` from the first.
    pub fn epoch(&self, epoch: u64) -> Batches<B> {
        self.resume(Position { epoch, batch: 0 })
    }

    /// The batches of `pos.epoch` from batch `pos.batch` on (same order as a loader that ran
    /// from the start of that epoch).
    pub fn resume(&self, pos: Position) -> Batches<B> {
        let end = self.num_batches();
        let start = pos.batch.min(end);
        let first_errors = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(Shared {
            dataset: self.dataset.clone(),
            collate: self.collate.clone(),
            order: Arc::new(self.order(pos.epoch)),
            cfg: self.cfg.clone(),
            epoch: pos.epoch,
            first_errors: first_errors.clone(),
        });
        let cancel = Arc::new(AtomicBool::new(false));
        let workers = self.cfg.num_workers;
        let mut receivers = Vec::new();
        let mut handles = Vec::new();
        let mut local = None;
        if workers == 0 {
            let s = shared.clone();
            local =
                Some(Box::new(move |b: usize| s.build(b)) as Box<dyn Fn(usize) -> Built<B> + Send>);
        } else {
            for w in 0..workers {
                let (tx, rx) = sync_channel::<Built<B>>(self.cfg.prefetch.max(1));
                let s = shared.clone();
                let c = cancel.clone();
                let h = std::thread::Builder::new()
                    .name(format!("vlp-loader-{w}"))
                    .spawn(move || {
                        let mut b = start + w;
                        while b < end && !c.load(Ordering::Relaxed) {
                            if tx.send(s.build(b)).is_err() {
                                break;
                            }
                            b += workers;
                        }
                    })
                    .expect("spawning a loader thread");
                receivers.push(rx);
                handles.push(h);
            }
        }
        Batches {
            epoch: pos.epoch,
            next: start,
            start,
            end,
            receivers,
            handles,
            local,
            cancel,
            skipped: 0,
            first_errors,
            reported: false,
        }
    }
}

/// The batches of one epoch, in order; each item is a collated batch or the error that stopped
/// it. Dropping it stops the workers.
pub struct Batches<B> {
    epoch: u64,
    next: usize,
    start: usize,
    end: usize,
    receivers: Vec<Receiver<Built<B>>>,
    handles: Vec<JoinHandle<()>>,
    local: Option<Box<dyn Fn(usize) -> Built<B> + Send>>,
    cancel: Arc<AtomicBool>,
    skipped: usize,
    first_errors: Arc<Mutex<Vec<String>>>,
    reported: bool,
}

impl<B> Batches<B> {
    /// The position of the next batch (after the last batch: the start of the next epoch).
    pub fn position(&self) -> Position {
        if self.next >= self.end {
            Position {
                epoch: self.epoch + 1,
                batch: 0,
            }
        } else {
            Position {
                epoch: self.epoch,
                batch: self.next,
            }
        }
    }

    /// Samples left out so far (`skip_bad_samples`).
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// Batches left in the epoch.
    pub fn remaining(&self) -> usize {
        self.end - self.next
    }

    fn report(&mut self) {
        if !self.reported && self.skipped > 0 {
            let first = self
                .first_errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .join("; ");
            eprintln!(
                "warning: epoch {}: skipped {} bad samples (skip_bad_samples: true); first: {first}",
                self.epoch, self.skipped
            );
        }
        self.reported = true;
    }

    fn fetch(&mut self, b: usize) -> Built<B> {
        if let Some(f) = &self.local {
            return f(b);
        }
        let w = (b - self.start) % self.receivers.len();
        match self.receivers[w].recv() {
            Ok(built) => built,
            Err(_) => (
                Some(Err(VlpError::Msg(format!(
                    "data loader worker {w} stopped (panicked?) before batch {b}"
                )))),
                0,
            ),
        }
    }
}

impl<B> Iterator for Batches<B> {
    type Item = Result<B>;
    fn next(&mut self) -> Option<Result<B>> {
        while self.next < self.end {
            let b = self.next;
            self.next += 1;
            let (batch, skipped) = self.fetch(b);
            self.skipped += skipped;
            if let Some(batch) = batch {
                if self.next >= self.end {
                    self.report();
                }
                return Some(batch);
            }
        }
        self.report();
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.end - self.next))
    }
}

impl<B> Drop for Batches<B> {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// Collate helper: stacks `[3, H, W]` images into `[B, 3, H, W]`.
pub fn stack_images(images: Vec<tch::Tensor>) -> Result<tch::Tensor> {
    vlp_core::image::batch(&images)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    struct Numbers(usize);
    impl Dataset for Numbers {
        type Sample = (usize, u32);
        fn len(&self) -> usize {
            self.0
        }
        fn get(&self, i: usize, rng: &mut StdRng) -> Result<(usize, u32)> {
            if i == 13 {
                return Err(VlpError::Image {
                    path: "13.png".into(),
                    msg: "corrupt".into(),
                });
            }
            Ok((i, rng.gen()))
        }
    }

    fn all(l: &DataLoader<Numbers, Vec<(usize, u32)>>, e: u64) -> Vec<Vec<(usize, u32)>> {
        l.epoch(e).map(|b| b.unwrap()).collect()
    }

    #[test]
    fn workers_do_not_change_batches() {
        let mk = |w| {
            let mut c = LoaderConfig::new(4);
            c.num_workers = w;
            c.seed = 7;
            c.skip_bad_samples = true;
            DataLoader::new(Numbers(30), Ok, c).unwrap()
        };
        let a = all(&mk(0), 1);
        assert_eq!(a, all(&mk(3), 1));
        assert_eq!(a, all(&mk(1), 1));
        assert_ne!(a, all(&mk(2), 2));
    }

    #[test]
    fn error_in_place_of_batch_without_skip() {
        let mut c = LoaderConfig::new(5);
        c.shuffle = false;
        let l = DataLoader::new(Numbers(20), Ok, c).unwrap();
        let r: Vec<_> = l.epoch(0).collect();
        assert_eq!(r.len(), 4);
        assert!(r[2].as_ref().unwrap_err().to_string().contains("13.png"));
        assert!(r[3].is_ok());
    }
}
