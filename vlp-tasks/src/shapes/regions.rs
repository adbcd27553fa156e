//! UNITER-style region features simulated from the known objects, with detector-like noise.
//!
//! Each image gets one box per object plus 1–`extra_max` spurious low-confidence boxes, sorted by
//! confidence (descending):
//!
//! - `norm_bb` `[n, 7]`: `x1, y1, x2, y2, w, h, w·h`, normalised by the image side. An object's
//!   box is its tight bounding box with every edge moved by N(0, (0.06 · box side)²), clamped
//!   to the image.
//! - `conf` `[n]`: objects U(0.7, 0.99), spurious boxes U(0.05, 0.4).
//! - `soft_labels` `[n, 1 + 6]`: class 0 is background, class `1 + k` is shape `k`. Objects put
//!   U(0.6, 0.95) on their shape, a random share of the rest on a confusable shape and the
//!   remainder on background; spurious boxes put most mass on background.
//! - `features` `[n, dim]`: `relu(code · P + ε)` (ε uniform, standard deviation 0.1) with a fixed Gaussian projection `P`
//!   `[CODE_DIM, dim]` (scaled by `1/√CODE_DIM`, seeded by the data set's seed) and the
//!   "one-hot-ish" code `shape (6) ⊕ colour (8) ⊕ size (2) ⊕ (cx, cy) ⊕ background (1)`: the true
//!   values near 1 (N(0.9, 0.05²)), a confusable colour and shape at U(0, 0.3), the rest 0;
//!   spurious boxes have background 1 and weak random attribute values.
use super::render::outline;
use super::rng::{Purpose, Stream};
use super::scene::{Colour, Scene, Shape};

/// Length of the attribute code.
pub const CODE_DIM: usize = 6 + 8 + 2 + 2 + 1;
/// Number of detector classes (background + shapes).
pub const NUM_CLASSES: usize = 1 + 6;
/// Class names of `soft_labels`.
pub const CLASS_NAMES: [&str; NUM_CLASSES] = [
    "__background__",
    "circle",
    "square",
    "triangle",
    "diamond",
    "star",
    "cross",
];

/// Region features of one image (row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct Regions {
    /// Number of boxes.
    pub n: usize,
    /// Feature size.
    pub dim: usize,
    /// `[n, dim]`.
    pub features: Vec<f32>,
    /// `[n, 7]`.
    pub norm_bb: Vec<f32>,
    /// `[n]`.
    pub conf: Vec<f32>,
    /// `[n, NUM_CLASSES]`.
    pub soft_labels: Vec<f32>,
    /// For each box, the index of the object it was made from (`None` for spurious boxes).
    pub source: Vec<Option<usize>>,
}

/// The fixed projection `[CODE_DIM, dim]` of a data set.
pub fn projection(seed: u64, dim: usize) -> Vec<f32> {
    let mut rng = Stream::new(seed, Purpose::Projection, 0, dim as u64);
    let scale = 1.0 / (CODE_DIM as f64).sqrt();
    (0..CODE_DIM * dim)
        .map(|_| (rng.normal() * scale) as f32)
        .collect()
}

struct Box_ {
    bb: [f32; 4],
    conf: f32,
    code: [f32; CODE_DIM],
    soft: [f32; NUM_CLASSES],
    source: Option<usize>,
}

/// Simulated detections of a scene. `proj` is [`projection`]`(seed, dim)`.
pub fn regions(scene: &Scene, proj: &[f32], extra_max: usize, rng: &mut Stream) -> Regions {
    let dim = proj.len() / CODE_DIM;
    let side = scene.image_size as f32;
    let mut boxes: Vec<Box_> = Vec::new();
    for (i, o) in scene.objects.iter().enumerate() {
        let [x1, y1, x2, y2] = outline(scene, i).bbox();
        let (w, h) = (x2 - x1, y2 - y1);
        let mut j = |v: f32, s: f32| v + (rng.normal() as f32) * 0.06 * s;
        let bb = [j(x1, w), j(y1, h), j(x2, w), j(y2, h)];
        let mut code = [0f32; CODE_DIM];
        code[o.shape.index()] = 0.9 + 0.05 * rng.normal() as f32;
        code[6 + o.colour.index()] = 0.9 + 0.05 * rng.normal() as f32;
        code[14 + o.size.index()] = 0.9 + 0.05 * rng.normal() as f32;
        code[rng.pick(o.shape.confusions()).index()] = rng.uniform(0.0, 0.3) as f32;
        code[6 + rng.pick(o.colour.confusions()).index()] = rng.uniform(0.0, 0.3) as f32;
        code[16] = o.x / side;
        code[17] = o.y / side;
        let p = rng.uniform(0.6, 0.95) as f32;
        let confused = rng.uniform(0.0, 1.0) as f32 * (1.0 - p);
        let mut soft = [0f32; NUM_CLASSES];
        soft[1 + o.shape.index()] = p;
        soft[1 + rng.pick(o.shape.confusions()).index()] += confused;
        soft[0] = 1.0 - p - confused;
        let conf = rng.uniform(0.7, 0.99) as f32;
        boxes.push(Box_ {
            bb,
            conf,
            code,
            soft,
            source: Some(i),
        });
    }
    let extras = if extra_max == 0 {
        0
    } else {
        rng.between(1, extra_max)
    };
    for _ in 0..extras {
        let w = rng.uniform(0.1, 0.5) as f32 * side;
        let h = rng.uniform(0.1, 0.5) as f32 * side;
        let x1 = rng.uniform(0.0, (side - w) as f64) as f32;
        let y1 = rng.uniform(0.0, (side - h) as f64) as f32;
        let mut code = [0f32; CODE_DIM];
        code[rng.below(6)] = rng.uniform(0.0, 0.4) as f32;
        code[6 + rng.below(8)] = rng.uniform(0.0, 0.4) as f32;
        code[14 + rng.below(2)] = rng.uniform(0.0, 0.4) as f32;
        code[16] = (x1 + w / 2.0) / side;
        code[17] = (y1 + h / 2.0) / side;
        code[18] = 1.0;
        let mut soft = [0f32; NUM_CLASSES];
        let fg = rng.uniform(0.05, 0.4) as f32;
        soft[1 + rng.below(6)] = fg;
        soft[0] = 1.0 - fg;
        let conf = rng.uniform(0.05, 0.4) as f32;
        boxes.push(Box_ {
            bb: [x1, y1, x1 + w, y1 + h],
            conf,
            code,
            soft,
            source: None,
        });
    }
    boxes.sort_by(|a, b| b.conf.total_cmp(&a.conf));
    let n = boxes.len();
    let mut out = Regions {
        n,
        dim,
        features: Vec::with_capacity(n * dim),
        norm_bb: Vec::with_capacity(n * 7),
        conf: Vec::with_capacity(n),
        soft_labels: Vec::with_capacity(n * NUM_CLASSES),
        source: Vec::with_capacity(n),
    };
    let mut row = vec![0f32; dim];
    for b in &boxes {
        row.iter_mut().for_each(|v| *v = 0.0);
        for (k, &c) in b.code.iter().enumerate() {
            if c != 0.0 {
                let p = &proj[k * dim..(k + 1) * dim];
                row.iter_mut().zip(p).for_each(|(r, p)| *r += c * p);
            }
        }
        rng.add_uniform_noise(&mut row, 0.1);
        out.features.extend(row.iter().map(|&v| v.max(0.0)));
        let c = |v: f32| v.clamp(0.0, side) / side;
        let (x1, y1) = (c(b.bb[0].min(b.bb[2])), c(b.bb[1].min(b.bb[3])));
        let (mut x2, mut y2) = (c(b.bb[0].max(b.bb[2])), c(b.bb[1].max(b.bb[3])));
        x2 = x2.max((x1 + 1.0 / side).min(1.0));
        y2 = y2.max((y1 + 1.0 / side).min(1.0));
        let (w, h) = (x2 - x1, y2 - y1);
        out.norm_bb.extend([x1, y1, x2, y2, w, h, w * h]);
        out.conf.push(b.conf);
        out.soft_labels.extend(b.soft);
        out.source.push(b.source);
    }
    out
}

/// The class index of a shape in `soft_labels`.
pub fn class_of(shape: Shape) -> usize {
    1 + shape.index()
}

/// The colour slot of the code (for tests and probes): `6 + colour index`.
pub fn colour_slot(colour: Colour) -> usize {
    6 + colour.index()
}
