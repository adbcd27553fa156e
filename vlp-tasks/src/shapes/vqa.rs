//! VQA: questions with a single well-defined answer, and ten simulated annotator answers with
//! plausible disagreement.
use super::rng::Stream;
use super::scene::{Colour, Ref, RefUse, Relation, Scene, Shape, Size};

/// A question, structurally; [`Question::text`] renders it and [`Question::answer`] computes its
/// answer on a scene.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Question {
    /// "what color is the {target}?" — `target` uses shape and size only and must match exactly
    /// one object; the answer is its colour.
    Colour {
        /// The object asked about.
        target: Ref,
    },
    /// "what shape is the {target}?" — `target` uses colour and size only ("red object") and
    /// must match exactly one object; the answer is its shape.
    Shape {
        /// The object asked about.
        target: Ref,
    },
    /// "how many {what} are there?" — the answer is the number of matching objects ("0"–"4").
    Count {
        /// What to count.
        what: Ref,
    },
    /// "is there a {what}?" — "yes" when at least one object matches, else "no".
    Exist {
        /// What to look for.
        what: Ref,
    },
    /// "what is {rel} the {anchor}?" — `anchor` must match exactly one object, and every other
    /// object must be decidably in or out of the relation (see [`Scene::relation`]) with exactly
    /// one in; the answer is that object's "{colour} {shape}".
    Relate {
        /// The relation ("what is left of …": the answer is left of the anchor).
        rel: Relation,
        /// The reference object.
        anchor: Ref,
    },
}

/// The five question families, in the order used to rotate over an image's questions.
pub const FAMILIES: [&str; 5] = ["colour", "shape", "count", "exist", "relation"];

/// The family (one of [`FAMILIES`]) of a question's text, as [`Question::text`] writes it or
/// after ALBEF's caption preprocessing (lower case, no "?"); `None` for other text.
pub fn family_of_text(text: &str) -> Option<&'static str> {
    let t = text.trim_start();
    [
        ("what color is the ", "colour"),
        ("what shape is the ", "shape"),
        ("how many ", "count"),
        ("is there ", "exist"),
        ("what is ", "relation"),
    ]
    .into_iter()
    .find(|(prefix, _)| t.starts_with(prefix))
    .map(|(_, f)| f)
}

impl Question {
    /// The question text (lower case, ends with "?").
    pub fn text(&self) -> String {
        match self {
            Question::Colour { target } => format!("what color is the {}?", target.np()),
            Question::Shape { target } => format!("what shape is the {}?", target.np()),
            Question::Count { what } => format!("how many {} are there?", what.plural()),
            Question::Exist { what } => format!("is there {}?", what.indefinite()),
            Question::Relate { rel, anchor } => {
                format!("what is {} the {}?", rel.long_phrase(), anchor.np())
            }
        }
    }

    /// The family name (one of [`FAMILIES`]).
    pub fn family(&self) -> &'static str {
        match self {
            Question::Colour { .. } => "colour",
            Question::Shape { .. } => "shape",
            Question::Count { .. } => "count",
            Question::Exist { .. } => "exist",
            Question::Relate { .. } => "relation",
        }
    }

    /// VQA v2 `question_type` (the question's first words).
    pub fn question_type(&self) -> &'static str {
        match self {
            Question::Colour { .. } => "what color is the",
            Question::Shape { .. } => "what shape is the",
            Question::Count { .. } => "how many",
            Question::Exist { .. } => "is there a",
            Question::Relate { .. } => "what is",
        }
    }

    /// VQA v2 `answer_type`: "yes/no", "number" or "other".
    pub fn answer_type(&self) -> &'static str {
        match self {
            Question::Exist { .. } => "yes/no",
            Question::Count { .. } => "number",
            _ => "other",
        }
    }

    /// The answer on `scene`, or `None` when the question is ill-posed there (a definite
    /// reference that does not match exactly one object, an undecidable relation, or a relation
    /// question with no or several answers).
    pub fn answer(&self, scene: &Scene) -> Option<String> {
        match self {
            Question::Colour { target } => {
                if target.colour.is_some() {
                    return None;
                }
                scene
                    .resolve(target)
                    .map(|i| scene.objects[i].colour.name().to_string())
            }
            Question::Shape { target } => {
                if target.shape.is_some() {
                    return None;
                }
                scene
                    .resolve(target)
                    .map(|i| scene.objects[i].shape.name().to_string())
            }
            Question::Count { what } => Some(scene.count(what).to_string()),
            Question::Exist { what } => {
                Some(if scene.count(what) > 0 { "yes" } else { "no" }.to_string())
            }
            Question::Relate { rel, anchor } => {
                let a = scene.resolve(anchor)?;
                let mut found = None;
                for i in (0..scene.objects.len()).filter(|&i| i != a) {
                    match scene.relation(i, a, *rel) {
                        None => return None,
                        Some(true) if found.is_some() => return None,
                        Some(true) => found = Some(i),
                        Some(false) => {}
                    }
                }
                found.map(|i| {
                    let o = &scene.objects[i];
                    format!("{} {}", o.colour.name(), o.shape.name())
                })
            }
        }
    }
}

/// Every answer the generator can produce (correct or confused), in a fixed order: the
/// ALBEF/BLIP `answer_list.json`.
pub fn answer_list() -> Vec<String> {
    let mut out: Vec<String> = vec!["yes".into(), "no".into()];
    out.extend((0..=9).map(|n| n.to_string()));
    out.extend(Colour::ALL.iter().map(|c| c.name().to_string()));
    out.extend(Shape::ALL.iter().map(|s| s.name().to_string()));
    for c in Colour::ALL {
        for s in Shape::ALL {
            out.push(format!("{} {}", c.name(), s.name()));
        }
    }
    out
}

/// Proposes one question of a family for `scene`; `None` when the family has no well-posed
/// question there. Existence questions are "yes" with probability ½; count questions ask about
/// an absent kind with probability ¼.
pub fn propose(scene: &Scene, family: &str, rng: &mut Stream) -> Option<Question> {
    let n = scene.objects.len();
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    match family {
        "colour" => order
            .iter()
            .find_map(|&i| scene.refer(i, RefUse::NoColour))
            .map(|target| Question::Colour { target }),
        "shape" => order
            .iter()
            .find_map(|&i| scene.refer(i, RefUse::NoShape))
            .map(|target| Question::Shape { target }),
        "count" => {
            let o = scene.objects[order[0]];
            let what = if rng.chance(0.25) {
                // Something absent: a shape, a colour, or a colour–shape pair, none of which is
                // in the scene.
                let absent: Vec<Ref> = Shape::ALL
                    .iter()
                    .map(|&s| Ref::shape(s))
                    .chain(Colour::ALL.iter().map(|&c| Ref::colour(c)))
                    .filter(|r| scene.count(r) == 0)
                    .collect();
                *rng.pick(&absent)
            } else {
                match rng.below(8) {
                    0..=3 => Ref::shape(o.shape),
                    4 | 5 => Ref::colour(o.colour),
                    6 => Ref {
                        size: Some(o.size),
                        ..Ref::ANY
                    },
                    _ => Ref::ANY,
                }
            };
            Some(Question::Count { what })
        }
        "exist" => {
            let o = scene.objects[order[0]];
            let base = match rng.below(4) {
                0 => Ref::full(&o),
                1 => Ref {
                    size: Some(o.size),
                    shape: Some(o.shape),
                    ..Ref::ANY
                },
                _ => Ref::colour_shape(o.colour, o.shape),
            };
            if rng.chance(0.5) {
                return Some(Question::Exist { what: base });
            }
            // A near miss: change one attribute until nothing matches.
            for _ in 0..20 {
                let mut r = base;
                match rng.below(3) {
                    0 => r.colour = Some(*rng.pick(&Colour::ALL)),
                    1 => r.shape = Some(*rng.pick(&Shape::ALL)),
                    _ => r.size = Some(r.size.map_or(Size::Small, Size::other)),
                }
                if scene.count(&r) == 0 {
                    return Some(Question::Exist { what: r });
                }
            }
            None
        }
        "relation" => {
            let mut rels = Relation::ALL;
            rng.shuffle(&mut rels);
            for &i in &order {
                let Some(anchor) = scene.refer(i, RefUse::Any) else {
                    continue;
                };
                let anchor = if anchor.colour.is_none() && rng.chance(0.5) {
                    Ref {
                        colour: Some(scene.objects[i].colour),
                        ..anchor
                    }
                } else {
                    anchor
                };
                for rel in rels {
                    let q = Question::Relate { rel, anchor };
                    if q.answer(scene).is_some() {
                        return Some(q);
                    }
                }
            }
            None
        }
        _ => None,
    }
}

/// Up to `count` distinct well-posed questions for a scene. Families rotate from a random start;
/// a family with no well-posed question is replaced by the next one.
pub fn questions(scene: &Scene, count: usize, rng: &mut Stream) -> Vec<(Question, String)> {
    let start = rng.below(FAMILIES.len());
    let mut out: Vec<(Question, String)> = Vec::with_capacity(count);
    let mut k = 0;
    let mut tries = 0;
    while out.len() < count && tries < count * 8 + 10 {
        let family = FAMILIES[(start + k) % FAMILIES.len()];
        k += 1;
        tries += 1;
        if let Some(q) = propose(scene, family, rng) {
            if let Some(a) = q.answer(scene) {
                if !out.iter().any(|(p, _)| p.text() == q.text()) {
                    out.push((q, a));
                }
            }
        }
    }
    out
}

/// What a confused annotator may answer instead of `answer` to `q` on `scene`.
pub fn confusions(q: &Question, answer: &str) -> Vec<String> {
    match q {
        Question::Exist { .. } => vec![if answer == "yes" { "no" } else { "yes" }.to_string()],
        Question::Count { .. } => {
            let n: usize = answer.parse().unwrap_or(0);
            let mut v = vec![(n + 1).to_string()];
            if n > 0 {
                v.push((n - 1).to_string());
            }
            v
        }
        Question::Colour { .. } => Colour::ALL
            .iter()
            .find(|c| c.name() == answer)
            .map(|c| {
                c.confusions()
                    .iter()
                    .map(|x| x.name().to_string())
                    .collect()
            })
            .unwrap_or_default(),
        Question::Shape { .. } => Shape::ALL
            .iter()
            .find(|s| s.name() == answer)
            .map(|s| {
                s.confusions()
                    .iter()
                    .map(|x| x.name().to_string())
                    .collect()
            })
            .unwrap_or_default(),
        Question::Relate { .. } => {
            let (c, s) = answer.split_once(' ').unwrap_or(("", answer));
            let colour = Colour::ALL.iter().find(|x| x.name() == c);
            let shape = Shape::ALL.iter().find(|x| x.name() == s);
            match (colour, shape) {
                (Some(c), Some(s)) => c
                    .confusions()
                    .iter()
                    .map(|x| format!("{} {}", x.name(), s.name()))
                    .chain(
                        s.confusions()
                            .iter()
                            .map(|x| format!("{} {}", c.name(), x.name())),
                    )
                    .collect(),
                _ => Vec::new(),
            }
        }
    }
}

/// One simulated annotator answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HumanAnswer {
    /// The answer.
    pub answer: String,
    /// "yes", "maybe" or "no".
    pub confidence: &'static str,
}

/// Ten annotator answers: the number of wrong ones is Binomial(10, `noise`) capped at 4 (so the
/// correct answer always has a clear majority); each wrong one is a random confusion of the
/// correct answer. Correct answers are given with confidence "yes" (90 %) or "maybe"; wrong ones
/// with "maybe" (70 %) or "no".
pub fn annotate(q: &Question, answer: &str, noise: f64, rng: &mut Stream) -> Vec<HumanAnswer> {
    let conf = confusions(q, answer);
    let wrong = if conf.is_empty() {
        0
    } else {
        (0..10).filter(|_| rng.chance(noise)).count().min(4)
    };
    let mut slots: Vec<bool> = (0..10).map(|k| k < wrong).collect();
    rng.shuffle(&mut slots);
    slots
        .into_iter()
        .map(|is_wrong| {
            if is_wrong {
                let a = rng.pick(&conf).clone();
                HumanAnswer {
                    answer: a,
                    confidence: if rng.chance(0.7) { "maybe" } else { "no" },
                }
            } else {
                HumanAnswer {
                    answer: answer.to_string(),
                    confidence: if rng.chance(0.9) { "yes" } else { "maybe" },
                }
            }
        })
        .collect()
}
