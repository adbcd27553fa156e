//! The data loader: determinism (same batches whatever the number of workers), shuffling per
//! epoch, `drop_last`, resuming from a position, skipping bad images with a count, prefetching.
use rand::rngs::StdRng;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tch::Tensor;
use vlp_core::image::{ImageTransform, ImageTransformConfig, Normalize};
use vlp_core::{Result, VlpError};
use vlp_tasks::data::easy_vqa::{EasyVqa, EasyVqaDataset, EasyVqaQuestion, EasyVqaSample, Split};
use vlp_tasks::data::loader::{
    epoch_order, stack_images, DataLoader, Dataset, LoaderConfig, Position,
};

struct Batch {
    images: Tensor,
    labels: Vec<usize>,
    questions: Vec<String>,
}

fn collate(s: Vec<EasyVqaSample>) -> Result<Batch> {
    let labels = s.iter().map(|x| x.label).collect();
    let questions = s.iter().map(|x| x.question.clone()).collect();
    Ok(Batch {
        images: stack_images(s.into_iter().map(|x| x.image).collect())?,
        labels,
        questions,
    })
}

fn questions(n: usize) -> Vec<EasyVqaQuestion> {
    let ev = EasyVqa::package().unwrap();
    ev.read(Split::Train, false)
        .unwrap()
        .items
        .into_iter()
        .take(n)
        .collect()
}

fn train_transform() -> ImageTransform {
    ImageTransform::new(ImageTransformConfig::train(32, Normalize::default())).unwrap()
}

fn loader(qs: Vec<EasyVqaQuestion>, cfg: LoaderConfig) -> DataLoader<EasyVqaDataset, Batch> {
    DataLoader::new(EasyVqaDataset::new(qs, train_transform()), collate, cfg).unwrap()
}

fn cfg(bs: usize, workers: usize, seed: u64) -> LoaderConfig {
    let mut c = LoaderConfig::new(bs);
    c.num_workers = workers;
    c.seed = seed;
    c
}

fn same(a: &[Batch], b: &[Batch]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.labels == y.labels && x.questions == y.questions && x.images.equal(&y.images)
        })
}

#[test]
fn batches_do_not_depend_on_workers_and_follow_the_seed() {
    let qs = questions(22);
    let run = |workers, seed, epoch| {
        loader(qs.clone(), cfg(4, workers, seed))
            .epoch(epoch)
            .map(|b| b.unwrap())
            .collect::<Vec<_>>()
    };
    let a = run(0, 3, 0);
    assert_eq!(a.len(), 6);
    assert_eq!(a[5].labels.len(), 2);
    assert_eq!(a[0].images.size(), [4, 3, 32, 32]);
    assert!(same(&a, &run(3, 3, 0)));
    assert!(same(&a, &run(1, 3, 0)));
    assert!(!same(&a, &run(2, 4, 0)), "another seed, another order");
    assert!(!same(&a, &run(2, 3, 1)), "another epoch, another order");
    // Every sample once per epoch, in the documented order.
    let order = epoch_order(22, true, 3, 0);
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, (0..22).collect::<Vec<_>>());
    let got: Vec<String> = a.iter().flat_map(|b| b.questions.clone()).collect();
    let want: Vec<String> = order.iter().map(|&i| qs[i].question.clone()).collect();
    assert_eq!(got, want);
}

#[test]
fn drop_last_and_no_shuffle() {
    let qs = questions(10);
    let mut c = cfg(4, 2, 0);
    c.drop_last = true;
    c.shuffle = false;
    let l = loader(qs.clone(), c.clone());
    assert_eq!(l.num_batches(), 2);
    let b: Vec<Batch> = l.epoch(0).map(|b| b.unwrap()).collect();
    assert_eq!(b.len(), 2);
    assert_eq!(
        b[1].questions,
        qs[4..8]
            .iter()
            .map(|q| q.question.clone())
            .collect::<Vec<_>>()
    );
    c.drop_last = false;
    assert_eq!(loader(qs, c).num_batches(), 3);
}

#[test]
fn resume_continues_with_the_next_batch_in_the_same_order() {
    let qs = questions(30);
    let full: Vec<Batch> = loader(qs.clone(), cfg(4, 2, 11))
        .epoch(5)
        .map(|b| b.unwrap())
        .collect();
    assert_eq!(full.len(), 8);
    // A first run stops after 3 batches and stores its position (as a checkpoint would).
    let first = loader(qs.clone(), cfg(4, 3, 11));
    let mut it = first.epoch(5);
    let head: Vec<Batch> = it.by_ref().take(3).map(|b| b.unwrap()).collect();
    let pos = it.position();
    assert_eq!(pos, Position { epoch: 5, batch: 3 });
    let saved = serde_json::to_string(&pos).unwrap();
    drop(it);
    drop(first);
    // A new loader (other worker count) resumes there.
    let pos: Position = serde_json::from_str(&saved).unwrap();
    let second = loader(qs.clone(), cfg(4, 1, 11));
    let mut rest = second.resume(pos);
    assert_eq!(rest.remaining(), 5);
    let tail: Vec<Batch> = rest.by_ref().map(|b| b.unwrap()).collect();
    assert_eq!(rest.position(), Position { epoch: 6, batch: 0 });
    assert!(same(&head, &full[..3]));
    assert!(same(&tail, &full[3..]));
}

/// A data set whose images are files in a temporary directory, two of them bad.
struct Files(Vec<PathBuf>, ImageTransform);
impl Dataset for Files {
    type Sample = Tensor;
    fn len(&self) -> usize {
        self.0.len()
    }
    fn get(&self, i: usize, rng: &mut StdRng) -> Result<Tensor> {
        self.1.apply_path(&self.0[i], rng)
    }
}

#[test]
fn bad_images_stop_or_are_skipped_and_counted() {
    let dir = std::env::temp_dir().join(format!("vlp-tasks-loader-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for i in 0..6 {
        let p = dir.join(format!("{i}.png"));
        image::RgbImage::from_fn(8, 8, |x, y| {
            image::Rgb([x as u8 * 30, y as u8 * 30, i as u8 * 40])
        })
        .save(&p)
        .unwrap();
        files.push(p);
    }
    std::fs::write(&files[2], b"not a png at all").unwrap();
    files[4] = dir.join("missing.png");
    let t = ImageTransform::new(ImageTransformConfig::eval(8, Normalize::default())).unwrap();
    let mut c = cfg(2, 2, 0);
    c.shuffle = false;
    let l = DataLoader::new(Files(files.clone(), t.clone()), stack_images, c.clone()).unwrap();
    let r: Vec<Result<Tensor>> = l.epoch(0).collect();
    assert_eq!(r.len(), 3);
    let e1 = r[1].as_ref().unwrap_err();
    assert!(
        matches!(e1, VlpError::Image { .. }) && e1.to_string().contains("2.png"),
        "{e1}"
    );
    assert!(r[2]
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("missing.png"));

    c.skip_bad_samples = true;
    let l = DataLoader::new(Files(files, t), stack_images, c).unwrap();
    let mut it = l.epoch(0);
    let sizes: Vec<i64> = it.by_ref().map(|b| b.unwrap().size()[0]).collect();
    assert_eq!(sizes, vec![2, 1, 1]);
    assert_eq!(it.skipped(), 2);
    std::fs::remove_dir_all(&dir).ok();
}

/// A data set whose `get` takes 25 ms (decoding stands-in).
struct Slow(usize);
impl Dataset for Slow {
    type Sample = usize;
    fn len(&self) -> usize {
        self.0
    }
    fn get(&self, i: usize, _: &mut StdRng) -> Result<usize> {
        std::thread::sleep(Duration::from_millis(25));
        Ok(i)
    }
}

#[test]
fn workers_prefetch_while_the_consumer_works() {
    // 16 samples × 25 ms = 400 ms of loading on one thread.
    let mut c = cfg(2, 4, 0);
    c.prefetch = 2;
    let l = DataLoader::new(Slow(16), Ok, c).unwrap();
    let mut it = l.epoch(0);
    // While the "model" works on the first batch, the workers prepare the next ones.
    let first = it.next().unwrap().unwrap();
    assert_eq!(first.len(), 2);
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let rest: Vec<Vec<usize>> = it.map(|b| b.unwrap()).collect();
    assert_eq!(rest.len(), 7);
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "prefetched batches should be ready: {:?}",
        t.elapsed()
    );
}
