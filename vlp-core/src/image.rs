//! Image preprocessing as the official pipelines do it on PIL images with torchvision:
//! decoding to RGB (`Image.open(...).convert("RGB")`), PIL's antialiased bicubic resize (bit-exact
//! port of `Resample.c`), centre crop, `RandomResizedCrop` and horizontal flip drawn from a
//! caller-provided [`rand::Rng`], `ToTensor` (`/255`, CHW) and `Normalize`.
//!
//! Images are `image::RgbImage` (8 bits per channel, as PIL's "RGB" mode) until they become
//! `[3, H, W]` Float tensors on the CPU.
use crate::{Result, VlpError};
pub use image::RgbImage;
use rand::Rng;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

// ------------------------------------------------------------------------------------------------
// Decoding.
// ------------------------------------------------------------------------------------------------

/// Reads and decodes a PNG or JPEG file to RGB (alpha dropped, grey and palette expanded, as PIL's
/// `convert("RGB")`). A missing, unreadable or corrupt file gives [`VlpError::Image`] naming it.
pub fn load_image(path: impl AsRef<Path>) -> Result<RgbImage> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| img_err(path, e))?;
    decode_image(&bytes, path)
}

/// Decodes PNG or JPEG bytes to RGB; `name` (a file name, a URL, `<bytes>`) goes into errors.
pub fn decode_image(bytes: &[u8], name: impl AsRef<Path>) -> Result<RgbImage> {
    let name = name.as_ref();
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| img_err(name, e))?;
    if reader.format().is_none() {
        return Err(img_err(
            name,
            "unknown image format (PNG and JPEG are supported)",
        ));
    }
    let img = reader.decode().map_err(|e| img_err(name, e))?;
    Ok(img.to_rgb8())
}

fn img_err(path: &Path, msg: impl std::fmt::Display) -> VlpError {
    VlpError::Image {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

// ------------------------------------------------------------------------------------------------
// PIL's bicubic resampling (Pillow `libImaging/Resample.c`, 8 bits per channel).
// ------------------------------------------------------------------------------------------------

/// Fixed-point precision of Pillow's 8-bit resampling coefficients.
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Support of the bicubic kernel at scale 1.
const BICUBIC_SUPPORT: f64 = 2.0;

/// Keys' cubic with a = -0.5, as Pillow's `bicubic_filter`.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output index: the first source index and the fixed-point weights over the window.
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the source range `[in0, in1)`.
fn precompute_coeffs(in_size: usize, in0: f64, in1: f64, out_size: usize) -> Coeffs {
    let scale = (in1 - in0) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = BICUBIC_SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = in0 + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's `(int)` truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for (x, &kx) in k.iter().enumerate().take(n) {
            let w = if ww != 0.0 { kx / ww } else { kx };
            let f = w * f64::from(1u32 << PRECISION_BITS);
            weights[xx * ksize + x] = if w < 0.0 {
                (f - 0.5) as i32
            } else {
                (f + 0.5) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs {
        bounds,
        ksize,
        weights,
    }
}

#[inline]
fn clip8(v: i64) -> u8 {
    let v = v >> PRECISION_BITS;
    v.clamp(0, 255) as u8
}

/// One separable pass over interleaved RGB rows: along x when `horizontal`, else along y.
fn resample_pass(src: &[u8], w: usize, h: usize, out_len: usize, horizontal: bool) -> Vec<u8> {
    let (in_len, in0, in1) = if horizontal {
        (w, 0.0, w as f64)
    } else {
        (h, 0.0, h as f64)
    };
    let c = precompute_coeffs(in_len, in0, in1, out_len);
    let (ow, oh) = if horizontal {
        (out_len, h)
    } else {
        (w, out_len)
    };
    let mut out = vec![0u8; ow * oh * 3];
    let half = 1i64 << (PRECISION_BITS - 1);
    for yy in 0..oh {
        for xx in 0..ow {
            let o = if horizontal { xx } else { yy };
            let (start, n) = c.bounds[o];
            let k = &c.weights[o * c.ksize..o * c.ksize + n];
            let mut acc = [half; 3];
            for (i, &kw) in k.iter().enumerate() {
                let (sx, sy) = if horizontal {
                    (start + i, yy)
                } else {
                    (xx, start + i)
                };
                let p = (sy * w + sx) * 3;
                for ch in 0..3 {
                    acc[ch] += i64::from(src[p + ch]) * i64::from(kw);
                }
            }
            let q = (yy * ow + xx) * 3;
            for ch in 0..3 {
                out[q + ch] = clip8(acc[ch]);
            }
        }
    }
    out
}

/// PIL's `img.resize((width, height), Image.BICUBIC)` on an RGB image, bit for bit: antialiased
/// (the kernel widens by the scale factor when downsampling), horizontal pass then vertical pass,
/// 22-bit fixed-point weights and 8-bit rounding between the passes. An axis whose size does not
/// change is not resampled.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (ow, oh) = (width as usize, height as usize);
    if ow == 0 || oh == 0 || w == 0 || h == 0 {
        return RgbImage::new(width, height);
    }
    let mut buf = img.as_raw().clone();
    let mut cur_w = w;
    if ow != w {
        buf = resample_pass(&buf, w, h, ow, true);
        cur_w = ow;
    }
    if oh != h {
        buf = resample_pass(&buf, cur_w, h, oh, false);
    }
    RgbImage::from_raw(width, height, buf).expect("buffer size matches the output size")
}

/// torchvision's `Resize(size)` with an int: the shorter side becomes `size`, the longer one
/// `int(size * long / short)`; bicubic.
pub fn resize_shorter_side(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    if short == size || short == 0 {
        return img.clone();
    }
    let new_long = (f64::from(size) * f64::from(long) / f64::from(short)) as u32;
    let (nw, nh) = if w <= h {
        (size, new_long)
    } else {
        (new_long, size)
    };
    resize_bicubic(img, nw, nh)
}

// ------------------------------------------------------------------------------------------------
// Geometry: crops and flips.
// ------------------------------------------------------------------------------------------------

/// A crop window in pixels, torchvision's `(i, j, h, w)` = (top, left, height, width).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    /// First row.
    pub top: u32,
    /// First column.
    pub left: u32,
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
}

/// The pixels of `b` (which must lie inside the image).
pub fn crop(img: &RgbImage, b: CropBox) -> RgbImage {
    assert!(
        b.left + b.width <= img.width() && b.top + b.height <= img.height(),
        "crop {b:?} outside a {}x{} image",
        img.width(),
        img.height()
    );
    image::imageops::crop_imm(img, b.left, b.top, b.width, b.height).to_image()
}

/// torchvision's `CenterCrop((height, width))`: offsets `round((H - h) / 2)` (half to even, as
/// Python), zero padding first when the crop is larger than the image.
pub fn center_crop(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    if width > w || height > h {
        // torchvision pads (left, top, right, bottom) = ((cw-w)//2, (ch-h)//2, (cw-w+1)//2, ...)
        let pw = width.saturating_sub(w);
        let ph = height.saturating_sub(h);
        let mut padded = RgbImage::new(w + pw, h + ph);
        image::imageops::replace(&mut padded, img, i64::from(pw / 2), i64::from(ph / 2));
        return center_crop(&padded, width, height);
    }
    let top = py_round(f64::from(h - height) / 2.0) as u32;
    let left = py_round(f64::from(w - width) / 2.0) as u32;
    crop(
        img,
        CropBox {
            top,
            left,
            height,
            width,
        },
    )
}

/// Mirror image (left-right), torchvision's `hflip`.
pub fn hflip(img: &RgbImage) -> RgbImage {
    image::imageops::flip_horizontal(img)
}

/// `img` rotated clockwise by `k` × 90° (`k` modulo 4).
pub fn rotate90_times(img: &RgbImage, k: u32) -> RgbImage {
    match k % 4 {
        1 => image::imageops::rotate90(img),
        2 => image::imageops::rotate180(img),
        3 => image::imageops::rotate270(img),
        _ => img.clone(),
    }
}

/// Python's `round` (half to even).
fn py_round(x: f64) -> f64 {
    x.round_ties_even()
}

/// torchvision's `RandomResizedCrop.get_params` for a `width` x `height` image: ten tries at an
/// area fraction uniform in `scale` and a log-uniform aspect ratio in `ratio`, then the fallback
/// (the whole image clamped to the ratio range, centred). Draws from `rng` only.
pub fn random_resized_crop_params<R: Rng + ?Sized>(
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut R,
) -> CropBox {
    let area = f64::from(width) * f64::from(height);
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    let uniform = |rng: &mut R, a: f64, b: f64| a + (b - a) * rng.gen::<f64>();
    for _ in 0..10 {
        let target_area = area * uniform(rng, scale.0, scale.1);
        let aspect = uniform(rng, lr0, lr1).exp();
        let w = py_round((target_area * aspect).sqrt());
        let h = py_round((target_area / aspect).sqrt());
        if w > 0.0 && w <= f64::from(width) && h > 0.0 && h <= f64::from(height) {
            let (w, h) = (w as u32, h as u32);
            let top = rng.gen_range(0..=height - h);
            let left = rng.gen_range(0..=width - w);
            return CropBox {
                top,
                left,
                height: h,
                width: w,
            };
        }
    }
    let in_ratio = f64::from(width) / f64::from(height);
    let (lo, hi) = (ratio.0.min(ratio.1), ratio.0.max(ratio.1));
    let (w, h) = if in_ratio < lo {
        (width, py_round(f64::from(width) / lo) as u32)
    } else if in_ratio > hi {
        (py_round(f64::from(height) * hi) as u32, height)
    } else {
        (width, height)
    };
    CropBox {
        top: (height - h) / 2,
        left: (width - w) / 2,
        height: h,
        width: w,
    }
}

/// `RandomResizedCrop(size, scale, ratio, BICUBIC)`: a random window resized to `size` x `size`.
pub fn random_resized_crop<R: Rng + ?Sized>(
    img: &RgbImage,
    size: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut R,
) -> RgbImage {
    let b = random_resized_crop_params(img.width(), img.height(), scale, ratio, rng);
    resize_bicubic(&crop(img, b), size, size)
}

// ------------------------------------------------------------------------------------------------
// Tensors and normalisation.
// ------------------------------------------------------------------------------------------------

/// Per-channel normalisation constants. In a config: `imagenet`, `clip`, `half`, or
/// `{mean: [r, g, b], std: [r, g, b]}`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Default)]
#[serde(from = "NormalizeRepr")]
pub enum Normalize {
    /// ImageNet: mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225) (BEiT-3 uses "half").
    #[default]
    ImageNet,
    /// OpenAI CLIP: mean (0.48145466, 0.4578275, 0.40821073), std (0.26862954, 0.26130258,
    /// 0.27577711) (ALBEF and BLIP).
    Clip,
    /// Mean 0.5, std 0.5: values in [-1, 1] (BEiT-3, VLMo / ViLT).
    Half,
    /// Anything else.
    Custom {
        /// Per-channel mean.
        mean: [f32; 3],
        /// Per-channel standard deviation.
        std: [f32; 3],
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum NormalizeName {
    ImageNet,
    Clip,
    Half,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NormalizeValues {
    mean: [f32; 3],
    std: [f32; 3],
}

#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "`imagenet`, `clip`, `half` or {mean: [r, g, b], std: [r, g, b]}"
)]
enum NormalizeRepr {
    Name(NormalizeName),
    Values(NormalizeValues),
}

impl From<NormalizeRepr> for Normalize {
    fn from(r: NormalizeRepr) -> Self {
        match r {
            NormalizeRepr::Name(NormalizeName::ImageNet) => Normalize::ImageNet,
            NormalizeRepr::Name(NormalizeName::Clip) => Normalize::Clip,
            NormalizeRepr::Name(NormalizeName::Half) => Normalize::Half,
            NormalizeRepr::Values(v) => Normalize::Custom {
                mean: v.mean,
                std: v.std,
            },
        }
    }
}

impl Normalize {
    /// Per-channel means (R, G, B).
    // The published constants, verbatim; they round to f32 as torchvision's float32 tensors do.
    #[allow(clippy::excessive_precision)]
    pub fn mean(&self) -> [f32; 3] {
        match self {
            Normalize::ImageNet => [0.485, 0.456, 0.406],
            Normalize::Clip => [0.481_454_66, 0.457_827_5, 0.408_210_73],
            Normalize::Half => [0.5; 3],
            Normalize::Custom { mean, .. } => *mean,
        }
    }
    /// Per-channel standard deviations (R, G, B).
    #[allow(clippy::excessive_precision)]
    pub fn std(&self) -> [f32; 3] {
        match self {
            Normalize::ImageNet => [0.229, 0.224, 0.225],
            Normalize::Clip => [0.268_629_54, 0.261_302_58, 0.275_777_11],
            Normalize::Half => [0.5; 3],
            Normalize::Custom { std, .. } => *std,
        }
    }
    /// `(x - mean) / std` per channel of a `[3, H, W]` or `[B, 3, H, W]` Float tensor.
    pub fn apply(&self, t: &Tensor) -> Tensor {
        let dev = t.device();
        let shape: &[i64] = if t.dim() == 4 {
            &[1, 3, 1, 1]
        } else {
            &[3, 1, 1]
        };
        let mean = Tensor::from_slice(&self.mean()).view(shape).to_device(dev);
        let std = Tensor::from_slice(&self.std()).view(shape).to_device(dev);
        (t - mean) / std
    }
}

/// torchvision's `ToTensor` on an 8-bit RGB image: `[3, H, W]` Float in [0, 1] (value / 255).
pub fn to_tensor(img: &RgbImage) -> Tensor {
    let (w, h) = (img.width() as i64, img.height() as i64);
    Tensor::from_slice(img.as_raw())
        .view([h, w, 3])
        .permute([2, 0, 1])
        .to_kind(Kind::Float)
        / 255.0
}

/// Stacks `[3, H, W]` tensors into `[B, 3, H, W]`; they must all have the same shape.
pub fn batch(images: &[Tensor]) -> Result<Tensor> {
    let first = images
        .first()
        .ok_or_else(|| VlpError::input("images", "empty batch"))?;
    for (i, t) in images.iter().enumerate() {
        if t.size() != first.size() || t.dim() != 3 {
            return Err(VlpError::input(
                "images",
                format!(
                    "image {i} has shape {:?}, expected [3, H, W] like image 0 {:?}",
                    t.size(),
                    first.size()
                ),
            ));
        }
    }
    Ok(Tensor::stack(images, 0))
}

// ------------------------------------------------------------------------------------------------
// The transform of a data loader.
// ------------------------------------------------------------------------------------------------

/// How evaluation images are brought to `image_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EvalResize {
    /// `Resize((size, size), BICUBIC)`, aspect ratio not kept (ALBEF, BLIP, BEiT-3).
    #[default]
    Square,
    /// `Resize(size, BICUBIC)` then `CenterCrop(size)` (CLIP-style).
    ShorterCenterCrop,
}

fn default_scale() -> (f64, f64) {
    (0.5, 1.0)
}
fn default_ratio() -> (f64, f64) {
    (3.0 / 4.0, 4.0 / 3.0)
}
fn default_true() -> bool {
    true
}

/// Configuration of an [`ImageTransform`] (a YAML/JSON `image:` section).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageTransformConfig {
    /// Output side in pixels (`image_res` of ALBEF, `image_size` of BLIP).
    pub image_size: u32,
    /// Training augmentation (random resized crop + flip) instead of the evaluation resize.
    #[serde(default)]
    pub train: bool,
    /// Normalisation constants.
    #[serde(default)]
    pub normalize: Normalize,
    /// Area fraction range of the random crop.
    #[serde(default = "default_scale")]
    pub scale: (f64, f64),
    /// Aspect-ratio range of the random crop.
    #[serde(default = "default_ratio")]
    pub ratio: (f64, f64),
    /// Random horizontal flip (p = 0.5) when training.
    #[serde(default = "default_true")]
    pub hflip: bool,
    /// Random rotation by a multiple of 90° (each with p = 1/4) after the flip when training:
    /// with `hflip`, all eight symmetries of the square. Only for data whose labels do not
    /// depend on orientation or position (easy-VQA); off by default.
    #[serde(default)]
    pub rot90: bool,
    /// Evaluation resize.
    #[serde(default)]
    pub eval_resize: EvalResize,
}

impl ImageTransformConfig {
    /// The ALBEF/BLIP evaluation transform: square bicubic resize, normalise.
    pub fn eval(image_size: u32, normalize: Normalize) -> Self {
        ImageTransformConfig {
            image_size,
            train: false,
            normalize,
            scale: default_scale(),
            ratio: default_ratio(),
            hflip: true,
            rot90: false,
            eval_resize: EvalResize::Square,
        }
    }
    /// The ALBEF/BLIP training transform: `RandomResizedCrop(size, scale=(0.5, 1))`, flip,
    /// normalise (their RandAugment is not part of it).
    pub fn train(image_size: u32, normalize: Normalize) -> Self {
        ImageTransformConfig {
            train: true,
            ..Self::eval(image_size, normalize)
        }
    }
}

/// Image → normalised `[3, size, size]` Float tensor, as a loader's transform.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageTransform {
    cfg: ImageTransformConfig,
}

impl ImageTransform {
    /// A transform from its configuration; rejects a zero size and bad crop ranges.
    pub fn new(cfg: ImageTransformConfig) -> Result<Self> {
        let bad = |msg: String| VlpError::Config {
            path: PathBuf::from("<image transform>"),
            msg,
        };
        if cfg.image_size == 0 {
            return Err(bad("image_size must be positive".into()));
        }
        let (s0, s1) = cfg.scale;
        if !(s0 > 0.0 && s0 <= s1 && s1 <= 1.0) {
            return Err(bad(format!(
                "scale {:?} must satisfy 0 < lo <= hi <= 1",
                cfg.scale
            )));
        }
        let (r0, r1) = cfg.ratio;
        if !(r0 > 0.0 && r0 <= r1) {
            return Err(bad(format!(
                "ratio {:?} must satisfy 0 < lo <= hi",
                cfg.ratio
            )));
        }
        Ok(ImageTransform { cfg })
    }

    /// The configuration.
    pub fn config(&self) -> &ImageTransformConfig {
        &self.cfg
    }

    /// The geometric part: the resized (and, when training, cropped and maybe flipped) image.
    pub fn apply_image<R: Rng + ?Sized>(&self, img: &RgbImage, rng: &mut R) -> RgbImage {
        let s = self.cfg.image_size;
        if self.cfg.train {
            let out = random_resized_crop(img, s, self.cfg.scale, self.cfg.ratio, rng);
            let out = if self.cfg.hflip && rng.gen::<f64>() < 0.5 {
                hflip(&out)
            } else {
                out
            };
            if self.cfg.rot90 {
                rotate90_times(&out, rng.gen_range(0..4))
            } else {
                out
            }
        } else {
            match self.cfg.eval_resize {
                EvalResize::Square => resize_bicubic(img, s, s),
                EvalResize::ShorterCenterCrop => center_crop(&resize_shorter_side(img, s), s, s),
            }
        }
    }

    /// The whole transform: geometry, `ToTensor`, `Normalize` → `[3, size, size]` Float.
    /// Evaluation transforms draw nothing from `rng`.
    pub fn apply<R: Rng + ?Sized>(&self, img: &RgbImage, rng: &mut R) -> Tensor {
        self.cfg
            .normalize
            .apply(&to_tensor(&self.apply_image(img, rng)))
    }

    /// Loads `path` and applies the transform.
    pub fn apply_path<R: Rng + ?Sized>(
        &self,
        path: impl AsRef<Path>,
        rng: &mut R,
    ) -> Result<Tensor> {
        Ok(self.apply(&load_image(path)?, rng))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 7 % 256) as u8,
                (y * 11 % 256) as u8,
                ((x + y) * 3 % 256) as u8,
            ])
        })
    }

    #[test]
    fn rotate90_times_turns_clockwise() {
        let img = gradient(3, 2);
        let r1 = rotate90_times(&img, 1);
        assert_eq!(r1.dimensions(), (2, 3));
        // Clockwise: the top-left pixel goes to the top-right corner.
        assert_eq!(r1.get_pixel(1, 0), img.get_pixel(0, 0));
        assert_eq!(r1.get_pixel(0, 2), img.get_pixel(2, 1));
        let r2 = rotate90_times(&img, 2);
        assert_eq!(r2.get_pixel(2, 1), img.get_pixel(0, 0));
        assert_eq!(rotate90_times(&r1, 3), img);
        assert_eq!(rotate90_times(&img, 4), img);
    }

    #[test]
    fn rot90_augmentation_draws_every_rotation_and_keeps_pixels() {
        let img = gradient(8, 8);
        let cfg = ImageTransformConfig {
            scale: (1.0, 1.0),
            ratio: (1.0, 1.0),
            hflip: false,
            rot90: true,
            ..ImageTransformConfig::train(8, Normalize::Clip)
        };
        let tf = ImageTransform::new(cfg).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut seen = [false; 4];
        for _ in 0..64 {
            let out = tf.apply_image(&img, &mut rng);
            let k = (0..4)
                .find(|&k| rotate90_times(&img, k) == out)
                .expect("the output is a rotation of the input");
            seen[k as usize] = true;
        }
        assert_eq!(seen, [true; 4]);
        // Off (the default): the same crop never rotates.
        let tf = ImageTransform::new(ImageTransformConfig {
            rot90: false,
            ..tf.config().clone()
        })
        .unwrap();
        assert!((0..16).all(|_| tf.apply_image(&img, &mut rng) == img));
    }

    #[test]
    fn bicubic_kernel_values() {
        assert_eq!(bicubic(0.0), 1.0);
        assert_eq!(bicubic(1.0), 0.0);
        assert_eq!(bicubic(2.0), 0.0);
        assert!((bicubic(0.5) - 0.5625).abs() < 1e-12);
        assert!((bicubic(1.5) + 0.0625).abs() < 1e-12);
    }

    #[test]
    fn coefficients_sum_to_one() {
        for (inp, out) in [(64, 24), (64, 100), (7, 3), (3, 7)] {
            let c = precompute_coeffs(inp, 0.0, inp as f64, out);
            for o in 0..out {
                let (start, n) = c.bounds[o];
                assert!(start + n <= inp);
                let s: i64 = c.weights[o * c.ksize..o * c.ksize + n]
                    .iter()
                    .map(|&w| i64::from(w))
                    .sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= n as i64,
                    "{inp}->{out} row {o}: {s}"
                );
            }
        }
    }

    #[test]
    fn resize_identity_and_constant() {
        let g = gradient(9, 5);
        assert_eq!(resize_bicubic(&g, 9, 5), g);
        let c = RgbImage::from_pixel(10, 6, image::Rgb([200, 13, 77]));
        let r = resize_bicubic(&c, 23, 4);
        assert!(r.pixels().all(|p| p.0 == [200, 13, 77]));
    }

    #[test]
    fn center_crop_offsets_and_padding() {
        let g = gradient(10, 7);
        let c = center_crop(&g, 4, 4);
        // round(1.5) = 2 (half to even), round(3.0) = 3.
        assert_eq!(c.get_pixel(0, 0), g.get_pixel(3, 2));
        let p = center_crop(&g, 12, 7);
        assert_eq!(p.dimensions(), (12, 7));
        assert_eq!(p.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(p.get_pixel(1, 3), g.get_pixel(0, 3));
    }

    #[test]
    fn random_crop_fallback_and_bounds() {
        // An extreme aspect ratio makes every try fail: the fallback is central and clamped.
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let b = random_resized_crop_params(1000, 10, (0.9, 1.0), (0.75, 4.0 / 3.0), &mut rng);
        assert_eq!((b.height, b.width), (10, 13));
        assert_eq!((b.top, b.left), (0, (1000 - 13) / 2));
        for seed in 0..200 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let b = random_resized_crop_params(40, 30, (0.5, 1.0), default_ratio(), &mut rng);
            assert!(b.width > 0 && b.height > 0);
            assert!(b.left + b.width <= 40 && b.top + b.height <= 30, "{b:?}");
            let area = f64::from(b.width * b.height) / 1200.0;
            assert!((0.4..=1.1).contains(&area), "{b:?} area {area}");
        }
    }

    #[test]
    fn transform_config_from_yaml() {
        let c: ImageTransformConfig = serde_yaml::from_str(
            "image_size: 224\nnormalize: {mean: [0.1, 0.2, 0.3], std: [1, 2, 3]}\n",
        )
        .unwrap();
        assert!(!c.train);
        assert_eq!(c.scale, (0.5, 1.0));
        assert_eq!(c.normalize.mean(), [0.1, 0.2, 0.3]);
        assert_eq!(c.normalize.std(), [1.0, 2.0, 3.0]);
        let c: ImageTransformConfig = serde_yaml::from_str(
            "image_size: 8\nnormalize: imagenet\neval_resize: shorter_center_crop\n",
        )
        .unwrap();
        assert_eq!(
            (c.normalize, c.eval_resize),
            (Normalize::ImageNet, EvalResize::ShorterCenterCrop)
        );
        assert!(
            serde_yaml::from_str::<ImageTransformConfig>("image_size: 8\nnormalise: clip\n")
                .is_err()
        );
        let mut bad = ImageTransformConfig::train(8, Normalize::Half);
        bad.scale = (0.0, 1.0);
        assert!(ImageTransform::new(bad).is_err());
    }
}
