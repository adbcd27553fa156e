//! Scenes: objects and their attributes, the scene sampler, spatial relations and referring
//! expressions.
//!
//! Coordinates are in pixels, `x` to the right and `y` downwards, on a square canvas of side
//! [`Scene::image_size`]. Every object fits inside the circle of radius [`Scene::radius`] around
//! its centre, and objects never overlap (nothing is ever occluded), so every object is fully
//! visible.
use super::rng::Stream;
use serde::{Deserialize, Serialize};

/// Object shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// A disc.
    Circle,
    /// An axis-aligned square.
    Square,
    /// An equilateral triangle pointing up.
    Triangle,
    /// A square rotated by 45°.
    Diamond,
    /// A five-pointed star pointing up.
    Star,
    /// A plus sign.
    Cross,
}

impl Shape {
    /// Every shape, in index order.
    pub const ALL: [Shape; 6] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Diamond,
        Shape::Star,
        Shape::Cross,
    ];

    /// The English noun.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Diamond => "diamond",
            Shape::Star => "star",
            Shape::Cross => "cross",
        }
    }

    /// The English plural.
    pub fn plural(self) -> &'static str {
        match self {
            Shape::Circle => "circles",
            Shape::Square => "squares",
            Shape::Triangle => "triangles",
            Shape::Diamond => "diamonds",
            Shape::Star => "stars",
            Shape::Cross => "crosses",
        }
    }

    /// Position in [`Shape::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Shapes a careless annotator or a detector mistakes this one for.
    pub fn confusions(self) -> &'static [Shape] {
        match self {
            Shape::Circle => &[Shape::Square, Shape::Star],
            Shape::Square => &[Shape::Diamond, Shape::Circle],
            Shape::Triangle => &[Shape::Diamond, Shape::Star],
            Shape::Diamond => &[Shape::Square, Shape::Triangle],
            Shape::Star => &[Shape::Cross, Shape::Triangle],
            Shape::Cross => &[Shape::Star, Shape::Square],
        }
    }
}

/// Object colours (well separated in RGB).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    /// (220, 40, 40)
    Red,
    /// (40, 180, 60)
    Green,
    /// (50, 90, 235)
    Blue,
    /// (240, 220, 40)
    Yellow,
    /// (150, 60, 200)
    Purple,
    /// (245, 140, 20)
    Orange,
    /// (40, 215, 225)
    Cyan,
    /// (245, 245, 245)
    White,
}

impl Colour {
    /// Every colour, in index order.
    pub const ALL: [Colour; 8] = [
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::Purple,
        Colour::Orange,
        Colour::Cyan,
        Colour::White,
    ];

    /// The English adjective (American spelling, as in VQA: "color").
    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Purple => "purple",
            Colour::Orange => "orange",
            Colour::Cyan => "cyan",
            Colour::White => "white",
        }
    }

    /// The rendered RGB value.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 40, 40],
            Colour::Green => [40, 180, 60],
            Colour::Blue => [50, 90, 235],
            Colour::Yellow => [240, 220, 40],
            Colour::Purple => [150, 60, 200],
            Colour::Orange => [245, 140, 20],
            Colour::Cyan => [40, 215, 225],
            Colour::White => [245, 245, 245],
        }
    }

    /// Position in [`Colour::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Colours a careless annotator or a detector mistakes this one for.
    pub fn confusions(self) -> &'static [Colour] {
        match self {
            Colour::Red => &[Colour::Orange, Colour::Purple],
            Colour::Green => &[Colour::Cyan, Colour::Yellow],
            Colour::Blue => &[Colour::Purple, Colour::Cyan],
            Colour::Yellow => &[Colour::Orange, Colour::White],
            Colour::Purple => &[Colour::Blue, Colour::Red],
            Colour::Orange => &[Colour::Red, Colour::Yellow],
            Colour::Cyan => &[Colour::Green, Colour::Blue],
            Colour::White => &[Colour::Yellow, Colour::Cyan],
        }
    }
}

/// Object sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    /// Radius 0.11 × image side.
    Small,
    /// Radius 0.19 × image side.
    Large,
}

impl Size {
    /// Both sizes.
    pub const ALL: [Size; 2] = [Size::Small, Size::Large];

    /// The English adjective.
    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }

    /// A synonym used by some caption templates.
    pub fn synonym(self) -> &'static str {
        match self {
            Size::Small => "little",
            Size::Large => "big",
        }
    }

    /// Position in [`Size::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The other size.
    pub fn other(self) -> Size {
        match self {
            Size::Small => Size::Large,
            Size::Large => Size::Small,
        }
    }
}

/// One object of a scene.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Object {
    /// Shape.
    pub shape: Shape,
    /// Colour.
    pub colour: Colour,
    /// Size class.
    pub size: Size,
    /// Centre, pixels from the left edge.
    pub x: f32,
    /// Centre, pixels from the top edge.
    pub y: f32,
}

impl Object {
    /// An object.
    pub fn new(shape: Shape, colour: Colour, size: Size, x: f32, y: f32) -> Object {
        Object {
            shape,
            colour,
            size,
            x,
            y,
        }
    }
}

/// A spatial relation between two objects (centre to centre, with a dead band).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Relation {
    /// `a` is left of `b`.
    LeftOf,
    /// `a` is right of `b`.
    RightOf,
    /// `a` is above `b`.
    Above,
    /// `a` is below `b`.
    Below,
}

impl Relation {
    /// All relations.
    pub const ALL: [Relation; 4] = [
        Relation::LeftOf,
        Relation::RightOf,
        Relation::Above,
        Relation::Below,
    ];

    /// The phrase placed between the two noun phrases ("left of", "above", …).
    pub fn phrase(self) -> &'static str {
        match self {
            Relation::LeftOf => "left of",
            Relation::RightOf => "right of",
            Relation::Above => "above",
            Relation::Below => "below",
        }
    }

    /// Longer phrase used by questions and some captions ("to the left of", "above", …).
    pub fn long_phrase(self) -> &'static str {
        match self {
            Relation::LeftOf => "to the left of",
            Relation::RightOf => "to the right of",
            Relation::Above => "above",
            Relation::Below => "below",
        }
    }

    /// The converse relation (`a R b` ⇔ `b R' a`).
    pub fn converse(self) -> Relation {
        match self {
            Relation::LeftOf => Relation::RightOf,
            Relation::RightOf => Relation::LeftOf,
            Relation::Above => Relation::Below,
            Relation::Below => Relation::Above,
        }
    }
}

/// An attribute value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Attr {
    /// A shape.
    Shape(Shape),
    /// A colour.
    Colour(Colour),
    /// A size.
    Size(Size),
}

impl Attr {
    /// Whether `o` has this attribute value.
    pub fn holds(self, o: &Object) -> bool {
        match self {
            Attr::Shape(s) => o.shape == s,
            Attr::Colour(c) => o.colour == c,
            Attr::Size(s) => o.size == s,
        }
    }
}

/// A description of objects by any subset of their attributes ("large red circle", "red object",
/// "circle", "object").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ref {
    /// Required size, if any.
    pub size: Option<Size>,
    /// Required colour, if any.
    pub colour: Option<Colour>,
    /// Required shape, if any.
    pub shape: Option<Shape>,
}

impl Ref {
    /// Any object.
    pub const ANY: Ref = Ref {
        size: None,
        colour: None,
        shape: None,
    };

    /// Objects of a shape.
    pub fn shape(shape: Shape) -> Ref {
        Ref {
            shape: Some(shape),
            ..Ref::ANY
        }
    }

    /// Objects of a colour.
    pub fn colour(colour: Colour) -> Ref {
        Ref {
            colour: Some(colour),
            ..Ref::ANY
        }
    }

    /// Objects of a colour and shape.
    pub fn colour_shape(colour: Colour, shape: Shape) -> Ref {
        Ref {
            colour: Some(colour),
            shape: Some(shape),
            ..Ref::ANY
        }
    }

    /// All three attributes of `o`.
    pub fn full(o: &Object) -> Ref {
        Ref {
            size: Some(o.size),
            colour: Some(o.colour),
            shape: Some(o.shape),
        }
    }

    /// Whether `o` fits the description.
    pub fn matches(&self, o: &Object) -> bool {
        self.size.is_none_or(|s| s == o.size)
            && self.colour.is_none_or(|c| c == o.colour)
            && self.shape.is_none_or(|s| s == o.shape)
    }

    /// The noun phrase without article: "large red circle", "red object", "object".
    pub fn np(&self) -> String {
        let mut words: Vec<&str> = Vec::with_capacity(3);
        if let Some(s) = self.size {
            words.push(s.name());
        }
        if let Some(c) = self.colour {
            words.push(c.name());
        }
        words.push(self.shape.map_or("object", Shape::name));
        words.join(" ")
    }

    /// The plural noun phrase: "large red circles", "red objects", "objects".
    pub fn plural(&self) -> String {
        let mut words: Vec<&str> = Vec::with_capacity(3);
        if let Some(s) = self.size {
            words.push(s.name());
        }
        if let Some(c) = self.colour {
            words.push(c.name());
        }
        words.push(self.shape.map_or("objects", Shape::plural));
        words.join(" ")
    }

    /// The noun phrase with its indefinite article: "a large red circle", "an orange star".
    pub fn indefinite(&self) -> String {
        with_article(&self.np())
    }

    /// Number of attributes used.
    pub fn len(&self) -> usize {
        self.size.is_some() as usize
            + self.colour.is_some() as usize
            + self.shape.is_some() as usize
    }

    /// Whether no attribute is used (matches every object).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `"a " + np` or `"an " + np` by the first letter.
pub fn with_article(np: &str) -> String {
    let vowel = np.chars().next().is_some_and(|c| "aeiou".contains(c));
    format!("{} {np}", if vowel { "an" } else { "a" })
}

/// The English word for small counts ("zero" … "ten"), digits above.
pub fn number_word(n: usize) -> String {
    const W: [&str; 11] = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    ];
    W.get(n).map_or_else(|| n.to_string(), |w| w.to_string())
}

/// Which attributes a referring expression may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefUse {
    /// Shape and size only (to ask for the colour).
    NoColour,
    /// Colour and size only (to ask for the shape).
    NoShape,
    /// Colour and shape, size only when needed (general reference).
    Any,
}

/// A scene: the canvas side and its objects (in drawing order).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scene {
    /// Side of the square image, pixels.
    pub image_size: u32,
    /// The objects.
    pub objects: Vec<Object>,
}

/// The region names of the 3 × 3 grid used by captions ("top left", "middle", …).
pub const REGIONS: [[&str; 3]; 3] = [
    ["top left", "top", "top right"],
    ["left", "middle", "right"],
    ["bottom left", "bottom", "bottom right"],
];

impl Scene {
    /// A scene of the given side and objects.
    pub fn new(image_size: u32, objects: Vec<Object>) -> Scene {
        Scene {
            image_size,
            objects,
        }
    }

    /// The radius of the circle that holds an object of a size class.
    pub fn radius(&self, size: Size) -> f32 {
        radius(self.image_size, size)
    }

    /// The dead band of spatial relations: centres closer than this along an axis are neither
    /// left/right (or above/below) of each other. 0.08 × image side.
    pub fn relation_margin(&self) -> f32 {
        0.08 * self.image_size as f32
    }

    /// Truth of `a rel b`: `Some(true)` when the centres differ by at least the margin in the
    /// relation's direction, `Some(false)` when they differ by at least the margin the other way,
    /// `None` (undecidable, never asked) in between.
    pub fn relation(&self, a: usize, b: usize, rel: Relation) -> Option<bool> {
        let (oa, ob) = (&self.objects[a], &self.objects[b]);
        let d = match rel {
            Relation::LeftOf => ob.x - oa.x,
            Relation::RightOf => oa.x - ob.x,
            Relation::Above => ob.y - oa.y,
            Relation::Below => oa.y - ob.y,
        };
        let m = self.relation_margin();
        if d >= m {
            Some(true)
        } else if d <= -m {
            Some(false)
        } else {
            None
        }
    }

    /// Number of objects matching `r`.
    pub fn count(&self, r: &Ref) -> usize {
        self.objects.iter().filter(|o| r.matches(o)).count()
    }

    /// Indices of the objects matching `r`.
    pub fn matching(&self, r: &Ref) -> Vec<usize> {
        (0..self.objects.len())
            .filter(|&i| r.matches(&self.objects[i]))
            .collect()
    }

    /// The one object matching `r`, if exactly one does.
    pub fn resolve(&self, r: &Ref) -> Option<usize> {
        let m = self.matching(r);
        (m.len() == 1).then(|| m[0])
    }

    /// The shortest description of object `i` that matches it alone, using the allowed
    /// attributes; `None` when none does.
    pub fn refer(&self, i: usize, used: RefUse) -> Option<Ref> {
        let o = &self.objects[i];
        let (s, c, z) = (Some(o.shape), Some(o.colour), Some(o.size));
        let candidates: &[Ref] = match used {
            RefUse::NoColour => &[
                Ref {
                    shape: s,
                    ..Ref::ANY
                },
                Ref {
                    shape: s,
                    size: z,
                    ..Ref::ANY
                },
            ],
            RefUse::NoShape => &[
                Ref {
                    colour: c,
                    ..Ref::ANY
                },
                Ref {
                    colour: c,
                    size: z,
                    ..Ref::ANY
                },
            ],
            RefUse::Any => &[
                Ref {
                    shape: s,
                    ..Ref::ANY
                },
                Ref {
                    colour: c,
                    shape: s,
                    ..Ref::ANY
                },
                Ref {
                    size: z,
                    shape: s,
                    ..Ref::ANY
                },
                Ref {
                    size: z,
                    colour: c,
                    shape: s,
                },
            ],
        };
        candidates
            .iter()
            .copied()
            .find(|r| self.resolve(r) == Some(i))
    }

    /// The 3 × 3 grid cell name of object `i` ("top left", "middle", …). The grid divides the
    /// range its centre can take (`r + 1 … side − r − 1` for its radius `r`) in thirds, so that
    /// every cell is equally likely for both sizes.
    pub fn region(&self, i: usize) -> &'static str {
        let o = &self.objects[i];
        let r = self.radius(o.size);
        let (lo, hi) = (r + 1.0, self.image_size as f32 - r - 1.0);
        let cell = |v: f32| (((v - lo) / (hi - lo) * 3.0).max(0.0) as usize).min(2);
        REGIONS[cell(o.y)][cell(o.x)]
    }

    /// Object indices sorted left to right (ties: top to bottom).
    pub fn left_to_right(&self) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.objects.len()).collect();
        idx.sort_by(|&a, &b| {
            let (oa, ob) = (&self.objects[a], &self.objects[b]);
            oa.x.total_cmp(&ob.x).then(oa.y.total_cmp(&ob.y))
        });
        idx
    }

    /// Object indices sorted top to bottom (ties: left to right).
    pub fn top_to_bottom(&self) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.objects.len()).collect();
        idx.sort_by(|&a, &b| {
            let (oa, ob) = (&self.objects[a], &self.objects[b]);
            oa.y.total_cmp(&ob.y).then(oa.x.total_cmp(&ob.x))
        });
        idx
    }

    /// Whether the scene is valid: objects inside the canvas, pairwise separated, and no two
    /// objects with the same shape, colour and size.
    pub fn check(&self) -> Result<(), String> {
        let s = self.image_size as f32;
        for (i, o) in self.objects.iter().enumerate() {
            let r = self.radius(o.size);
            if o.x - r < 0.0 || o.y - r < 0.0 || o.x + r > s || o.y + r > s {
                return Err(format!("object {i} leaves the canvas"));
            }
            for (j, p) in self.objects.iter().enumerate().skip(i + 1) {
                let d = ((o.x - p.x).powi(2) + (o.y - p.y).powi(2)).sqrt();
                if d < r + self.radius(p.size) {
                    return Err(format!("objects {i} and {j} overlap"));
                }
                if o.shape == p.shape && o.colour == p.colour && o.size == p.size {
                    return Err(format!("objects {i} and {j} are identical"));
                }
            }
        }
        Ok(())
    }
}

/// The radius of the circle holding an object of a size class on a canvas of side `image_size`.
pub fn radius(image_size: u32, size: Size) -> f32 {
    image_size as f32
        * match size {
            Size::Small => 0.11,
            Size::Large => 0.19,
        }
}

/// Parameters of the scene sampler.
#[derive(Clone, Copy, Debug)]
pub struct SceneParams {
    /// Side of the canvas, pixels.
    pub image_size: u32,
    /// Fewest objects.
    pub min_objects: usize,
    /// Most objects.
    pub max_objects: usize,
}

/// Samples a scene. The object count `n ∈ [min, max]` is drawn with probability ∝ `n`; shape,
/// colour and size uniformly, re-drawn while a full duplicate of an earlier object; the centre
/// uniformly inside the canvas (one pixel of border), re-drawn while the object's circle comes
/// closer than `0.04 × side` to an earlier one. A scene that cannot be completed in 100 tries of
/// one object is re-drawn from scratch.
pub fn sample_scene(p: &SceneParams, rng: &mut Stream) -> Scene {
    let side = p.image_size as f32;
    let gap = 0.04 * side;
    let weights: Vec<f64> = (p.min_objects..=p.max_objects).map(|n| n as f64).collect();
    'scene: loop {
        let n = p.min_objects + rng.weighted(&weights);
        let mut objects: Vec<Object> = Vec::with_capacity(n);
        for _ in 0..n {
            let (shape, colour, size) = loop {
                let shape = *rng.pick(&Shape::ALL);
                let colour = *rng.pick(&Colour::ALL);
                let size = *rng.pick(&Size::ALL);
                if !objects
                    .iter()
                    .any(|o| o.shape == shape && o.colour == colour && o.size == size)
                {
                    break (shape, colour, size);
                }
            };
            let r = radius(p.image_size, size);
            let lo = (r + 1.0) as f64;
            let hi = (side - r - 1.0) as f64;
            let mut placed = None;
            for _ in 0..100 {
                let x = rng.uniform(lo, hi) as f32;
                let y = rng.uniform(lo, hi) as f32;
                let free = objects.iter().all(|o| {
                    let d = ((o.x - x).powi(2) + (o.y - y).powi(2)).sqrt();
                    d >= r + radius(p.image_size, o.size) + gap
                });
                if free {
                    placed = Some((x, y));
                    break;
                }
            }
            match placed {
                Some((x, y)) => objects.push(Object {
                    shape,
                    colour,
                    size,
                    x,
                    y,
                }),
                None => continue 'scene,
            }
        }
        return Scene {
            image_size: p.image_size,
            objects,
        };
    }
}
