//! Shapes benchmark: determinism, formats, hand-checked labels, balance, caption uniqueness.
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use vlp_tasks::shapes::nlvr2::{Side, Statement};
use vlp_tasks::shapes::scene::{Attr, Colour, Object, Ref, Relation, Scene, Shape, Size};
use vlp_tasks::shapes::ve::{Hypothesis, VeLabel};
use vlp_tasks::shapes::vqa::Question;
use vlp_tasks::shapes::{self, ShapesConfig, Split};

// ---------------------------------------------------------------- format mirrors (official)

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Pretrain {
    image: String,
    caption: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KarpathyTrain {
    image: String,
    caption: String,
    image_id: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KarpathyEval {
    image: String,
    caption: Vec<String>,
    image_id: u64,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Info {
    description: String,
    url: String,
    version: String,
    year: u32,
    contributor: String,
    date_created: String,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct License {
    url: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct VqaQuestions {
    info: Info,
    task_type: String,
    data_type: String,
    license: License,
    data_subtype: String,
    questions: Vec<VqaQuestion>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VqaQuestion {
    image_id: u64,
    question: String,
    question_id: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct VqaAnnotations {
    info: Info,
    license: License,
    data_subtype: String,
    annotations: Vec<VqaAnnotation>,
    data_type: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VqaAnnotation {
    question_type: String,
    multiple_choice_answer: String,
    answers: Vec<VqaAnswer>,
    image_id: u64,
    answer_type: String,
    question_id: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VqaAnswer {
    answer: String,
    answer_confidence: String,
    answer_id: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlbefVqa {
    question_id: u64,
    question: String,
    answer: Option<Vec<String>>,
    image: String,
    dataset: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Nlvr2 {
    images: Vec<String>,
    sentence: String,
    label: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Ve {
    image: String,
    sentence: String,
    label: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct CocoCaptions {
    info: Info,
    licenses: Vec<License>,
    #[serde(rename = "type")]
    kind: String,
    images: Vec<CocoImage>,
    annotations: Vec<CocoCaption>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct CocoImage {
    id: u64,
    file_name: String,
    width: u32,
    height: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CocoCaption {
    image_id: u64,
    id: u64,
    caption: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SceneEntry {
    image_id: u64,
    image: String,
    regions: Option<String>,
    scene: Scene,
}

// ---------------------------------------------------------------- helpers

fn small_config(seed: u64) -> ShapesConfig {
    ShapesConfig {
        seed,
        train_images: 40,
        val_images: 20,
        test_images: 30,
        region_dim: 32,
        ..ShapesConfig::default()
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("shapes-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn read<T: serde::de::DeserializeOwned>(dir: &Path, name: &str) -> T {
    let text = std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn obj(shape: Shape, colour: Colour, size: Size, x: f32, y: f32) -> Object {
    Object::new(shape, colour, size, x, y)
}

// ---------------------------------------------------------------- determinism

#[test]
fn same_seed_same_bytes_different_seed_different_bytes() {
    let (a, b, c) = (tmp("det-a"), tmp("det-b"), tmp("det-c"));
    let sa = shapes::generate(&small_config(7), &a).unwrap();
    shapes::generate(&small_config(7), &b).unwrap();
    shapes::generate(&small_config(8), &c).unwrap();
    let (fa, fb, fc) = (files(&a), files(&b), files(&c));
    assert_eq!(fa.len() as u64, sa.files, "every file is counted");
    assert_eq!(fa.values().map(|v| v.len() as u64).sum::<u64>(), sa.bytes);
    assert_eq!(fa.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>());
    for (name, bytes) in &fa {
        assert!(
            &fb[name] == bytes,
            "{name} differs between two runs with the same seed"
        );
    }
    // Another seed: same file names, different contents (every JSON file, most images).
    assert_eq!(fa.keys().collect::<Vec<_>>(), fc.keys().collect::<Vec<_>>());
    for (name, bytes) in &fa {
        if name.ends_with(".json") && name != "answer_list.json" {
            assert!(&fc[name] != bytes, "{name} is the same under another seed");
        }
    }
    let images: Vec<&String> = fa.keys().filter(|n| n.starts_with("images/")).collect();
    let same = images.iter().filter(|n| fa[**n] == fc[**n]).count();
    assert!(
        same * 10 < images.len(),
        "{same} of {} images equal under another seed",
        images.len()
    );
}

#[test]
fn more_train_images_leave_val_and_test_unchanged() {
    let (a, b) = (tmp("scale-a"), tmp("scale-b"));
    shapes::generate(&small_config(3), &a).unwrap();
    shapes::generate(
        &ShapesConfig {
            train_images: 55,
            ..small_config(3)
        },
        &b,
    )
    .unwrap();
    let (fa, fb) = (files(&a), files(&b));
    for (name, bytes) in &fa {
        let tokens: Vec<&str> = name.split(['_', '/', '.']).collect();
        if tokens.contains(&"val") || tokens.contains(&"test") {
            assert!(&fb[name] == bytes, "{name} changed with the train size");
        }
    }
    assert!(fb.len() > fa.len());
}

// ---------------------------------------------------------------- formats

#[test]
fn every_file_parses_as_its_official_format() {
    let dir = tmp("formats");
    let cfg = small_config(11);
    let summary = shapes::generate(&cfg, &dir).unwrap();
    let answer_list: Vec<String> = read(&dir, "answer_list.json");
    let answer_set: BTreeSet<&str> = answer_list.iter().map(String::as_str).collect();
    assert_eq!(
        answer_set.len(),
        answer_list.len(),
        "answer list has duplicates"
    );

    let pre: Vec<Pretrain> = read(&dir, "pretrain.json");
    assert_eq!(pre.len(), cfg.train_images);
    assert!(pre
        .iter()
        .all(|p| p.caption.len() == 5 && dir.join(&p.image).is_file()));

    for split in Split::ALL {
        let s = split.name();
        let n = match split {
            Split::Train => cfg.train_images,
            Split::Val => cfg.val_images,
            Split::Test => cfg.test_images,
        };
        let scenes: Vec<SceneEntry> = read(&dir, &format!("scenes_{s}.json"));
        assert_eq!(scenes.len(), n);
        let ids: BTreeSet<u64> = scenes.iter().map(|e| e.image_id).collect();
        assert_eq!(ids.len(), n);
        for e in &scenes {
            e.scene.check().unwrap();
            assert_eq!(e.image, format!("images/{s}_{}.png", e.image_id));
            let img = image::open(dir.join(&e.image)).unwrap().to_rgb8();
            assert_eq!(img.dimensions(), (64, 64));
            check_regions(
                &dir.join(e.regions.as_ref().unwrap()),
                &e.scene,
                cfg.region_dim,
            );
        }
        let by_image: BTreeMap<&str, &Scene> = scenes
            .iter()
            .map(|e| (e.image.as_str(), &e.scene))
            .collect();

        // Retrieval.
        if split == Split::Train {
            let r: Vec<KarpathyTrain> = read(&dir, "retrieval_train.json");
            assert_eq!(r.len(), n * 5);
            for e in &r {
                assert!(ids.contains(&e.image_id) && by_image.contains_key(e.image.as_str()));
                assert!(!e.caption.is_empty());
            }
        } else {
            let r: Vec<KarpathyEval> = read(&dir, &format!("retrieval_{s}.json"));
            assert_eq!(r.len(), n);
            for e in &r {
                assert_eq!(e.caption.len(), 5);
                assert!(ids.contains(&e.image_id) && by_image.contains_key(e.image.as_str()));
            }
            let gt: CocoCaptions = read(&dir, &format!("caption_{s}_gt.json"));
            assert_eq!(gt.images.len(), n);
            assert_eq!(gt.annotations.len(), n * 5);
            let cap_ids: BTreeSet<u64> = gt.annotations.iter().map(|a| a.id).collect();
            assert_eq!(cap_ids.len(), n * 5);
            assert!(gt
                .annotations
                .iter()
                .all(|a| ids.contains(&a.image_id) && !a.caption.is_empty()));
        }

        // VQA: official pair and the ALBEF list agree.
        let q: VqaQuestions = read(&dir, &format!("vqa_{s}_questions.json"));
        let a: VqaAnnotations = read(&dir, &format!("vqa_{s}_annotations.json"));
        let albef: Vec<AlbefVqa> = read(&dir, &format!("vqa_{s}.json"));
        assert_eq!(q.task_type, "Open-Ended");
        assert_eq!(q.data_subtype, s);
        assert_eq!(q.questions.len(), a.annotations.len());
        assert_eq!(q.questions.len(), albef.len());
        assert_eq!(q.questions.len(), n * 5, "5 questions for every image");
        let qids: BTreeSet<u64> = q.questions.iter().map(|x| x.question_id).collect();
        assert_eq!(qids.len(), q.questions.len());
        for ((qq, aa), al) in q.questions.iter().zip(&a.annotations).zip(&albef) {
            assert_eq!(qq.question_id, aa.question_id);
            assert_eq!(qq.question_id, al.question_id);
            assert_eq!(qq.image_id, aa.image_id);
            assert_eq!(qq.question, al.question);
            assert!(qq.question.ends_with('?') && ids.contains(&qq.image_id));
            assert_eq!(qq.question_id / 10, qq.image_id);
            assert_eq!(aa.answers.len(), 10);
            let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
            for (k, h) in aa.answers.iter().enumerate() {
                assert_eq!(h.answer_id as usize, k + 1);
                assert!(["yes", "maybe", "no"].contains(&h.answer_confidence.as_str()));
                assert!(
                    answer_set.contains(h.answer.as_str()),
                    "{} not in answer_list",
                    h.answer
                );
                *votes.entry(&h.answer).or_default() += 1;
            }
            assert!(
                votes[aa.multiple_choice_answer.as_str()] >= 6,
                "majority answer"
            );
            assert!(["yes/no", "number", "other"].contains(&aa.answer_type.as_str()));
            assert!(qq.question.starts_with(&aa.question_type));
            assert_eq!(al.dataset, "vqa");
            assert!(by_image.contains_key(al.image.as_str()));
            match (&al.answer, split) {
                (None, Split::Test) => {}
                (Some(v), Split::Train | Split::Val) => {
                    let mine: Vec<&str> = aa.answers.iter().map(|h| h.answer.as_str()).collect();
                    assert_eq!(v.iter().map(String::as_str).collect::<Vec<_>>(), mine);
                }
                _ => panic!("vqa_{s}.json: answers present in test or missing in train/val"),
            }
        }

        // NLVR2.
        let nl: Vec<Nlvr2> = read(&dir, &format!("nlvr2_{s}.json"));
        assert_eq!(nl.len(), n);
        for e in &nl {
            assert_eq!(e.images.len(), 2);
            assert_ne!(e.images[0], e.images[1]);
            assert!(e.images.iter().all(|p| by_image.contains_key(p.as_str())));
            assert!(e.label == "True" || e.label == "False");
            assert!(!e.sentence.is_empty());
        }
        let trues = nl.iter().filter(|e| e.label == "True").count();
        assert_eq!(trues, n.div_ceil(2));

        // SNLI-VE.
        let ve: Vec<Ve> = read(&dir, &format!("ve_{s}.json"));
        assert_eq!(ve.len(), 3 * n);
        let mut labels: BTreeMap<&str, usize> = BTreeMap::new();
        for e in &ve {
            assert!(by_image.contains_key(e.image.as_str()) && !e.sentence.is_empty());
            *labels.entry(&e.label).or_default() += 1;
        }
        assert_eq!(labels.len(), 3);
        assert!(labels.values().all(|&c| c == n), "{labels:?}");
    }

    let manifest: serde_json::Value = read(&dir, "shapes.json");
    assert_eq!(manifest["version"], shapes::SHAPES_VERSION);
    let back: ShapesConfig = serde_json::from_value(manifest["config"].clone()).unwrap();
    assert_eq!(back, cfg);
    assert_eq!(manifest["counts"]["test"]["images"], 30);
    assert_eq!(summary.test.images, 30);
    assert_eq!(summary.train.captions, 200);
}

fn check_regions(path: &Path, scene: &Scene, dim: usize) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let get = |name: &str| {
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::F32);
        let v: Vec<f32> = t
            .data()
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (t.shape().to_vec(), v)
    };
    let (fs, f) = get("features");
    let (bs, bb) = get("norm_bb");
    let (cs, conf) = get("conf");
    let (ls, soft) = get("soft_labels");
    let n = cs[0];
    assert!(n > scene.objects.len() && n <= scene.objects.len() + 3);
    assert_eq!(fs, vec![n, dim]);
    assert_eq!(bs, vec![n, 7]);
    assert_eq!(ls, vec![n, 7]);
    assert!(f.iter().all(|v| v.is_finite() && *v >= 0.0));
    assert!(
        conf.windows(2).all(|w| w[0] >= w[1]),
        "boxes sorted by confidence"
    );
    assert_eq!(
        conf.iter().filter(|&&c| c >= 0.7).count(),
        scene.objects.len()
    );
    for b in bb.chunks(7) {
        assert!(b.iter().all(|v| (0.0..=1.0).contains(v)), "{b:?}");
        assert!(b[2] > b[0] && b[3] > b[1]);
        assert!((b[4] - (b[2] - b[0])).abs() < 1e-6 && (b[5] - (b[3] - b[1])).abs() < 1e-6);
        assert!((b[6] - b[4] * b[5]).abs() < 1e-6);
    }
    for row in soft.chunks(7) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        assert!(row.iter().all(|v| *v >= 0.0));
    }
}

#[test]
fn config_defaults_and_unknown_fields() {
    let cfg: ShapesConfig = serde_json::from_str(r#"{"seed": 5}"#).unwrap();
    assert_eq!(
        cfg,
        ShapesConfig {
            seed: 5,
            ..ShapesConfig::default()
        }
    );
    let d = ShapesConfig::default();
    assert_eq!(
        (d.image_size, d.test_images, d.captions_per_image),
        (64, 1000, 5)
    );
    assert!(serde_json::from_str::<ShapesConfig>(r#"{"sed": 5}"#).is_err());
    for bad in [
        ShapesConfig {
            max_objects: 6,
            ..d.clone()
        },
        ShapesConfig {
            min_objects: 0,
            ..d.clone()
        },
        ShapesConfig {
            captions_per_image: 8,
            ..d.clone()
        },
        ShapesConfig {
            questions_per_image: 11,
            ..d.clone()
        },
        ShapesConfig {
            image_size: 16,
            ..d.clone()
        },
        ShapesConfig {
            answer_noise: 1.0,
            ..d.clone()
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
    d.validate().unwrap();
}

// ---------------------------------------------------------------- hand-checked labels

/// Five objects on a 64-pixel canvas (relation margin 5.12 px):
///
/// ```text
///   large red circle   (14, 14)          small blue square (50, 14)
///                      small green triangle (30, 36)
///   small blue star    (12, 52)          large yellow circle (47, 47)
/// ```
fn hand_scene() -> Scene {
    Scene::new(
        64,
        vec![
            obj(Shape::Circle, Colour::Red, Size::Large, 14.0, 14.0),
            obj(Shape::Square, Colour::Blue, Size::Small, 50.0, 14.0),
            obj(Shape::Triangle, Colour::Green, Size::Small, 30.0, 36.0),
            obj(Shape::Star, Colour::Blue, Size::Small, 12.0, 52.0),
            obj(Shape::Circle, Colour::Yellow, Size::Large, 47.0, 47.0),
        ],
    )
}

#[test]
fn hand_scene_is_valid() {
    let s = hand_scene();
    s.check().unwrap();
    assert_eq!(s.relation(0, 1, Relation::LeftOf), Some(true));
    assert_eq!(s.relation(1, 0, Relation::LeftOf), Some(false));
    assert_eq!(
        s.relation(0, 1, Relation::Above),
        None,
        "same height: undecidable"
    );
    assert_eq!(
        s.relation(0, 3, Relation::LeftOf),
        None,
        "2 px apart: undecidable"
    );
    assert_eq!(s.relation(0, 3, Relation::Above), Some(true));
    assert_eq!(s.region(0), "top left");
    assert_eq!(s.region(2), "middle");
    assert_eq!(s.region(4), "bottom right");
}

#[test]
fn vqa_answers_on_hand_scene() {
    let s = hand_scene();
    let ask = |q: Question| (q.text(), q.answer(&s));
    let sh = |x| Ref::shape(x);
    let co = |x| Ref::colour(x);
    // Colour.
    assert_eq!(
        ask(Question::Colour {
            target: sh(Shape::Square)
        }),
        ("what color is the square?".into(), Some("blue".into()))
    );
    assert_eq!(
        ask(Question::Colour {
            target: sh(Shape::Circle)
        })
        .1,
        None,
        "two circles"
    );
    let large_circle = Ref {
        size: Some(Size::Large),
        ..sh(Shape::Circle)
    };
    assert_eq!(
        ask(Question::Colour {
            target: large_circle
        })
        .1,
        None,
        "both circles large"
    );
    // Shape.
    assert_eq!(
        ask(Question::Shape {
            target: co(Colour::Green)
        }),
        (
            "what shape is the green object?".into(),
            Some("triangle".into())
        )
    );
    assert_eq!(
        ask(Question::Shape {
            target: co(Colour::Blue)
        })
        .1,
        None,
        "two blue objects"
    );
    assert_eq!(
        ask(Question::Shape {
            target: co(Colour::Purple)
        })
        .1,
        None,
        "no purple object"
    );
    // Count.
    assert_eq!(
        ask(Question::Count {
            what: sh(Shape::Circle)
        }),
        ("how many circles are there?".into(), Some("2".into()))
    );
    assert_eq!(
        ask(Question::Count {
            what: co(Colour::Blue)
        })
        .1,
        Some("2".into())
    );
    assert_eq!(ask(Question::Count { what: Ref::ANY }).1, Some("5".into()));
    assert_eq!(
        ask(Question::Count {
            what: sh(Shape::Cross)
        })
        .1,
        Some("0".into())
    );
    let small = Ref {
        size: Some(Size::Small),
        ..Ref::ANY
    };
    assert_eq!(
        ask(Question::Count { what: small }).0,
        "how many small objects are there?"
    );
    assert_eq!(ask(Question::Count { what: small }).1, Some("3".into()));
    // Existence.
    let blue_square = Ref::colour_shape(Colour::Blue, Shape::Square);
    assert_eq!(
        ask(Question::Exist { what: blue_square }),
        ("is there a blue square?".into(), Some("yes".into()))
    );
    let orange_star = Ref::colour_shape(Colour::Orange, Shape::Star);
    assert_eq!(
        ask(Question::Exist { what: orange_star }).0,
        "is there an orange star?"
    );
    assert_eq!(
        ask(Question::Exist { what: orange_star }).1,
        Some("no".into())
    );
    let large_square = Ref {
        size: Some(Size::Large),
        ..sh(Shape::Square)
    };
    assert_eq!(
        ask(Question::Exist { what: large_square }).1,
        Some("no".into())
    );
    // Relation: right of the red circle (x 14): square (50) and yellow circle (47) → two.
    let red_circle = Ref::colour_shape(Colour::Red, Shape::Circle);
    assert_eq!(
        ask(Question::Relate {
            rel: Relation::RightOf,
            anchor: red_circle
        })
        .1,
        None
    );
    // Above the blue star (y 52): circle (14), square (14), triangle (36); yellow circle (47) is
    // 5 px higher — inside the dead band — so the question is not asked.
    let blue_star = Ref::colour_shape(Colour::Blue, Shape::Star);
    assert_eq!(
        ask(Question::Relate {
            rel: Relation::Above,
            anchor: blue_star
        })
        .1,
        None
    );
    // Left of the blue square (x 50): red circle, triangle, star → several; below the green
    // triangle (y 36): star (52) and yellow circle (47) → several. Left of the green triangle
    // (x 30): red circle (14) and star (12); square (50) and yellow circle (47) right: two → None.
    let tri = sh(Shape::Triangle);
    assert_eq!(
        ask(Question::Relate {
            rel: Relation::LeftOf,
            anchor: tri
        })
        .1,
        None
    );
    // A three-object scene with one clear answer.
    let s3 = Scene::new(
        64,
        vec![
            obj(Shape::Circle, Colour::Green, Size::Small, 40.0, 20.0),
            obj(Shape::Square, Colour::Blue, Size::Small, 15.0, 22.0),
            obj(Shape::Star, Colour::Red, Size::Large, 50.0, 48.0),
        ],
    );
    s3.check().unwrap();
    let green_circle = Ref::colour_shape(Colour::Green, Shape::Circle);
    let q = Question::Relate {
        rel: Relation::LeftOf,
        anchor: green_circle,
    };
    assert_eq!(q.text(), "what is to the left of the green circle?");
    assert_eq!(q.answer(&s3), Some("blue square".into()));
    let q = Question::Relate {
        rel: Relation::Below,
        anchor: green_circle,
    };
    assert_eq!(
        q.answer(&s3),
        None,
        "the blue square is 2 px lower: undecidable"
    );
    let q = Question::Relate {
        rel: Relation::Above,
        anchor: Ref::shape(Shape::Star),
    };
    assert_eq!(q.answer(&s3), None, "two objects above the star");
    let q = Question::Relate {
        rel: Relation::RightOf,
        anchor: Ref::shape(Shape::Square),
    };
    assert_eq!(q.answer(&s3), None, "two objects right of the square");
    let q = Question::Relate {
        rel: Relation::RightOf,
        anchor: Ref::shape(Shape::Circle),
    };
    assert_eq!(q.text(), "what is to the right of the circle?");
    assert_eq!(q.answer(&s3), Some("red star".into()));
    // Moving the star 5 px right of the circle puts it inside the dead band (5.12 px).
    let mut s4 = s3.clone();
    s4.objects[2].x = 45.0;
    assert_eq!(
        q.answer(&s4),
        None,
        "star 5 px right of the circle: undecidable"
    );
    // Types.
    assert_eq!(
        Question::Exist { what: blue_square }.answer_type(),
        "yes/no"
    );
    assert_eq!(Question::Count { what: small }.answer_type(), "number");
    assert_eq!(Question::Colour { target: tri }.answer_type(), "other");
}

#[test]
fn annotator_answers_disagree_plausibly() {
    let cfg = ShapesConfig::default();
    let mut disagreements = 0;
    let mut total = 0;
    for i in 0..300 {
        let rec = shapes::build_image(&cfg, Split::Val, i);
        for item in &rec.vqa {
            total += 1;
            let right = item
                .humans
                .iter()
                .filter(|h| h.answer == item.answer)
                .count();
            assert!((6..=10).contains(&right));
            disagreements += (right < 10) as usize;
            let conf = shapes::vqa::confusions(&item.question, &item.answer);
            for h in item.humans.iter().filter(|h| h.answer != item.answer) {
                assert!(
                    conf.contains(&h.answer),
                    "{} is no confusion of {}",
                    h.answer,
                    item.answer
                );
            }
        }
    }
    // P(at least one of ten wrong) = 1 - 0.85^10 ≈ 0.80.
    let frac = disagreements as f64 / total as f64;
    assert!((0.6..0.95).contains(&frac), "{frac}");
}

#[test]
fn nlvr2_truth_on_hand_scenes() {
    let l = hand_scene();
    let r = Scene::new(
        64,
        vec![
            obj(Shape::Circle, Colour::Blue, Size::Small, 20.0, 20.0),
            obj(Shape::Cross, Colour::Red, Size::Large, 44.0, 44.0),
        ],
    );
    r.check().unwrap();
    let t = |s: Statement| (s.text(), s.truth(&l, &r));
    let sh = Ref::shape;
    let co = Ref::colour;
    assert_eq!(
        t(Statement::More {
            side: Side::Left,
            what: sh(Shape::Circle)
        }),
        (
            "the left image has more circles than the right image".into(),
            Some(true)
        )
    );
    assert_eq!(
        t(Statement::More {
            side: Side::Right,
            what: sh(Shape::Circle)
        })
        .1,
        Some(false)
    );
    assert_eq!(
        t(Statement::More {
            side: Side::Right,
            what: sh(Shape::Cross)
        })
        .1,
        Some(true)
    );
    assert_eq!(
        t(Statement::More {
            side: Side::Left,
            what: Ref::ANY
        })
        .1,
        Some(true)
    );
    assert_eq!(
        t(Statement::Both {
            what: co(Colour::Red)
        }),
        ("both images contain a red object".into(), Some(true))
    );
    assert_eq!(
        t(Statement::Both {
            what: co(Colour::Green)
        })
        .1,
        Some(false)
    );
    assert_eq!(
        t(Statement::Both {
            what: Ref::colour_shape(Colour::Blue, Shape::Circle)
        })
        .1,
        Some(false)
    );
    assert_eq!(
        t(Statement::ExactlyOne {
            what: sh(Shape::Cross)
        })
        .1,
        Some(true)
    );
    assert_eq!(
        t(Statement::ExactlyOne {
            what: sh(Shape::Circle)
        })
        .1,
        Some(false)
    );
    assert_eq!(
        t(Statement::Neither {
            what: sh(Shape::Diamond)
        }),
        ("neither image contains a diamond".into(), Some(true))
    );
    assert_eq!(
        t(Statement::Neither {
            what: sh(Shape::Star)
        })
        .1,
        Some(false)
    );
    assert_eq!(
        t(Statement::SameCount {
            what: co(Colour::Red)
        })
        .1,
        Some(true)
    );
    assert_eq!(
        t(Statement::SameCount {
            what: co(Colour::Blue)
        })
        .1,
        Some(false)
    );
    assert_eq!(
        t(Statement::Total {
            what: sh(Shape::Circle),
            n: 3
        }),
        (
            "there are exactly three circles in total".into(),
            Some(true)
        )
    );
    assert_eq!(
        t(Statement::Total {
            what: Ref::ANY,
            n: 6
        })
        .1,
        Some(false)
    );
    assert_eq!(
        t(Statement::Total {
            what: sh(Shape::Cross),
            n: 1
        })
        .0,
        "there is exactly one cross in total"
    );
    assert_eq!(
        t(Statement::Total {
            what: sh(Shape::Cross),
            n: 1
        })
        .1,
        Some(true)
    );
    let rel = |side, a, rel, b| Statement::Relate { side, a, rel, b };
    let rc = Ref::colour_shape(Colour::Red, Shape::Circle);
    assert_eq!(
        t(rel(Side::Left, rc, Relation::LeftOf, sh(Shape::Square))),
        (
            "in the left image, a red circle is left of a square".into(),
            Some(true)
        )
    );
    assert_eq!(
        t(rel(Side::Left, rc, Relation::RightOf, sh(Shape::Square))).1,
        Some(false)
    );
    // Red circle vs the star: 2 px apart horizontally → undecidable.
    assert_eq!(
        t(rel(Side::Left, rc, Relation::LeftOf, sh(Shape::Star))).1,
        None
    );
    // Some circle (red or yellow) above the star: the red one is → true.
    assert_eq!(
        t(rel(
            Side::Left,
            sh(Shape::Circle),
            Relation::Above,
            sh(Shape::Star)
        ))
        .1,
        Some(true)
    );
    // Right image: blue circle above the red cross → true; no triangle there → false.
    assert_eq!(
        t(rel(
            Side::Right,
            sh(Shape::Circle),
            Relation::Above,
            sh(Shape::Cross)
        ))
        .1,
        Some(true)
    );
    assert_eq!(
        t(rel(
            Side::Right,
            sh(Shape::Triangle),
            Relation::Above,
            sh(Shape::Cross)
        ))
        .1,
        Some(false)
    );
}

#[test]
fn ve_labels_on_hand_scene() {
    let s = hand_scene();
    let l = |h: Hypothesis| (h.text(), h.label(&s));
    use VeLabel::*;
    let sh = Ref::shape;
    assert_eq!(
        l(Hypothesis::Exists {
            what: Ref::colour_shape(Colour::Green, Shape::Triangle)
        }),
        ("there is a green triangle".into(), Some(Entailment))
    );
    assert_eq!(
        l(Hypothesis::Exists {
            what: Ref::colour_shape(Colour::Cyan, Shape::Triangle)
        })
        .1,
        Some(Contradiction)
    );
    assert_eq!(
        l(Hypothesis::NotExists {
            what: sh(Shape::Cross)
        }),
        ("there is no cross".into(), Some(Entailment))
    );
    assert_eq!(
        l(Hypothesis::NotExists {
            what: sh(Shape::Star)
        })
        .1,
        Some(Contradiction)
    );
    assert_eq!(
        l(Hypothesis::Count {
            what: sh(Shape::Circle),
            n: 2
        }),
        ("there are exactly two circles".into(), Some(Entailment))
    );
    assert_eq!(
        l(Hypothesis::Count {
            what: sh(Shape::Circle),
            n: 3
        })
        .1,
        Some(Contradiction)
    );
    assert_eq!(
        l(Hypothesis::Count {
            what: sh(Shape::Star),
            n: 1
        })
        .0,
        "there is exactly one star"
    );
    // The only triangle is green: "the triangle is green" entailed, "… is cyan" contradicted.
    let tri = sh(Shape::Triangle);
    assert_eq!(
        l(Hypothesis::Attribute {
            subject: tri,
            value: Attr::Colour(Colour::Green)
        }),
        ("the triangle is green".into(), Some(Entailment))
    );
    assert_eq!(
        l(Hypothesis::Attribute {
            subject: tri,
            value: Attr::Colour(Colour::Cyan)
        })
        .1,
        Some(Contradiction)
    );
    assert_eq!(
        l(Hypothesis::Attribute {
            subject: tri,
            value: Attr::Size(Size::Large)
        })
        .1,
        Some(Contradiction)
    );
    let green = Ref::colour(Colour::Green);
    assert_eq!(
        l(Hypothesis::Attribute {
            subject: green,
            value: Attr::Shape(Shape::Diamond)
        }),
        ("the green object is a diamond".into(), Some(Contradiction))
    );
    // Not a unique subject: ill-posed.
    assert_eq!(
        l(Hypothesis::Attribute {
            subject: sh(Shape::Circle),
            value: Attr::Colour(Colour::Red)
        })
        .1,
        None
    );
    let rc = Ref::colour_shape(Colour::Red, Shape::Circle);
    let sq = sh(Shape::Square);
    assert_eq!(
        l(Hypothesis::Relate {
            a: rc,
            rel: Relation::LeftOf,
            b: sq
        }),
        (
            "the red circle is to the left of the square".into(),
            Some(Entailment)
        )
    );
    assert_eq!(
        l(Hypothesis::Relate {
            a: sq,
            rel: Relation::LeftOf,
            b: rc
        })
        .1,
        Some(Contradiction)
    );
    assert_eq!(
        l(Hypothesis::Relate {
            a: sq,
            rel: Relation::Above,
            b: rc
        })
        .1,
        None,
        "same height"
    );
    assert_eq!(
        l(Hypothesis::All {
            value: Attr::Size(Size::Small)
        }),
        ("all objects are small".into(), Some(Contradiction))
    );
    let two = Scene::new(
        64,
        vec![
            obj(Shape::Star, Colour::Red, Size::Small, 10.0, 10.0),
            obj(Shape::Star, Colour::Blue, Size::Small, 50.0, 50.0),
        ],
    );
    assert_eq!(
        Hypothesis::All {
            value: Attr::Shape(Shape::Star)
        }
        .text(),
        "all objects are stars"
    );
    assert_eq!(
        Hypothesis::All {
            value: Attr::Shape(Shape::Star)
        }
        .label(&two),
        Some(Entailment)
    );
    assert_eq!(
        l(Hypothesis::Unobservable {
            subject: tri,
            property: 0
        }),
        ("the triangle is made of wood".into(), Some(Neutral))
    );
    assert_eq!(
        l(Hypothesis::Unobservable {
            subject: sh(Shape::Circle),
            property: 0
        })
        .1,
        None
    );
}

#[test]
fn rendering_matches_the_scene() {
    let s = hand_scene();
    let cfg = ShapesConfig {
        noise_std: 0.0,
        ..ShapesConfig::default()
    };
    let rgb = shapes::render_image(&cfg, Split::Test, 0, &s);
    assert_eq!(rgb.len(), 64 * 64 * 3);
    let px = |x: usize, y: usize| {
        [
            rgb[(y * 64 + x) * 3],
            rgb[(y * 64 + x) * 3 + 1],
            rgb[(y * 64 + x) * 3 + 2],
        ]
    };
    for o in &s.objects {
        assert_eq!(px(o.x as usize, o.y as usize), o.colour.rgb(), "{o:?}");
    }
    assert_eq!(px(63, 0), shapes::render::BACKGROUND);
    assert_eq!(px(30, 2), shapes::render::BACKGROUND);
    // Anti-aliasing blends edge pixels; without it every pixel is background or an object colour.
    let hard = shapes::render_image(
        &ShapesConfig {
            antialias: false,
            ..cfg.clone()
        },
        Split::Test,
        0,
        &s,
    );
    let palette: BTreeSet<[u8; 3]> = s
        .objects
        .iter()
        .map(|o| o.colour.rgb())
        .chain([shapes::render::BACKGROUND])
        .collect();
    assert!(hard
        .chunks(3)
        .all(|p| palette.contains(&[p[0], p[1], p[2]])));
    assert!(rgb
        .chunks(3)
        .any(|p| !palette.contains(&[p[0], p[1], p[2]])));
    // A square is not a circle: the corner of the large circle's box is background.
    assert_eq!(px(14 - 11, 14 - 11), shapes::render::BACKGROUND);
}

#[test]
fn light_backgrounds_change_only_the_background() {
    let s = hand_scene();
    let dark = ShapesConfig::default();
    let light = ShapesConfig {
        light_backgrounds: 1.0,
        ..dark.clone()
    };
    let a = shapes::render_image(&dark, Split::Test, 0, &s);
    let b = shapes::render_image(&light, Split::Test, 0, &s);
    let px = |rgb: &[u8], x: usize, y: usize| {
        [
            rgb[(y * 64 + x) * 3],
            rgb[(y * 64 + x) * 3 + 1],
            rgb[(y * 64 + x) * 3 + 2],
        ]
    };
    let bg = px(&b, 63, 0);
    assert!(bg.iter().all(|&c| c >= 225), "{bg:?}");
    assert_eq!(px(&a, 63, 0), shapes::render::BACKGROUND);
    for o in &s.objects {
        let (x, y) = (o.x as usize, o.y as usize);
        assert_eq!(px(&a, x, y), px(&b, x, y), "{o:?}");
    }
    // Same seed, same background; a probability outside [0, 1] is refused.
    assert_eq!(b, shapes::render_image(&light, Split::Test, 0, &s));
    let bad = ShapesConfig {
        light_backgrounds: 1.5,
        ..dark
    };
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("light_backgrounds"));
}

// ---------------------------------------------------------------- generated items, balance

/// The first `n` training images of `cfg`, with their texts.
fn train_records(cfg: &ShapesConfig, n: usize) -> Vec<shapes::ImageRecord> {
    (0..n)
        .map(|i| shapes::build_image(cfg, Split::Train, i))
        .collect()
}

#[test]
fn generated_items_are_labelled_by_their_evaluator_and_balanced() {
    let cfg = ShapesConfig::default();
    let n = 600;
    let recs = train_records(&cfg, n);
    let mut families: BTreeMap<&str, usize> = BTreeMap::new();
    let mut yes = [0usize; 2];
    let mut ve: BTreeMap<&str, usize> = BTreeMap::new();
    let mut objects = [0usize; 6];
    for r in &recs {
        r.scene.check().unwrap();
        objects[r.scene.objects.len()] += 1;
        assert_eq!(r.captions.len(), 5);
        let distinct: BTreeSet<&String> = r.captions.iter().collect();
        assert_eq!(distinct.len(), 5, "{:?}", r.captions);
        for o in &r.scene.objects {
            let np = format!("{} {} {}", o.size.name(), o.colour.name(), o.shape.name());
            assert!(
                r.captions[0].contains(&np),
                "{np} missing from {}",
                r.captions[0]
            );
        }
        assert_eq!(r.vqa.len(), 5);
        for item in &r.vqa {
            assert_eq!(item.question.answer(&r.scene).as_ref(), Some(&item.answer));
            *families.entry(item.question.family()).or_default() += 1;
            if let Question::Exist { .. } = item.question {
                yes[(item.answer == "yes") as usize] += 1;
            }
        }
        assert_eq!(r.ve.len(), 3);
        for (h, label) in &r.ve {
            assert_eq!(h.label(&r.scene), Some(*label), "{}", h.text());
            *ve.entry(label.name()).or_default() += 1;
        }
    }
    assert!(objects[1] > 0 && objects[4] > objects[1], "{objects:?}");
    // Entailed and contradicted hypotheses share their wording family by family.
    let mut ve_fam: BTreeMap<&str, [usize; 2]> = BTreeMap::new();
    for r in &recs {
        for (h, label) in &r.ve {
            if *label != VeLabel::Neutral {
                ve_fam.entry(h.family()).or_default()[(*label == VeLabel::Entailment) as usize] +=
                    1;
            } else {
                assert_eq!(h.family(), "unobservable");
            }
        }
    }
    assert_eq!(ve_fam.len(), 6, "{ve_fam:?}");
    for (f, [contra, entail]) in &ve_fam {
        let frac = *entail as f64 / (contra + entail) as f64;
        assert!(
            (0.3..0.7).contains(&frac),
            "VE {f}: {contra} contradictions, {entail} entailments"
        );
    }
    assert_eq!(ve.values().copied().collect::<Vec<_>>(), vec![n, n, n]);
    for f in shapes::vqa::FAMILIES {
        assert!(families[f] > n / 2, "{f}: {families:?}");
    }
    let yes_frac = yes[1] as f64 / (yes[0] + yes[1]) as f64;
    assert!(
        (0.4..0.6).contains(&yes_frac),
        "existence yes fraction {yes_frac}"
    );

    let scenes: Vec<Scene> = recs.iter().map(|r| r.scene.clone()).collect();
    let nl = shapes::build_nlvr2(&cfg, Split::Train, &scenes);
    assert_eq!(nl.len(), n);
    assert_eq!(nl.iter().filter(|e| e.label).count(), n / 2);
    let mut fam: BTreeMap<&str, [usize; 2]> = BTreeMap::new();
    for e in &nl {
        assert_ne!(e.left, e.right);
        assert_eq!(
            e.statement.truth(&scenes[e.left], &scenes[e.right]),
            Some(e.label)
        );
        fam.entry(e.statement.family()).or_default()[e.label as usize] += 1;
    }
    assert_eq!(fam.len(), shapes::nlvr2::FAMILIES.len(), "{fam:?}");
    for (f, [no, yes]) in &fam {
        let frac = *yes as f64 / (no + yes) as f64;
        assert!((0.2..0.8).contains(&frac), "{f}: {no} false, {yes} true");
    }
}

#[test]
fn test_split_captions_are_nearly_unique() {
    let cfg = ShapesConfig::default();
    let caps: Vec<Vec<String>> = (0..cfg.test_images)
        .map(|i| shapes::build_image(&cfg, Split::Test, i).captions)
        .collect();
    let dup = shapes::duplicate_caption_fraction(&caps);
    let full: Vec<Vec<String>> = caps.iter().map(|c| vec![c[0].clone()]).collect();
    let dup_full = shapes::duplicate_caption_fraction(&full);
    eprintln!(
        "test split: {:.2} % of captions duplicated, {:.2} % of full descriptions",
        dup * 100.0,
        dup_full * 100.0
    );
    assert!(dup < 0.02, "{dup}");
    assert!(dup_full < 0.015, "{dup_full}");
}

#[test]
fn seven_distinct_captions_when_asked() {
    let cfg = ShapesConfig {
        captions_per_image: 7,
        ..ShapesConfig::default()
    };
    for i in 0..300 {
        let r = shapes::build_image(&cfg, Split::Val, i);
        let distinct: BTreeSet<&String> = r.captions.iter().collect();
        assert_eq!(distinct.len(), 7, "{:?}", r.captions);
    }
}

/// The (colour, shape) pairs named in a text, in order ("a red circle", "a large red circle").
fn colour_shapes(text: &str) -> Vec<(Colour, Shape)> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut out = Vec::new();
    for w in words.windows(2) {
        let c = Colour::ALL.iter().find(|c| c.name() == w[0]);
        let s = Shape::ALL.iter().find(|s| s.name() == w[1]);
        if let (Some(c), Some(s)) = (c, s) {
            out.push((*c, *s));
        }
    }
    out
}

#[test]
fn region_descriptions_are_true_of_the_hand_scene() {
    use vlp_tasks::shapes::captions::{region_descriptions, MAX_REGION_TEXTS};
    use vlp_tasks::shapes::rng::{Purpose, Stream};
    let s = hand_scene();
    let find = |c: Colour, sh: Shape| {
        let m = s.matching(&Ref::colour_shape(c, sh));
        assert_eq!(
            m.len(),
            1,
            "{c:?} {sh:?} is not one object of the hand scene"
        );
        m[0]
    };
    let mut seen_relation = 0;
    let mut seen_count = 0;
    for i in 0..200 {
        let texts = region_descriptions(&s, &mut Stream::new(7, Purpose::RegionTexts, 0, i));
        let again = region_descriptions(&s, &mut Stream::new(7, Purpose::RegionTexts, 0, i));
        assert_eq!(texts, again, "deterministic per stream");
        assert!(
            !texts.is_empty() && texts.len() <= MAX_REGION_TEXTS,
            "{texts:?}"
        );
        let distinct: BTreeSet<&String> = texts.iter().collect();
        assert_eq!(distinct.len(), texts.len(), "{texts:?}");
        for t in &texts {
            let pairs = colour_shapes(t);
            for &(c, sh) in &pairs {
                find(c, sh);
            }
            for rel in Relation::ALL {
                if t.contains(&format!(" {} ", rel.long_phrase())) {
                    assert_eq!(pairs.len(), 2, "{t}");
                    let (a, b) = (find(pairs[0].0, pairs[0].1), find(pairs[1].0, pairs[1].1));
                    assert_eq!(s.relation(a, b, rel), Some(true), "{t}");
                    seen_relation += 1;
                }
            }
            match t.as_str() {
                "five shapes" | "two circles" | "one square" | "one triangle" | "one star" => {
                    seen_count += 1
                }
                t if t.ends_with(" shapes") || t.starts_with("one ") => {
                    panic!("wrong count: {t}")
                }
                _ => {}
            }
            if let Some(c) = t.strip_prefix("a ").and_then(|r| r.strip_suffix(" shape")) {
                assert!(s.objects.iter().any(|o| o.colour.name() == c), "{t}");
            }
        }
    }
    assert!(
        seen_relation > 100 && seen_count > 100,
        "{seen_relation} {seen_count}"
    );
}

/// The text → family functions that the quickstart's per-family accuracies use give back the
/// family of every generated question, statement and hypothesis, before and after ALBEF's text
/// preprocessing; `nlvr2_families` restricts the statements to those families and rejects
/// unknown names.
#[test]
fn text_families_round_trip_and_nlvr2_families_restrict() {
    let cfg = ShapesConfig::default();
    let n = 400;
    let recs = train_records(&cfg, n);
    let prep = |t: &str| vlp_core::text::pre_caption(t, 60);
    for r in &recs {
        for item in &r.vqa {
            let t = item.question.text();
            for t in [t.clone(), prep(&t)] {
                assert_eq!(
                    shapes::vqa::family_of_text(&t),
                    Some(item.question.family()),
                    "{t}"
                );
            }
        }
        for (h, _) in &r.ve {
            assert!(shapes::ve::FAMILIES.contains(&h.family()), "{}", h.family());
            let t = h.text();
            for t in [t.clone(), prep(&t)] {
                assert_eq!(shapes::ve::family_of_text(&t), Some(h.family()), "{t}");
            }
        }
    }
    let scenes: Vec<Scene> = recs.iter().map(|r| r.scene.clone()).collect();
    for e in shapes::build_nlvr2(&cfg, Split::Train, &scenes) {
        let t = e.statement.text();
        for t in [t.clone(), prep(&t)] {
            assert_eq!(
                shapes::nlvr2::family_of_text(&t),
                Some(e.statement.family()),
                "{t}"
            );
        }
    }
    assert_eq!(shapes::nlvr2::family_of_text("a red circle"), None);
    assert_eq!(shapes::vqa::family_of_text("why?"), None);
    assert_eq!(shapes::ve::family_of_text("a red circle"), None);

    let exist = ShapesConfig {
        nlvr2_families: vec!["both".into(), "neither".into()],
        ..ShapesConfig::default()
    };
    exist.validate().unwrap();
    let nl = shapes::build_nlvr2(&exist, Split::Train, &scenes);
    assert_eq!(nl.len(), n);
    assert_eq!(nl.iter().filter(|e| e.label).count(), n / 2);
    let fams: BTreeSet<&str> = nl.iter().map(|e| e.statement.family()).collect();
    assert_eq!(fams, BTreeSet::from(["both", "neither"]));
    for e in &nl {
        assert_eq!(
            e.statement.truth(&scenes[e.left], &scenes[e.right]),
            Some(e.label)
        );
    }
    let bad = ShapesConfig {
        nlvr2_families: vec!["both".into(), "counting".into()],
        ..ShapesConfig::default()
    };
    let err = bad.validate().unwrap_err().to_string();
    assert!(
        err.contains("nlvr2_families") && err.contains("counting"),
        "{err}"
    );
    let empty = ShapesConfig {
        nlvr2_families: vec![],
        ..ShapesConfig::default()
    };
    assert!(empty.validate().is_err());
    // Unvalidated, a config with no known family draws no statement (rather than looping).
    assert!(shapes::build_nlvr2(&bad_only(), Split::Train, &scenes).is_empty());
    assert!(shapes::build_nlvr2(&empty, Split::Train, &scenes).is_empty());
}

fn bad_only() -> ShapesConfig {
    ShapesConfig {
        nlvr2_families: vec!["counting".into()],
        ..ShapesConfig::default()
    }
}

/// `nlvr2_train_per_pair`: in the train split each pair carries that many consecutive
/// statements, half of them true, in couples of one family, each true of its pair as labelled
/// and mostly distinct; the
/// first statement of (almost) each pair is the one-per-pair data's; validation is unchanged.
#[test]
fn nlvr2_train_statements_per_pair() {
    let one = ShapesConfig::default();
    let four = ShapesConfig {
        nlvr2_train_per_pair: 4,
        ..ShapesConfig::default()
    };
    four.validate().unwrap();
    let n = 300;
    let scenes: Vec<Scene> = train_records(&one, n)
        .into_iter()
        .map(|r| r.scene)
        .collect();
    let base = shapes::build_nlvr2(&one, Split::Train, &scenes);
    let nl = shapes::build_nlvr2(&four, Split::Train, &scenes);
    assert_eq!(nl.len(), 4 * n);
    let (mut repeats, mut redrawn, mut couples) = (0, 0, 0);
    for (p, group) in nl.chunks(4).enumerate() {
        // A pair is drawn again only when it has no statement of some wanted truth.
        redrawn += usize::from(group[0] != base[p]);
        for c in group.chunks(2) {
            couples += usize::from(c[0].statement.family() == c[1].statement.family());
        }
        let truths: Vec<bool> = group.iter().map(|e| e.label).collect();
        assert_eq!(
            truths.iter().filter(|t| **t).count(),
            2,
            "pair {p}: {truths:?}"
        );
        let distinct: BTreeSet<String> = group.iter().map(|e| e.statement.text()).collect();
        repeats += 4 - distinct.len();
        for e in group {
            assert_eq!((e.left, e.right), (group[0].left, group[0].right));
            assert_eq!(
                e.statement.truth(&scenes[e.left], &scenes[e.right]),
                Some(e.label),
                "{}",
                e.statement.text()
            );
        }
    }
    assert!(
        repeats < n / 20,
        "{repeats} repeated statements over {n} pairs"
    );
    // True/false couples of one family where the pair has them: nearly always.
    assert!(
        couples > 2 * n * 9 / 10,
        "{couples} of {} couples share a family",
        2 * n
    );
    assert!(
        redrawn < n / 20,
        "{redrawn} of {n} pairs differ from the one-statement data"
    );
    assert_eq!(
        shapes::build_nlvr2(&four, Split::Val, &scenes),
        shapes::build_nlvr2(&one, Split::Val, &scenes)
    );
    for bad in [0, 17] {
        let cfg = ShapesConfig {
            nlvr2_train_per_pair: bad,
            ..ShapesConfig::default()
        };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("nlvr2_train_per_pair"), "{e}");
    }
}
