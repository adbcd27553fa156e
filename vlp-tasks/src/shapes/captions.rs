//! Captions: several distinct descriptions per image, the first of which always names every
//! object with its size, colour and shape.
use super::rng::Stream;
use super::scene::{number_word, Ref, Relation, Scene, Shape};

/// The most captions per image the templates can always provide.
pub const MAX_CAPTIONS: usize = 7;

/// Joins phrases as English does: "a", "a and b", "a, b and c".
pub fn join(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [a] => a.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// Prepositional phrase of a grid cell: "in the top left", "at the top", "on the left", …
pub fn at_region(region: &str) -> String {
    match region {
        "top" | "bottom" => format!("at the {region}"),
        "left" | "right" => format!("on the {region}"),
        _ => format!("in the {region}"),
    }
}

fn full_np(scene: &Scene, i: usize) -> String {
    Ref::full(&scene.objects[i]).indefinite()
}

fn cs_np(scene: &Scene, i: usize) -> String {
    let o = &scene.objects[i];
    Ref::colour_shape(o.colour, o.shape).indefinite()
}

fn syn_np(scene: &Scene, i: usize) -> String {
    let o = &scene.objects[i];
    format!(
        "a {} {} {}",
        o.size.synonym(),
        o.colour.name(),
        o.shape.name()
    )
}

/// Templates that name every object with all three attributes (candidates for caption 0).
fn full_templates(scene: &Scene, rng: &mut Stream) -> Vec<String> {
    let n = scene.objects.len();
    if n == 1 {
        let pos = at_region(scene.region(0));
        return vec![format!("{} {pos}", full_np(scene, 0))];
    }
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    let pos: Vec<String> = order
        .iter()
        .map(|&i| format!("{} {}", full_np(scene, i), at_region(scene.region(i))))
        .collect();
    rng.shuffle(&mut order);
    let listed: Vec<String> = order.iter().map(|&i| full_np(scene, i)).collect();
    let mut out = vec![
        join(&pos),
        format!("{} shapes: {}", number_word(n), join(&listed)),
    ];
    if let Some(lr) = clear_order(scene, true) {
        let lr: Vec<String> = lr.into_iter().map(|i| full_np(scene, i)).collect();
        out.push(format!("from left to right: {}", join(&lr)));
    }
    out
}

/// The objects in left-to-right (`horizontal`) or top-to-bottom order, when every two
/// neighbours in that order are at least the relation margin apart (so the order is plain to
/// see); `None` otherwise.
pub fn clear_order(scene: &Scene, horizontal: bool) -> Option<Vec<usize>> {
    let order = if horizontal {
        scene.left_to_right()
    } else {
        scene.top_to_bottom()
    };
    let key = |i: usize| {
        let o = &scene.objects[i];
        if horizontal {
            o.x
        } else {
            o.y
        }
    };
    let clear = order
        .windows(2)
        .all(|w| key(w[1]) - key(w[0]) >= scene.relation_margin());
    clear.then_some(order)
}

/// Further templates (partial or re-worded descriptions).
fn other_templates(scene: &Scene, rng: &mut Stream) -> Vec<String> {
    let n = scene.objects.len();
    if n == 1 {
        let o = &scene.objects[0];
        let pos = at_region(scene.region(0));
        let (size, syn, colour, shape) = (
            o.size.name(),
            o.size.synonym(),
            o.colour.name(),
            o.shape.name(),
        );
        return vec![
            format!("{pos}, {}", syn_np(scene, 0)),
            format!("a single {size} {colour} {shape} {pos}"),
            format!("one {colour} {shape}, {size}, {pos}"),
            format!("the only shape is {} {pos}", full_np(scene, 0)),
            format!("there is one {syn} {colour} {shape} {pos}"),
            format!("just {} of {size} size {pos}", cs_np(scene, 0)),
        ];
    }
    let mut out = Vec::new();
    // Top to bottom, colour and shape only (when the order is clear).
    if let Some(tb) = clear_order(scene, false) {
        let tb: Vec<String> = tb.into_iter().map(|i| cs_np(scene, i)).collect();
        out.push(format!("from top to bottom: {}", join(&tb)));
    }
    // Left to right with size synonyms (when the order is clear).
    if let Some(lr) = clear_order(scene, true) {
        let lr: Vec<String> = lr.into_iter().map(|i| syn_np(scene, i)).collect();
        out.push(format!("{} from left to right", join(&lr)));
    }
    // Always available: colour and shape in random order; size synonyms in random order.
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    let cs: Vec<String> = order.iter().map(|&i| cs_np(scene, i)).collect();
    out.push(format!("an image of {}", join(&cs)));
    rng.shuffle(&mut order);
    let syn: Vec<String> = order.iter().map(|&i| syn_np(scene, i)).collect();
    out.push(format!("{} objects: {}", number_word(n), join(&syn)));
    // Grouped by shape, in left-to-right order of first appearance.
    let mut shapes: Vec<Shape> = Vec::new();
    for i in scene.left_to_right() {
        if !shapes.contains(&scene.objects[i].shape) {
            shapes.push(scene.objects[i].shape);
        }
    }
    let groups: Vec<String> = shapes
        .iter()
        .map(|&s| {
            let members = scene.matching(&Ref::shape(s));
            if members.len() == 1 {
                full_np(scene, members[0])
            } else {
                let ones: Vec<String> = members
                    .iter()
                    .map(|&i| {
                        let o = &scene.objects[i];
                        format!("a {} {} one", o.size.name(), o.colour.name())
                    })
                    .collect();
                format!(
                    "{} {} ({})",
                    number_word(members.len()),
                    s.plural(),
                    join(&ones)
                )
            }
        })
        .collect();
    out.push(join(&groups));
    // A spatial relation between two objects, then the others.
    let pairs = true_relations(scene);
    if !pairs.is_empty() {
        let (a, b, rel) = *rng.pick(&pairs);
        let rest: Vec<String> = (0..n)
            .filter(|&i| i != a && i != b)
            .map(|i| cs_np(scene, i))
            .collect();
        let head = format!(
            "{} {} {}",
            cs_np(scene, a),
            rel.long_phrase(),
            cs_np(scene, b)
        );
        out.push(if rest.is_empty() {
            format!("there is {head}")
        } else {
            format!("{head}, and also {}", join(&rest))
        });
    }
    // Sizes grouped: large ones first.
    let mut large: Vec<String> = Vec::new();
    let mut small: Vec<String> = Vec::new();
    for i in scene.left_to_right() {
        let o = &scene.objects[i];
        let np = Ref::colour_shape(o.colour, o.shape).np();
        match o.size {
            super::scene::Size::Large => large.push(np),
            super::scene::Size::Small => small.push(np),
        }
    }
    let part = |v: &[String], word: &str| match v.len() {
        0 => None,
        1 => Some(format!("a {word} {}", v[0])),
        k => Some(format!("{} {word} shapes ({})", number_word(k), join(v))),
    };
    let parts: Vec<String> = [part(&large, "large"), part(&small, "small")]
        .into_iter()
        .flatten()
        .collect();
    out.push(join(&parts));
    out
}

/// `count` distinct captions of a scene (`count ≤` [`MAX_CAPTIONS`]): the first describes every
/// object (size, colour, shape; by position), the others are drawn without replacement from the
/// remaining templates in random order.
pub fn captions(scene: &Scene, count: usize, rng: &mut Stream) -> Vec<String> {
    let full = full_templates(scene, rng);
    let first = rng.below(full.len());
    let mut pool: Vec<String> = full
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != first)
        .map(|(_, c)| c.clone())
        .collect();
    pool.extend(other_templates(scene, rng));
    rng.shuffle(&mut pool);
    let mut out = vec![full[first].clone()];
    for c in pool {
        if out.len() >= count {
            break;
        }
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out.truncate(count);
    out
}

/// Every `(a, b, relation)` of distinct objects that decidably holds, in object order.
fn true_relations(scene: &Scene) -> Vec<(usize, usize, Relation)> {
    let n = scene.objects.len();
    let mut pairs = Vec::new();
    for a in 0..n {
        for b in 0..n {
            for rel in Relation::ALL {
                if a != b && scene.relation(a, b, rel) == Some(true) {
                    pairs.push((a, b, rel));
                }
            }
        }
    }
    pairs
}

/// Most region descriptions per image.
pub const MAX_REGION_TEXTS: usize = 8;

/// Short descriptions of parts of a scene, as Visual Genome's region descriptions that ALBEF
/// pre-trains on (`vg.json`): one phrase per object (its full or colour-and-shape noun phrase,
/// possibly with its position, or only its colour or shape), up to two true relations and a
/// count; at most [`MAX_REGION_TEXTS`], distinct, in random order. Unlike [`captions`], none has
/// to describe the whole scene: downstream texts (hypotheses, statements, questions) are partial
/// too, and a model pre-trained only on full descriptions rejects every partial text.
pub fn region_descriptions(scene: &Scene, rng: &mut Stream) -> Vec<String> {
    let n = scene.objects.len();
    let mut out: Vec<String> = Vec::new();
    for i in 0..n {
        let o = &scene.objects[i];
        let options = [
            full_np(scene, i),
            format!("{} {}", cs_np(scene, i), at_region(scene.region(i))),
            format!("there is {}", cs_np(scene, i)),
            cs_np(scene, i),
            format!("a {} shape", o.colour.name()),
            Ref::shape(o.shape).indefinite(),
            format!("{} {}", full_np(scene, i), at_region(scene.region(i))),
        ];
        out.push(rng.pick(&options).clone());
    }
    let mut pairs = true_relations(scene);
    rng.shuffle(&mut pairs);
    for &(a, b, rel) in pairs.iter().take(2) {
        out.push(format!(
            "{} {} {}",
            cs_np(scene, a),
            rel.long_phrase(),
            cs_np(scene, b)
        ));
    }
    let shape = scene.objects[rng.below(n)].shape;
    let k = scene.count(&Ref::shape(shape));
    out.push(if rng.chance(0.5) {
        format!("{} shapes", number_word(n))
    } else if k == 1 {
        format!("one {}", shape.name())
    } else {
        format!("{} {}", number_word(k), shape.plural())
    });
    let mut uniq: Vec<String> = Vec::new();
    for t in out {
        if !uniq.contains(&t) {
            uniq.push(t);
        }
    }
    rng.shuffle(&mut uniq);
    uniq.truncate(MAX_REGION_TEXTS);
    uniq
}
