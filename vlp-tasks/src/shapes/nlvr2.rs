//! NLVR2: statements about a pair of images, balanced True/False.
use super::rng::Stream;
use super::scene::{number_word, Colour, Ref, Relation, Scene, Shape};

/// Which image of the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The first image (`images[0]`).
    Left,
    /// The second image (`images[1]`).
    Right,
}

impl Side {
    /// "left" or "right".
    pub fn name(self) -> &'static str {
        match self {
            Side::Left => "left",
            Side::Right => "right",
        }
    }

    /// The other side.
    pub fn other(self) -> Side {
        match self {
            Side::Left => Side::Right,
            Side::Right => Side::Left,
        }
    }
}

/// A statement about a pair of scenes, structurally; [`Statement::text`] renders it and
/// [`Statement::truth`] decides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Statement {
    /// "the {side} image has more {what} than the {other} image" — strict comparison of counts.
    More {
        /// The image claimed to have more.
        side: Side,
        /// What is counted.
        what: Ref,
    },
    /// "both images contain {a what}" — each image has at least one match.
    Both {
        /// What is looked for.
        what: Ref,
    },
    /// "exactly one image contains {a what}" — one image has a match, the other none.
    ExactlyOne {
        /// What is looked for.
        what: Ref,
    },
    /// "neither image contains {a what}" — no image has a match.
    Neither {
        /// What is looked for.
        what: Ref,
    },
    /// "the two images contain the same number of {what}" — equal counts.
    SameCount {
        /// What is counted.
        what: Ref,
    },
    /// "there are exactly {n} {what} in total" ("there is exactly one {what} in total") — the
    /// counts of the two images add up to `n`.
    Total {
        /// What is counted.
        what: Ref,
        /// The claimed total.
        n: usize,
    },
    /// "in the {side} image, {a a} is {rel} {a b}" — true when some pair of distinct matching
    /// objects is decidably in the relation; false when every such pair is decidably not in it
    /// (or there is no such pair); undecidable (never generated) otherwise.
    Relate {
        /// The image.
        side: Side,
        /// First object.
        a: Ref,
        /// The relation.
        rel: Relation,
        /// Second object.
        b: Ref,
    },
}

/// The statement families, in a fixed order.
pub const FAMILIES: [&str; 7] = [
    "more",
    "both",
    "exactly_one",
    "neither",
    "same_count",
    "total",
    "relation",
];

/// The family (one of [`FAMILIES`]) of a statement's text, as [`Statement::text`] writes it or
/// after ALBEF's caption preprocessing (lower case, no punctuation); `None` for other text.
pub fn family_of_text(text: &str) -> Option<&'static str> {
    let t = text.trim_start();
    if t.starts_with("in the ") {
        Some("relation")
    } else if t.starts_with("both images contain ") {
        Some("both")
    } else if t.starts_with("exactly one image contains ") {
        Some("exactly_one")
    } else if t.starts_with("neither image contains ") {
        Some("neither")
    } else if t.starts_with("the two images contain the same number of ") {
        Some("same_count")
    } else if t.starts_with("there ") && t.trim_end().ends_with(" in total") {
        Some("total")
    } else if (t.starts_with("the left image has more ")
        || t.starts_with("the right image has more "))
        && t.contains(" image")
    {
        Some("more")
    } else {
        None
    }
}

impl Statement {
    /// The sentence.
    pub fn text(&self) -> String {
        match self {
            Statement::More { side, what } => format!(
                "the {} image has more {} than the {} image",
                side.name(),
                what.plural(),
                side.other().name()
            ),
            Statement::Both { what } => format!("both images contain {}", what.indefinite()),
            Statement::ExactlyOne { what } => {
                format!("exactly one image contains {}", what.indefinite())
            }
            Statement::Neither { what } => format!("neither image contains {}", what.indefinite()),
            Statement::SameCount { what } => {
                format!(
                    "the two images contain the same number of {}",
                    what.plural()
                )
            }
            Statement::Total { what, n: 1 } => {
                format!("there is exactly one {} in total", what.np())
            }
            Statement::Total { what, n } => {
                format!(
                    "there are exactly {} {} in total",
                    number_word(*n),
                    what.plural()
                )
            }
            Statement::Relate { side, a, rel, b } => format!(
                "in the {} image, {} is {} {}",
                side.name(),
                a.indefinite(),
                rel.phrase(),
                b.indefinite()
            ),
        }
    }

    /// The family name (one of [`FAMILIES`]).
    pub fn family(&self) -> &'static str {
        match self {
            Statement::More { .. } => "more",
            Statement::Both { .. } => "both",
            Statement::ExactlyOne { .. } => "exactly_one",
            Statement::Neither { .. } => "neither",
            Statement::SameCount { .. } => "same_count",
            Statement::Total { .. } => "total",
            Statement::Relate { .. } => "relation",
        }
    }

    /// Truth on the pair (`left` = `images[0]`), `None` when undecidable.
    pub fn truth(&self, left: &Scene, right: &Scene) -> Option<bool> {
        let side = |s: Side| if s == Side::Left { left } else { right };
        match self {
            Statement::More { side: s, what } => {
                Some(side(*s).count(what) > side(s.other()).count(what))
            }
            Statement::Both { what } => Some(left.count(what) > 0 && right.count(what) > 0),
            Statement::ExactlyOne { what } => {
                Some((left.count(what) > 0) != (right.count(what) > 0))
            }
            Statement::Neither { what } => Some(left.count(what) == 0 && right.count(what) == 0),
            Statement::SameCount { what } => Some(left.count(what) == right.count(what)),
            Statement::Total { what, n } => Some(left.count(what) + right.count(what) == *n),
            Statement::Relate { side: s, a, rel, b } => {
                let scene = side(*s);
                let mut undecided = false;
                for i in scene.matching(a) {
                    for j in scene.matching(b) {
                        if i == j {
                            continue;
                        }
                        match scene.relation(i, j, *rel) {
                            Some(true) => return Some(true),
                            Some(false) => {}
                            None => undecided = true,
                        }
                    }
                }
                if undecided {
                    None
                } else {
                    Some(false)
                }
            }
        }
    }
}

/// The kinds of things statements talk about: objects of a shape, of a colour, of a colour and
/// shape, or of a size and shape; drawn from the objects of both scenes (and, for absent
/// things, from the whole vocabulary).
fn things(left: &Scene, right: &Scene, rng: &mut Stream) -> Vec<Ref> {
    let mut out: Vec<Ref> = Vec::new();
    for o in left.objects.iter().chain(&right.objects) {
        out.push(Ref::shape(o.shape));
        out.push(Ref::colour(o.colour));
        out.push(Ref::colour_shape(o.colour, o.shape));
        out.push(Ref {
            size: Some(o.size),
            shape: Some(o.shape),
            ..Ref::ANY
        });
    }
    for _ in 0..4 {
        out.push(Ref::shape(*rng.pick(&Shape::ALL)));
        out.push(Ref::colour(*rng.pick(&Colour::ALL)));
        out.push(Ref::colour_shape(
            *rng.pick(&Colour::ALL),
            *rng.pick(&Shape::ALL),
        ));
    }
    out.sort();
    out.dedup();
    out
}

/// Every candidate statement of a family about the pair (with possibly undecidable ones).
fn candidates(family: &str, left: &Scene, right: &Scene, rng: &mut Stream) -> Vec<Statement> {
    let things = things(left, right, rng);
    let mut out = Vec::new();
    match family {
        "more" => {
            for side in [Side::Left, Side::Right] {
                out.push(Statement::More {
                    side,
                    what: Ref::ANY,
                });
                for &what in &things {
                    if what.colour.is_none() || what.shape.is_none() {
                        out.push(Statement::More { side, what });
                    }
                }
            }
        }
        "both" => out.extend(things.iter().map(|&what| Statement::Both { what })),
        "exactly_one" => out.extend(things.iter().map(|&what| Statement::ExactlyOne { what })),
        "neither" => out.extend(things.iter().map(|&what| Statement::Neither { what })),
        "same_count" => {
            out.push(Statement::SameCount { what: Ref::ANY });
            for &what in &things {
                if what.colour.is_none() || what.shape.is_none() {
                    out.push(Statement::SameCount { what });
                }
            }
        }
        "total" => {
            let total = |r: &Ref| left.count(r) + right.count(r);
            let mut whats = vec![Ref::ANY];
            whats.extend(
                things
                    .iter()
                    .filter(|r| r.size.is_none() && r.colour.is_none()),
            );
            whats.extend(
                things
                    .iter()
                    .filter(|r| r.size.is_none() && r.shape.is_none()),
            );
            for what in whats {
                let t = total(&what);
                out.push(Statement::Total { what, n: t });
                for n in [t + 1, t.saturating_sub(1), t + 2] {
                    if n != t && n > 0 {
                        out.push(Statement::Total { what, n });
                    }
                }
            }
        }
        "relation" => {
            for (side, scene) in [(Side::Left, left), (Side::Right, right)] {
                let objs = &scene.objects;
                for i in 0..objs.len() {
                    for j in 0..objs.len() {
                        if i == j {
                            continue;
                        }
                        let a = Ref::colour_shape(objs[i].colour, objs[i].shape);
                        let b = Ref::colour_shape(objs[j].colour, objs[j].shape);
                        for rel in Relation::ALL {
                            out.push(Statement::Relate { side, a, rel, b });
                            let b2 = Ref::shape(objs[j].shape);
                            out.push(Statement::Relate {
                                side,
                                a,
                                rel,
                                b: b2,
                            });
                        }
                    }
                }
                // Things from the other image: usually false here.
                let other = if side == Side::Left { right } else { left };
                for o in &other.objects {
                    let a = Ref::colour_shape(o.colour, o.shape);
                    if let Some(p) = objs.first() {
                        let b = Ref::shape(p.shape);
                        out.push(Statement::Relate {
                            side,
                            a,
                            rel: *rng.pick(&Relation::ALL),
                            b,
                        });
                    }
                }
            }
        }
        _ => {}
    }
    out
}

/// A statement about the pair whose truth is `target`: families are tried in random order and
/// a random decidable candidate with the wanted truth value is returned; `None` when no family
/// has one.
pub fn statement(left: &Scene, right: &Scene, target: bool, rng: &mut Stream) -> Option<Statement> {
    statement_of(&FAMILIES, left, right, target, rng)
}

/// [`statement`] drawing from `families` only (names of [`FAMILIES`]; an unknown name has no
/// candidates).
pub fn statement_of(
    families: &[&str],
    left: &Scene,
    right: &Scene,
    target: bool,
    rng: &mut Stream,
) -> Option<Statement> {
    let mut families = families.to_vec();
    rng.shuffle(&mut families);
    for family in families {
        let fitting: Vec<Statement> = candidates(family, left, right, rng)
            .into_iter()
            .filter(|s| s.truth(left, right) == Some(target))
            .collect();
        if !fitting.is_empty() {
            return Some(*rng.pick(&fitting));
        }
    }
    None
}
