//! Where the trainer's batches come from: the [`DataSource`] trait (epochs, a resumable
//! position), an in-memory implementation for tests and small runs, and [`GroupedSource`], one
//! endless source per objective group for mixed (UNITER-style) runs.
use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use vlp_core::{Result, VlpError};

/// A stream of batches organised in epochs, whose position can be saved and restored.
///
/// The trainer calls [`DataSource::start_epoch`] before the first batch of every epoch (or
/// [`DataSource::resume`] instead, when continuing a run), then [`DataSource::next_batch`] until
/// it returns `None` (the end of the epoch; it keeps returning `None` until the next
/// `start_epoch`) or until the epoch's length, when [`DataSource::batches_per_epoch`] tells it.
///
/// The position must identify the next batch exactly: after `resume(&p)` with `p` from
/// `position()`, the source yields the batches the original would have yielded (same shuffle,
/// same augmentation draws) — this is what makes resumed runs bit-identical.
pub trait DataSource {
    /// What the model's `train_step` takes.
    type Batch;
    /// Starts epoch `epoch` (0-based) from its first batch (reshuffling as needed).
    fn start_epoch(&mut self, epoch: u64) -> Result<()>;
    /// The next batch of the current epoch, `None` at its end. `group` is the objective group
    /// the trainer sampled for this step (mixed runs), `None` otherwise.
    fn next_batch(&mut self, group: Option<&str>) -> Result<Option<Self::Batch>>;
    /// Number of samples in `batch` (for samples/s and counts).
    fn samples_in(&self, batch: &Self::Batch) -> usize;
    /// Batches per epoch, when known (needed to run by `epochs` without `max_steps`).
    fn batches_per_epoch(&self) -> Option<u64> {
        None
    }
    /// The position of the next batch (opaque to the trainer, stored in checkpoints).
    fn position(&self) -> serde_json::Value;
    /// Continues from a position returned by [`DataSource::position`].
    fn resume(&mut self, position: &serde_json::Value) -> Result<()>;
}

/// Cloning for in-memory batches: tensors clone shallowly (sharing storage, as batches are
/// read-only), tuples, vectors and options element-wise, plain values by `Clone`.
pub trait BatchClone {
    /// A copy that shares tensor storage.
    fn batch_clone(&self) -> Self;
}

impl BatchClone for tch::Tensor {
    fn batch_clone(&self) -> Self {
        self.shallow_clone()
    }
}

impl<T: BatchClone> BatchClone for Vec<T> {
    fn batch_clone(&self) -> Self {
        self.iter().map(BatchClone::batch_clone).collect()
    }
}

impl<T: BatchClone> BatchClone for Option<T> {
    fn batch_clone(&self) -> Self {
        self.as_ref().map(BatchClone::batch_clone)
    }
}

macro_rules! batch_clone_tuple {
    ($($t:ident $i:tt),+) => {
        impl<$($t: BatchClone),+> BatchClone for ($($t,)+) {
            fn batch_clone(&self) -> Self {
                ($(self.$i.batch_clone(),)+)
            }
        }
    };
}
batch_clone_tuple!(A 0);
batch_clone_tuple!(A 0, B 1);
batch_clone_tuple!(A 0, B 1, C 2);
batch_clone_tuple!(A 0, B 1, C 2, D 3);

macro_rules! batch_clone_plain {
    ($($t:ty),+) => { $(impl BatchClone for $t { fn batch_clone(&self) -> Self { self.clone() } })+ };
}
batch_clone_plain!(bool, i32, i64, u32, u64, usize, f32, f64, String);

/// The position of an [`InMemorySource`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InMemoryPosition {
    /// Current epoch.
    pub epoch: u64,
    /// Index of the next batch in the epoch's order.
    pub index: usize,
}

/// Batches held in memory, in order or shuffled per epoch with `(seed, epoch)`.
#[derive(Debug)]
pub struct InMemorySource<B> {
    batches: Vec<B>,
    samples: Vec<usize>,
    shuffle: bool,
    seed: u64,
    order: Vec<usize>,
    pos: InMemoryPosition,
}

impl<B: BatchClone> InMemorySource<B> {
    /// A source over `batches`, each holding `samples_per_batch` samples (for counting).
    pub fn new(batches: Vec<B>, samples_per_batch: usize) -> Self {
        let n = batches.len();
        Self {
            samples: vec![samples_per_batch; n],
            batches,
            shuffle: false,
            seed: 0,
            order: (0..n).collect(),
            pos: InMemoryPosition { epoch: 0, index: 0 },
        }
    }

    /// Shuffles the batch order every epoch with a permutation drawn from `(seed, epoch)`.
    pub fn shuffled(mut self, seed: u64) -> Self {
        self.shuffle = true;
        self.seed = seed;
        self.order = self.order_of(0);
        self
    }

    fn order_of(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.batches.len()).collect();
        if self.shuffle {
            let mut rng = StdRng::seed_from_u64(
                self.seed.rotate_left(17) ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            order.shuffle(&mut rng);
        }
        order
    }

    /// The current position.
    pub fn current(&self) -> InMemoryPosition {
        self.pos
    }
}

impl<B: BatchClone> DataSource for InMemorySource<B> {
    type Batch = B;

    fn start_epoch(&mut self, epoch: u64) -> Result<()> {
        self.order = self.order_of(epoch);
        self.pos = InMemoryPosition { epoch, index: 0 };
        Ok(())
    }

    fn next_batch(&mut self, _group: Option<&str>) -> Result<Option<B>> {
        let Some(&i) = self.order.get(self.pos.index) else {
            return Ok(None);
        };
        self.pos.index += 1;
        Ok(Some(self.batches[i].batch_clone()))
    }

    fn samples_in(&self, _batch: &B) -> usize {
        self.samples.first().copied().unwrap_or(0)
    }

    fn batches_per_epoch(&self) -> Option<u64> {
        Some(self.batches.len() as u64)
    }

    fn position(&self) -> serde_json::Value {
        serde_json::to_value(self.pos).expect("plain struct")
    }

    fn resume(&mut self, position: &serde_json::Value) -> Result<()> {
        let p: InMemoryPosition = serde_json::from_value(position.clone()).map_err(|e| {
            VlpError::Msg(format!("in-memory source: bad position {position}: {e}"))
        })?;
        if p.index > self.batches.len() {
            return Err(VlpError::Msg(format!(
                "in-memory source: position {} past the {} batches",
                p.index,
                self.batches.len()
            )));
        }
        self.order = self.order_of(p.epoch);
        self.pos = p;
        Ok(())
    }
}

/// A [`DataLoader`](crate::data::loader::DataLoader) as a [`DataSource`]: epochs from
/// `DataLoader::epoch`, positions from `Batches::position` / `DataLoader::resume` (the loader's
/// shuffle and augmentation draw from `(seed, epoch, index)`, so a resumed loader yields the same
/// batches).
pub struct LoaderSource<D: crate::data::loader::Dataset, B> {
    loader: crate::data::loader::DataLoader<D, B>,
    batches: Option<crate::data::loader::Batches<B>>,
    samples: Box<dyn Fn(&B) -> usize>,
}

impl<D: crate::data::loader::Dataset, B> std::fmt::Debug for LoaderSource<D, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoaderSource")
            .field("loader", &self.loader)
            .field("started", &self.batches.is_some())
            .finish()
    }
}

impl<D: crate::data::loader::Dataset, B: Send + 'static> LoaderSource<D, B> {
    /// Wraps `loader`; `samples` counts the samples of a batch.
    pub fn new(
        loader: crate::data::loader::DataLoader<D, B>,
        samples: impl Fn(&B) -> usize + 'static,
    ) -> Self {
        Self {
            loader,
            batches: None,
            samples: Box::new(samples),
        }
    }

    /// The wrapped loader.
    pub fn loader(&self) -> &crate::data::loader::DataLoader<D, B> {
        &self.loader
    }
}

impl<D: crate::data::loader::Dataset, B: Send + 'static> DataSource for LoaderSource<D, B> {
    type Batch = B;

    fn start_epoch(&mut self, epoch: u64) -> Result<()> {
        self.batches = Some(self.loader.epoch(epoch));
        Ok(())
    }

    fn next_batch(&mut self, _group: Option<&str>) -> Result<Option<B>> {
        match &mut self.batches {
            Some(b) => b.next().transpose(),
            None => Err(VlpError::Msg(
                "loader source: next_batch before start_epoch/resume".into(),
            )),
        }
    }

    fn samples_in(&self, batch: &B) -> usize {
        (self.samples)(batch)
    }

    fn batches_per_epoch(&self) -> Option<u64> {
        Some(self.loader.num_batches() as u64)
    }

    fn position(&self) -> serde_json::Value {
        let p = self
            .batches
            .as_ref()
            .map(|b| b.position())
            .unwrap_or_default();
        serde_json::to_value(p).expect("plain struct")
    }

    fn resume(&mut self, position: &serde_json::Value) -> Result<()> {
        let p: crate::data::loader::Position = serde_json::from_value(position.clone())
            .map_err(|e| VlpError::Msg(format!("loader source: bad position {position}: {e}")))?;
        self.batches = Some(self.loader.resume(p));
        Ok(())
    }
}

/// One source per objective group, each cycled endlessly (its own epochs restart when it runs
/// out), as UNITER's meta-loader: `next_batch(Some(group))` reads that group's source, and never
/// returns `None`, so a run over it stops by `max_steps`.
#[derive(Debug)]
pub struct GroupedSource<S> {
    sources: BTreeMap<String, S>,
    epochs: BTreeMap<String, u64>,
}

impl<S: DataSource> GroupedSource<S> {
    /// Sources by group name (the names of the config's `mix` groups).
    pub fn new(sources: BTreeMap<String, S>) -> Self {
        let epochs = sources.keys().map(|k| (k.clone(), 0)).collect();
        Self { sources, epochs }
    }
}

impl<S: DataSource> DataSource for GroupedSource<S> {
    type Batch = S::Batch;

    fn start_epoch(&mut self, epoch: u64) -> Result<()> {
        if epoch == 0 {
            for (k, s) in &mut self.sources {
                s.start_epoch(0)?;
                self.epochs.insert(k.clone(), 0);
            }
        }
        Ok(())
    }

    fn next_batch(&mut self, group: Option<&str>) -> Result<Option<S::Batch>> {
        let g = group.ok_or_else(|| {
            VlpError::Msg("grouped source: the config has no `mix` groups to pick from".into())
        })?;
        let src = self.sources.get_mut(g).ok_or_else(|| {
            VlpError::Msg(format!("grouped source: no source for mix group `{g}`"))
        })?;
        if let Some(b) = src.next_batch(group)? {
            return Ok(Some(b));
        }
        let e = self.epochs.get_mut(g).expect("same keys");
        *e += 1;
        src.start_epoch(*e)?;
        match src.next_batch(group)? {
            Some(b) => Ok(Some(b)),
            None => Err(VlpError::Msg(format!(
                "grouped source: group `{g}` is empty"
            ))),
        }
    }

    fn samples_in(&self, batch: &S::Batch) -> usize {
        self.sources
            .values()
            .next()
            .map_or(0, |s| s.samples_in(batch))
    }

    fn position(&self) -> serde_json::Value {
        let m: serde_json::Map<String, serde_json::Value> = self
            .sources
            .iter()
            .map(|(k, s)| {
                (
                    k.clone(),
                    serde_json::json!({"epoch": self.epochs[k], "position": s.position()}),
                )
            })
            .collect();
        serde_json::Value::Object(m)
    }

    fn resume(&mut self, position: &serde_json::Value) -> Result<()> {
        for (k, s) in &mut self.sources {
            let p = position.get(k).ok_or_else(|| {
                VlpError::Msg(format!("grouped source: no saved position for group `{k}`"))
            })?;
            let e = p.get("epoch").and_then(|e| e.as_u64()).unwrap_or(0);
            s.resume(p.get("position").unwrap_or(&serde_json::Value::Null))?;
            self.epochs.insert(k.clone(), e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_memory_shuffle_and_resume() {
        let mut a = InMemorySource::new((0..6).collect::<Vec<i32>>(), 2).shuffled(7);
        a.start_epoch(1).unwrap();
        let first: Vec<i32> = (0..2)
            .map(|_| a.next_batch(None).unwrap().unwrap())
            .collect();
        let pos = a.position();
        let rest: Vec<i32> = std::iter::from_fn(|| a.next_batch(None).unwrap()).collect();
        assert_eq!(first.len() + rest.len(), 6);
        let mut b = InMemorySource::new((0..6).collect::<Vec<i32>>(), 2).shuffled(7);
        b.resume(&pos).unwrap();
        let rest_b: Vec<i32> = std::iter::from_fn(|| b.next_batch(None).unwrap()).collect();
        assert_eq!(rest, rest_b);
        assert!(a.next_batch(None).unwrap().is_none());
        a.start_epoch(2).unwrap();
        let e2: Vec<i32> = std::iter::from_fn(|| a.next_batch(None).unwrap()).collect();
        let mut sorted = e2.clone();
        sorted.sort();
        assert_eq!(sorted, (0..6).collect::<Vec<_>>());
    }

    struct Numbers(usize);
    impl crate::data::loader::Dataset for Numbers {
        type Sample = (usize, u32);
        fn len(&self) -> usize {
            self.0
        }
        fn get(&self, index: usize, rng: &mut StdRng) -> Result<(usize, u32)> {
            Ok((index, rand::Rng::gen(rng)))
        }
    }

    #[test]
    fn loader_source_resumes_mid_epoch() {
        use crate::data::loader::{DataLoader, LoaderConfig};
        let mk = || {
            let mut cfg = LoaderConfig::new(3);
            cfg.seed = 4;
            let loader = DataLoader::new(Numbers(10), Ok, cfg).unwrap();
            LoaderSource::new(loader, |b: &Vec<(usize, u32)>| b.len())
        };
        let mut a = mk();
        assert_eq!(a.batches_per_epoch(), Some(4));
        assert!(a.next_batch(None).is_err());
        a.start_epoch(2).unwrap();
        let first = a.next_batch(None).unwrap().unwrap();
        assert_eq!(a.samples_in(&first), 3);
        let pos = a.position();
        let rest: Vec<_> = std::iter::from_fn(|| a.next_batch(None).unwrap()).collect();
        assert_eq!(rest.len(), 3);
        let mut b = mk();
        b.resume(&pos).unwrap();
        let rest_b: Vec<_> = std::iter::from_fn(|| b.next_batch(None).unwrap()).collect();
        assert_eq!(rest, rest_b);
        assert_eq!(a.position(), serde_json::json!({"epoch": 3, "batch": 0}));
    }

    #[test]
    fn grouped_cycles_and_resumes() {
        let mk = || {
            let mut m = BTreeMap::new();
            m.insert("a".to_string(), InMemorySource::new(vec![1, 2], 1));
            m.insert("b".to_string(), InMemorySource::new(vec![10, 20, 30], 1));
            GroupedSource::new(m)
        };
        let mut g = mk();
        g.start_epoch(0).unwrap();
        let seq: Vec<i32> = ["a", "a", "a", "b"]
            .iter()
            .map(|k| g.next_batch(Some(k)).unwrap().unwrap())
            .collect();
        assert_eq!(seq, [1, 2, 1, 10]);
        let pos = g.position();
        let mut h = mk();
        h.resume(&pos).unwrap();
        assert_eq!(h.next_batch(Some("a")).unwrap(), Some(2));
        assert_eq!(h.next_batch(Some("b")).unwrap(), Some(20));
        assert!(h.next_batch(Some("c")).is_err());
        assert!(h.next_batch(None).is_err());
    }
}
