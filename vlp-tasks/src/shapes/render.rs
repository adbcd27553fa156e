//! The renderer: flat-coloured shapes on a dark background (or, per image, a random light one),
//! optional supersampled anti-aliasing and optional Gaussian pixel noise.
use super::rng::Stream;
use super::scene::{Object, Scene, Shape};

/// The background colour (dark grey).
pub const BACKGROUND: [u8; 3] = [24, 24, 28];

/// Rendering options.
#[derive(Clone, Copy, Debug)]
pub struct RenderParams {
    /// Supersampling factor per axis (1 = no anti-aliasing, 4 = 16 samples per pixel).
    pub supersample: u32,
    /// Standard deviation of the Gaussian noise added to every channel of every pixel, in
    /// 0–255 units (0 = none).
    pub noise_std: f32,
    /// Background colour ([`BACKGROUND`] by default).
    pub background: [u8; 3],
}

/// The outline of an object: a disc or a polygon (vertices in pixels).
#[derive(Clone, Debug)]
pub enum Outline {
    /// Centre and radius.
    Disc {
        /// Centre x.
        x: f32,
        /// Centre y.
        y: f32,
        /// Radius.
        r: f32,
    },
    /// A closed polygon (even–odd rule), vertices in order.
    Polygon(Vec<[f32; 2]>),
}

impl Outline {
    /// The outline of object `o` of a scene.
    pub fn of(o: &Object, r: f32) -> Outline {
        let (x, y) = (o.x, o.y);
        let rect = |hw: f32, hh: f32| {
            vec![
                [x - hw, y - hh],
                [x + hw, y - hh],
                [x + hw, y + hh],
                [x - hw, y + hh],
            ]
        };
        let polar = |rad: f32, deg: f32| {
            let a = deg.to_radians();
            [x + rad * a.cos(), y + rad * a.sin()]
        };
        match o.shape {
            Shape::Circle => Outline::Disc { x, y, r },
            Shape::Square => Outline::Polygon(rect(0.7 * r, 0.7 * r)),
            Shape::Diamond => {
                Outline::Polygon(vec![[x, y - r], [x + r, y], [x, y + r], [x - r, y]])
            }
            Shape::Triangle => {
                Outline::Polygon((0..3).map(|k| polar(r, -90.0 + 120.0 * k as f32)).collect())
            }
            Shape::Star => Outline::Polygon(
                (0..10)
                    .map(|k| {
                        polar(
                            if k % 2 == 0 { r } else { 0.45 * r },
                            -90.0 + 36.0 * k as f32,
                        )
                    })
                    .collect(),
            ),
            Shape::Cross => {
                let (a, b) = (0.95 * r, 0.32 * r);
                Outline::Polygon(vec![
                    [x - b, y - a],
                    [x + b, y - a],
                    [x + b, y - b],
                    [x + a, y - b],
                    [x + a, y + b],
                    [x + b, y + b],
                    [x + b, y + a],
                    [x - b, y + a],
                    [x - b, y + b],
                    [x - a, y + b],
                    [x - a, y - b],
                    [x - b, y - b],
                ])
            }
        }
    }

    /// Whether the point `(px, py)` lies inside.
    pub fn contains(&self, px: f32, py: f32) -> bool {
        match self {
            Outline::Disc { x, y, r } => (px - x).powi(2) + (py - y).powi(2) <= r * r,
            Outline::Polygon(v) => {
                let mut inside = false;
                let mut j = v.len() - 1;
                for i in 0..v.len() {
                    let ([xi, yi], [xj, yj]) = (v[i], v[j]);
                    if (yi > py) != (yj > py) && px < (xj - xi) * (py - yi) / (yj - yi) + xi {
                        inside = !inside;
                    }
                    j = i;
                }
                inside
            }
        }
    }

    /// The tight bounding box `[x1, y1, x2, y2]` in pixels.
    pub fn bbox(&self) -> [f32; 4] {
        match self {
            Outline::Disc { x, y, r } => [x - r, y - r, x + r, y + r],
            Outline::Polygon(v) => v.iter().fold(
                [
                    f32::INFINITY,
                    f32::INFINITY,
                    f32::NEG_INFINITY,
                    f32::NEG_INFINITY,
                ],
                |b, p| {
                    [
                        b[0].min(p[0]),
                        b[1].min(p[1]),
                        b[2].max(p[0]),
                        b[3].max(p[1]),
                    ]
                },
            ),
        }
    }
}

/// The outline of object `i` of a scene.
pub fn outline(scene: &Scene, i: usize) -> Outline {
    let o = &scene.objects[i];
    Outline::of(o, scene.radius(o.size))
}

/// Renders a scene to packed RGB8 (row-major, `side × side × 3` bytes). Pixel noise draws from
/// `rng` (untouched when `noise_std == 0`).
pub fn render(scene: &Scene, p: &RenderParams, rng: &mut Stream) -> Vec<u8> {
    let side = scene.image_size as usize;
    let mut acc: Vec<[f32; 3]> = vec![p.background.map(f32::from); side * side];
    let ss = p.supersample.max(1);
    let inv = 1.0 / ss as f32;
    for i in 0..scene.objects.len() {
        let shape = outline(scene, i);
        let colour = scene.objects[i].colour.rgb().map(f32::from);
        let [x1, y1, x2, y2] = shape.bbox();
        let clamp = |v: f32| (v.max(0.0) as usize).min(side);
        let (cx1, cy1) = (clamp(x1.floor()), clamp(y1.floor()));
        let (cx2, cy2) = (clamp(x2.ceil() + 1.0), clamp(y2.ceil() + 1.0));
        for py in cy1..cy2 {
            for px in cx1..cx2 {
                let mut hits = 0u32;
                for sy in 0..ss {
                    for sx in 0..ss {
                        let fx = px as f32 + (sx as f32 + 0.5) * inv;
                        let fy = py as f32 + (sy as f32 + 0.5) * inv;
                        hits += shape.contains(fx, fy) as u32;
                    }
                }
                if hits > 0 {
                    let cov = hits as f32 / (ss * ss) as f32;
                    let a = &mut acc[py * side + px];
                    for c in 0..3 {
                        a[c] += (colour[c] - a[c]) * cov;
                    }
                }
            }
        }
    }
    let mut out = Vec::with_capacity(side * side * 3);
    for a in &acc {
        for v in a {
            let n = if p.noise_std > 0.0 {
                rng.normal() as f32 * p.noise_std
            } else {
                0.0
            };
            out.push((v + n).round().clamp(0.0, 255.0) as u8);
        }
    }
    out
}
