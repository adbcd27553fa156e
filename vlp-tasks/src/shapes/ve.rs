//! SNLI-VE: hypotheses about one image labelled entailment / neutral / contradiction.
//!
//! Rules: a hypothesis is **entailment** when it is true of the rendered scene and
//! **contradiction** when it is false of it — every object is fully visible (objects never
//! overlap or leave the canvas), so statements about shapes, colours, sizes, counts, existence and
//! decidable relations are always settled by the image. It is **neutral** when it asserts,
//! about an object that exists and is uniquely described, a property the renderer never depicts
//! (material, weight, temperature, motion, drawing order, what it is for), which the image can
//! neither confirm nor refute.
use super::rng::Stream;
use super::scene::{number_word, Attr, Colour, Ref, RefUse, Relation, Scene, Shape, Size};

/// SNLI-VE labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VeLabel {
    /// The hypothesis is true of the image.
    Entailment,
    /// The image neither confirms nor refutes it.
    Neutral,
    /// The hypothesis is false of the image.
    Contradiction,
}

impl VeLabel {
    /// All labels, in the order used to rotate over an image's hypotheses.
    pub const ALL: [VeLabel; 3] = [
        VeLabel::Entailment,
        VeLabel::Neutral,
        VeLabel::Contradiction,
    ];

    /// The label string of the ALBEF files.
    pub fn name(self) -> &'static str {
        match self {
            VeLabel::Entailment => "entailment",
            VeLabel::Neutral => "neutral",
            VeLabel::Contradiction => "contradiction",
        }
    }
}

/// Properties no image shows (neutral hypotheses).
pub const UNOBSERVABLE: [&str; 10] = [
    "is made of wood",
    "is made of metal",
    "is made of glass",
    "is made of paper",
    "is heavy",
    "is warm to the touch",
    "is slowly spinning",
    "was drawn first",
    "was painted by a child",
    "is a toy",
];

/// A hypothesis, structurally; [`Hypothesis::text`] renders it and [`Hypothesis::label`]
/// labels it on a scene.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hypothesis {
    /// "there is {a what}" — entailed iff at least one object matches.
    Exists {
        /// What is claimed to exist.
        what: Ref,
    },
    /// "there is no {what}" — entailed iff no object matches.
    NotExists {
        /// What is claimed to be absent.
        what: Ref,
    },
    /// "there are exactly {n} {what}" ("there is exactly one {what}") — entailed iff the count
    /// is `n`.
    Count {
        /// What is counted.
        what: Ref,
        /// The claimed count.
        n: usize,
    },
    /// "the {subject} is {colour|size}" / "the {subject} is a {shape}" — `subject` must match
    /// exactly one object (else undecidable, never generated); entailed iff it has the value.
    Attribute {
        /// The object.
        subject: Ref,
        /// The claimed value.
        value: Attr,
    },
    /// "the {a} is {rel} the {b}" — both must match exactly one object each, distinct, with a
    /// decidable relation.
    Relate {
        /// First object.
        a: Ref,
        /// The relation.
        rel: Relation,
        /// Second object.
        b: Ref,
    },
    /// "all objects are {value}" ("all objects are circles") — entailed iff every object has it.
    All {
        /// The claimed shared value.
        value: Attr,
    },
    /// "the {subject} {UNOBSERVABLE[property]}" — neutral when `subject` matches exactly one
    /// object.
    Unobservable {
        /// The object.
        subject: Ref,
        /// Index into [`UNOBSERVABLE`].
        property: usize,
    },
}

fn attr_text(value: Attr) -> String {
    match value {
        Attr::Colour(c) => c.name().to_string(),
        Attr::Size(s) => s.name().to_string(),
        Attr::Shape(s) => format!("a {}", s.name()),
    }
}

/// The family ("exists", "not_exists", "count", "attribute", "relation", "all",
/// "unobservable", as [`Hypothesis::family`]) of a hypothesis's text, as [`Hypothesis::text`]
/// writes it or after ALBEF's caption preprocessing (lower case, no punctuation); `None` for
/// other text.
pub fn family_of_text(text: &str) -> Option<&'static str> {
    let t = text.trim();
    if t.starts_with("there is no ") {
        Some("not_exists")
    } else if t.starts_with("there is exactly ") || t.starts_with("there are exactly ") {
        Some("count")
    } else if t.starts_with("there is ") {
        Some("exists")
    } else if t.starts_with("all objects are ") {
        Some("all")
    } else if !t.starts_with("the ") {
        None
    } else if UNOBSERVABLE.iter().any(|p| t.ends_with(&format!(" {p}"))) {
        Some("unobservable")
    } else if Relation::ALL
        .iter()
        .any(|r| t.contains(&format!(" is {} the ", r.long_phrase())))
    {
        Some("relation")
    } else if t.contains(" is ") {
        Some("attribute")
    } else {
        None
    }
}

impl Hypothesis {
    /// The sentence.
    pub fn text(&self) -> String {
        match self {
            Hypothesis::Exists { what } => format!("there is {}", what.indefinite()),
            Hypothesis::NotExists { what } => format!("there is no {}", what.np()),
            Hypothesis::Count { what, n: 1 } => format!("there is exactly one {}", what.np()),
            Hypothesis::Count { what, n } => {
                format!("there are exactly {} {}", number_word(*n), what.plural())
            }
            Hypothesis::Attribute { subject, value } => {
                format!("the {} is {}", subject.np(), attr_text(*value))
            }
            Hypothesis::Relate { a, rel, b } => {
                format!("the {} is {} the {}", a.np(), rel.long_phrase(), b.np())
            }
            Hypothesis::All { value } => match value {
                Attr::Shape(s) => format!("all objects are {}", s.plural()),
                v => format!("all objects are {}", attr_text(*v)),
            },
            Hypothesis::Unobservable { subject, property } => {
                format!("the {} {}", subject.np(), UNOBSERVABLE[*property])
            }
        }
    }

    /// The family name ("exists", "not_exists", "count", "attribute", "relation", "all",
    /// "unobservable").
    pub fn family(&self) -> &'static str {
        match self {
            Hypothesis::Exists { .. } => "exists",
            Hypothesis::NotExists { .. } => "not_exists",
            Hypothesis::Count { .. } => "count",
            Hypothesis::Attribute { .. } => "attribute",
            Hypothesis::Relate { .. } => "relation",
            Hypothesis::All { .. } => "all",
            Hypothesis::Unobservable { .. } => "unobservable",
        }
    }

    /// The label on `scene`; `None` when the hypothesis is ill-posed there.
    pub fn label(&self, scene: &Scene) -> Option<VeLabel> {
        let tf = |b: bool| {
            if b {
                VeLabel::Entailment
            } else {
                VeLabel::Contradiction
            }
        };
        match self {
            Hypothesis::Exists { what } => Some(tf(scene.count(what) > 0)),
            Hypothesis::NotExists { what } => Some(tf(scene.count(what) == 0)),
            Hypothesis::Count { what, n } => Some(tf(scene.count(what) == *n)),
            Hypothesis::Attribute { subject, value } => {
                let i = scene.resolve(subject)?;
                Some(tf(value.holds(&scene.objects[i])))
            }
            Hypothesis::Relate { a, rel, b } => {
                let (i, j) = (scene.resolve(a)?, scene.resolve(b)?);
                if i == j {
                    return None;
                }
                scene.relation(i, j, *rel).map(tf)
            }
            Hypothesis::All { value } => Some(tf(scene.objects.iter().all(|o| value.holds(o)))),
            Hypothesis::Unobservable { subject, property } => (*property < UNOBSERVABLE.len()
                && scene.resolve(subject).is_some())
            .then_some(VeLabel::Neutral),
        }
    }
}

/// Every hypothesis family ([`Hypothesis::family`]): the six decidable ones, then the neutral
/// `unobservable`.
pub const FAMILIES: [&str; 7] = [
    "exists",
    "not_exists",
    "count",
    "attribute",
    "relation",
    "all",
    "unobservable",
];

/// The families of decidable hypotheses (each can be made true or false).
const DECIDABLE: [&str; 6] = [
    FAMILIES[0],
    FAMILIES[1],
    FAMILIES[2],
    FAMILIES[3],
    FAMILIES[4],
    FAMILIES[5],
];

/// Candidate decidable hypotheses of a family (both truth values mixed).
fn candidates(family: &str, scene: &Scene, rng: &mut Stream) -> Vec<Hypothesis> {
    let mut out = Vec::new();
    let mut kinds: Vec<Ref> = Vec::new();
    for o in &scene.objects {
        kinds.push(Ref::colour_shape(o.colour, o.shape));
        kinds.push(Ref {
            size: Some(o.size),
            shape: Some(o.shape),
            ..Ref::ANY
        });
        kinds.push(Ref::shape(o.shape));
        kinds.push(Ref::colour(o.colour));
        // Near misses.
        kinds.push(Ref::colour_shape(*rng.pick(o.colour.confusions()), o.shape));
        kinds.push(Ref::colour_shape(o.colour, *rng.pick(o.shape.confusions())));
    }
    kinds.push(Ref::shape(*rng.pick(&Shape::ALL)));
    kinds.push(Ref::colour(*rng.pick(&Colour::ALL)));
    kinds.sort();
    kinds.dedup();
    match family {
        "exists" => out.extend(kinds.iter().map(|&what| Hypothesis::Exists { what })),
        "not_exists" => out.extend(kinds.iter().map(|&what| Hypothesis::NotExists { what })),
        "count" => {
            let mut whats = vec![Ref::ANY];
            whats.extend(kinds.iter().filter(|r| r.len() == 1));
            for what in whats {
                let t = scene.count(&what);
                for n in [t, t + 1, t.saturating_sub(1)] {
                    if n > 0 {
                        out.push(Hypothesis::Count { what, n });
                    }
                }
            }
        }
        "attribute" => {
            for i in 0..scene.objects.len() {
                let o = scene.objects[i];
                if let Some(subject) = scene.refer(i, RefUse::NoColour) {
                    out.push(Hypothesis::Attribute {
                        subject,
                        value: Attr::Colour(o.colour),
                    });
                    for &c in o.colour.confusions() {
                        out.push(Hypothesis::Attribute {
                            subject,
                            value: Attr::Colour(c),
                        });
                    }
                }
                if let Some(subject) = scene.refer(i, RefUse::NoShape) {
                    out.push(Hypothesis::Attribute {
                        subject,
                        value: Attr::Shape(o.shape),
                    });
                    for &s in o.shape.confusions() {
                        out.push(Hypothesis::Attribute {
                            subject,
                            value: Attr::Shape(s),
                        });
                    }
                }
                let subject = Ref::colour_shape(o.colour, o.shape);
                if scene.resolve(&subject) == Some(i) {
                    for s in Size::ALL {
                        out.push(Hypothesis::Attribute {
                            subject,
                            value: Attr::Size(s),
                        });
                    }
                }
            }
        }
        "relation" => {
            let n = scene.objects.len();
            for i in 0..n {
                for j in 0..n {
                    if i == j {
                        continue;
                    }
                    let (Some(a), Some(b)) =
                        (scene.refer(i, RefUse::Any), scene.refer(j, RefUse::Any))
                    else {
                        continue;
                    };
                    for rel in Relation::ALL {
                        out.push(Hypothesis::Relate { a, rel, b });
                    }
                }
            }
        }
        "all" if scene.objects.len() >= 2 => {
            let o = scene.objects[rng.below(scene.objects.len())];
            for value in [
                Attr::Shape(o.shape),
                Attr::Colour(o.colour),
                Attr::Size(o.size),
            ] {
                out.push(Hypothesis::All { value });
            }
        }
        _ => {}
    }
    out
}

/// A hypothesis about `scene` with the wanted label, `None` when none can be found. Neutral
/// ones attach a random [`UNOBSERVABLE`] property to a uniquely described object; the others
/// pick a random family that has candidates of both truth values on the scene (falling back to
/// one with only the wanted value) and a random candidate of it with the wanted value.
pub fn hypothesis(scene: &Scene, label: VeLabel, rng: &mut Stream) -> Option<Hypothesis> {
    if label == VeLabel::Neutral {
        let i = rng.below(scene.objects.len());
        let subject = scene.refer(i, RefUse::Any)?;
        return Some(Hypothesis::Unobservable {
            subject,
            property: rng.below(UNOBSERVABLE.len()),
        });
    }
    let mut families = DECIDABLE;
    rng.shuffle(&mut families);
    let mut fallback = None;
    for family in families {
        let all = candidates(family, scene, rng);
        let fitting: Vec<Hypothesis> = all
            .iter()
            .copied()
            .filter(|h| h.label(scene) == Some(label))
            .collect();
        if fitting.is_empty() {
            continue;
        }
        let h = *rng.pick(&fitting);
        // Prefer families that can be made true *and* false on this scene, so that no family's
        // wording predicts its label.
        let other = if label == VeLabel::Entailment {
            VeLabel::Contradiction
        } else {
            VeLabel::Entailment
        };
        if all.iter().any(|g| g.label(scene) == Some(other)) {
            return Some(h);
        }
        fallback.get_or_insert(h);
    }
    fallback
}

/// `count` hypotheses for a scene with labels rotating entailment → neutral → contradiction
/// from a start given by `offset` (so that a split is balanced when `count` is a multiple of 3
/// or over many images), each with its label.
pub fn hypotheses(
    scene: &Scene,
    count: usize,
    offset: usize,
    rng: &mut Stream,
) -> Vec<(Hypothesis, VeLabel)> {
    let mut out: Vec<(Hypothesis, VeLabel)> = Vec::with_capacity(count);
    for k in 0..count {
        let label = VeLabel::ALL[(offset + k) % 3];
        for _ in 0..4 {
            if let Some(h) = hypothesis(scene, label, rng) {
                if !out.iter().any(|(g, _)| g == &h) {
                    out.push((h, label));
                    break;
                }
            }
        }
    }
    out
}
