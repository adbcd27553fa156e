//! The data readers on small hand-written files in the official formats (tests/data), malformed
//! ones included, and easy-VQA as the PyPI package ships it.
use std::path::{Path, PathBuf};
use vlp_core::VlpError;
use vlp_tasks::data::karpathy::{self, ImageId, RetrievalGallery};
use vlp_tasks::data::vqa::{self, AnswerVocab, VocabCount};
use vlp_tasks::data::{easy_vqa, nlvr2, snli_ve, ReadOptions, TextPrep};

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

/// The (line, column, field) of a [`VlpError::Data`], checking it names `file`.
fn where_(e: &VlpError, file: &str) -> (usize, usize, String) {
    match e {
        VlpError::Data {
            path,
            line,
            column,
            field,
            ..
        } => {
            assert!(path.ends_with(file), "{e}");
            assert!(e.to_string().contains(file), "{e}");
            (*line, *column, field.clone())
        }
        other => panic!("expected a data error, got {other:?}"),
    }
}

#[test]
fn karpathy_train_test_and_flickr() {
    let opts = ReadOptions::new("/data/coco");
    let train = karpathy::read(&data("karpathy/coco_train.json"), &opts).unwrap();
    assert_eq!(train.items.len(), 3);
    assert_eq!(train.report.skipped_count(), 0);
    let e = &train.items[0];
    assert_eq!(
        e.image,
        Path::new("/data/coco/val2014/COCO_val2014_000000522418.jpg")
    );
    assert_eq!(e.image_id, Some(ImageId::Str("coco_522418".into())));
    assert_eq!(e.numeric_id(), Some(522418));
    assert_eq!(karpathy::image_indices(&train.items), vec![0, 0, 1]);

    let test = karpathy::read(&data("karpathy/coco_test.json"), &opts)
        .unwrap()
        .items;
    assert_eq!(
        test.iter().map(|e| e.captions.len()).collect::<Vec<_>>(),
        vec![5, 3]
    );
    assert_eq!(test[1].numeric_id(), Some(60623));
    let g = RetrievalGallery::from_entries(&test, TextPrep::Albef { max_words: 30 });
    assert_eq!(g.texts.len(), 8);
    assert_eq!(g.img2txt, vec![vec![0, 1, 2, 3, 4], vec![5, 6, 7]]);
    assert_eq!(g.txt2img, vec![0, 0, 0, 0, 0, 1, 1, 1]);
    assert_eq!(
        g.texts[0],
        "a man with a red helmet on a small moped on a dirt road"
    );

    let f = karpathy::read(
        &data("karpathy/flickr30k_train.json"),
        &ReadOptions::new("f30k"),
    )
    .unwrap()
    .items;
    assert_eq!(f[2].image_id, Some(ImageId::Int(1)));
    assert_eq!(f[2].image, Path::new("f30k/flickr30k-images/10002456.jpg"));
    assert_eq!(karpathy::image_indices(&f), vec![0, 0, 1]);
}

#[test]
fn karpathy_bad_records_stop_or_are_counted() {
    let path = data("karpathy/bad.json");
    let e = karpathy::read(&path, &ReadOptions::new("")).unwrap_err();
    // Record 1 starts on line 3, column 2, and has no caption.
    assert_eq!(where_(&e, "bad.json"), (3, 2, "[1].caption".into()));
    assert!(e.to_string().contains("missing"), "{e}");

    let l = karpathy::read(&path, &ReadOptions::new("").skipping(true)).unwrap();
    assert_eq!(l.report.records, 7);
    assert_eq!(l.report.kept, 2);
    assert_eq!(l.report.skipped_count(), 5);
    let msgs = &l.report.skipped;
    assert!(
        msgs[0].contains("bad.json:3:2: field `[1].caption`: missing"),
        "{msgs:?}"
    );
    assert!(
        msgs[1].contains(
            ":4:2: field `[2].caption`: expected a string or a list of strings, found a number"
        ),
        "{msgs:?}"
    );
    assert!(
        msgs[2].contains(":5:2: field `[3].image`: empty string"),
        "{msgs:?}"
    );
    assert!(msgs[3].contains(":6:2: field `[4].caption[1]`"), "{msgs:?}");
    assert!(msgs[4].contains(":7:2: field `[5].image_id`"), "{msgs:?}");
    assert!(
        l.report
            .to_string()
            .contains("7 records, 2 kept, 5 skipped"),
        "{}",
        l.report
    );
}

#[test]
fn json_syntax_error_names_line_and_column() {
    let e = karpathy::read(
        &data("karpathy/syntax_error.json"),
        &ReadOptions::new("").skipping(true),
    )
    .unwrap_err();
    let (line, col, field) = where_(&e, "syntax_error.json");
    assert_eq!((line, field.as_str()), (3, "<json>"));
    assert!(col > 30, "{e}");
}

#[test]
fn missing_file_names_it() {
    let e = karpathy::read(&data("karpathy/nope.json"), &ReadOptions::new("")).unwrap_err();
    assert!(
        matches!(e, VlpError::Io { .. }) && e.to_string().contains("nope.json"),
        "{e}"
    );
}

#[test]
fn vqa_official_questions_and_annotations() {
    let l = vqa::read_official(
        &data("vqa/questions.json"),
        Some(&data("vqa/annotations.json")),
        &ReadOptions::new("/coco"),
    )
    .unwrap();
    let q = &l.items;
    assert_eq!(q.len(), 6);
    assert_eq!(q[1].question_id, Some(262148001));
    assert_eq!(
        q[1].image,
        Path::new("/coco/val2014/COCO_val2014_000000262148.jpg")
    );
    assert_eq!(q[1].answers.len(), 10);
    assert_eq!(q[1].answer_type.as_deref(), Some("number"));
    assert_eq!(q[2].question_type.as_deref(), Some("what color is the"));
    assert_eq!(q[2].multiple_choice_answer.as_deref(), Some("red"));
    // Test questions: no annotations.
    let t = vqa::read_official(&data("vqa/questions.json"), None, &ReadOptions::new(""))
        .unwrap()
        .items;
    assert!(t.iter().all(|q| q.answers.is_empty()));

    let anns =
        vqa::read_official_annotations(&data("vqa/annotations.json"), &ReadOptions::default())
            .unwrap()
            .items;
    assert_eq!(anns[0].answers[9].answer_id, Some(10));
    assert_eq!(anns[0].answers[0].answer_confidence.as_deref(), Some("yes"));
}

#[test]
fn vqa_official_bad_records() {
    // One-line file (as the official ones): the column locates the record.
    let e = vqa::read_official(&data("vqa/bad_questions.json"), None, &ReadOptions::new(""))
        .unwrap_err();
    let (line, col, field) = where_(&e, "bad_questions.json");
    assert_eq!((line, field.as_str()), (1, "questions[1].question_id"));
    assert_eq!(col, 132); // 1-based byte column of `{"image_id": 262148, "question": "How many…`
    assert!(e.to_string().contains("\"abc\""), "{e}");
    let l = vqa::read_official(
        &data("vqa/bad_questions.json"),
        None,
        &ReadOptions::new("").skipping(true),
    )
    .unwrap();
    assert_eq!((l.report.kept, l.report.skipped_count()), (1, 2));
    assert!(
        l.report.skipped[1].contains("questions[2].question"),
        "{:?}",
        l.report.skipped
    );

    let a = data("vqa/bad_annotations.json");
    let l = vqa::read_official_annotations(&a, &ReadOptions::default().skipping(true)).unwrap();
    assert_eq!(l.report.skipped_count(), 3);
    let s = &l.report.skipped;
    assert!(s[0].contains(":2:2: field `annotations[0].answers`: expected a list of answer objects, found a string"), "{s:?}");
    assert!(
        s[1].contains(":3:2: field `annotations[1].question_type`: missing"),
        "{s:?}"
    );
    assert!(
        s[2].contains(":4:2: field `annotations[2].answers[1].answer`: missing"),
        "{s:?}"
    );

    // Questions without annotations (their annotations were bad) are named too.
    let e = vqa::read_official(
        &data("vqa/questions.json"),
        Some(&a),
        &ReadOptions::default().skipping(true),
    )
    .unwrap();
    assert_eq!(e.items.len(), 0);
    assert_eq!(e.report.skipped_count(), 6 + 3);
    let e = vqa::read_official(
        &data("vqa/questions.json"),
        Some(&a),
        &ReadOptions::default(),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("bad_annotations.json:2:2: field `annotations[0].answers`"),
        "{e}"
    );
}

#[test]
fn vqa_albef_files_and_answer_list() {
    let vg = Path::new("/vg");
    let q = vqa::read_albef(
        &data("vqa/vqa_train.json"),
        &ReadOptions::new("/coco"),
        Some(vg),
    )
    .unwrap()
    .items;
    assert_eq!(q.len(), 3);
    assert_eq!(q[0].answers.len(), 10);
    assert_eq!(
        q[0].image,
        Path::new("/coco/train2014/COCO_train2014_000000458752.jpg")
    );
    assert_eq!(q[2].question_id, None);
    assert_eq!(q[2].image, Path::new("/vg/VG_100K/2.jpg"));
    let t = vqa::read_albef(&data("vqa/vqa_test.json"), &ReadOptions::new(""), None)
        .unwrap()
        .items;
    assert!(t
        .iter()
        .all(|q| q.answers.is_empty() && q.question_id.is_some()));
    let list = vqa::read_answer_list(&data("vqa/answer_list.json")).unwrap();
    assert_eq!(list, ["net", "pitcher", "red", "yes", "no", "2"]);
}

#[test]
fn answer_vocabulary_counts_multiple_choice_answers() {
    let q = vqa::read_official(
        &data("vqa/questions.json"),
        Some(&data("vqa/annotations.json")),
        &ReadOptions::new(""),
    )
    .unwrap()
    .items;
    // multiple_choice_answer per question: yes, 3, red, kite, no, 1 (each once).
    let v = AnswerVocab::build(&q, 1, VocabCount::MultipleChoiceAnswer).unwrap();
    assert_eq!(v.answers(), ["yes", "3", "red", "kite", "no", "1"]);
    assert_eq!(
        AnswerVocab::build(&q, 2, VocabCount::MultipleChoiceAnswer)
            .unwrap()
            .len(),
        0
    );
    // Every annotator answer, normalised (`two` → `2`, `2.` → `2`, `Red` → `red`, `dark-red` →
    // `dark red`, `an umbrella` → `umbrella`, `umbrella!` → `umbrella`), kept at count >= 4:
    // yes 12, 2 6, 3 4, red 4, umbrella 6, kite 4, no 8, 1 10.
    let v = AnswerVocab::build(&q, 4, VocabCount::EveryAnswer).unwrap();
    assert_eq!(
        v.answers(),
        ["yes", "2", "3", "red", "umbrella", "kite", "no", "1"]
    );
    assert_eq!(v.index("umbrella"), Some(4));
    // Questions with no answer in the vocabulary are dropped for training (as write_vqa.py).
    let mut kept = q.clone();
    let small = AnswerVocab::from_answers(vec!["yes".into(), "kite".into()]);
    assert_eq!(vqa::retain_labelled(&mut kept, &small), 3);
    let ids: Vec<u64> = kept.iter().map(|q| q.question_id.unwrap()).collect();
    assert_eq!(ids, vec![262148000, 393225001, 458752000]);
    // ALBEF files have no multiple_choice_answer.
    let albef = vqa::read_albef(&data("vqa/vqa_train.json"), &ReadOptions::new(""), None)
        .unwrap()
        .items;
    assert!(AnswerVocab::build(&albef, 1, VocabCount::MultipleChoiceAnswer).is_err());
}

#[test]
fn nlvr2_albef_and_official() {
    let a = nlvr2::read(&data("nlvr2/nlvr_dev.json"), &ReadOptions::new("/nlvr2"))
        .unwrap()
        .items;
    assert_eq!(a.len(), 3);
    assert!(!a[0].label && a[1].label);
    assert_eq!(a[1].images[1], Path::new("/nlvr2/dev/dev-850-1-img1.png"));
    let o = nlvr2::read(&data("nlvr2/dev.jsonl"), &ReadOptions::new("/nlvr2"))
        .unwrap()
        .items;
    assert_eq!(o.len(), 4);
    assert_eq!(o[0].identifier.as_deref(), Some("dev-850-0-0"));
    assert_eq!(o[0].images, a[0].images);
    assert_eq!(o[2].image_rels[0], "dev/dev-3-2-img0.png");
    let t = nlvr2::read(&data("nlvr2/train.jsonl"), &ReadOptions::new(""))
        .unwrap()
        .items;
    assert_eq!(
        t[1].image_rels,
        [
            "train/34/train-10171-1-img0.png".to_string(),
            "train/34/train-10171-1-img1.png".to_string()
        ]
    );

    let bad = data("nlvr2/bad.json");
    let e = nlvr2::read(&bad, &ReadOptions::new("")).unwrap_err();
    assert_eq!(where_(&e, "bad.json"), (3, 2, "[1].images".into()));
    let l = nlvr2::read(&bad, &ReadOptions::new("").skipping(true)).unwrap();
    assert_eq!((l.report.kept, l.report.skipped_count()), (1, 3));
    assert!(
        l.report.skipped[1]
            .contains(":4:2: field `[2].label`: expected \"True\" or \"False\", found \"maybe\""),
        "{:?}",
        l.report.skipped
    );
    assert!(
        l.report.skipped[2].contains(":5:2: field `[3].sentence`: missing"),
        "{:?}",
        l.report.skipped
    );
}

#[test]
fn snli_ve_albef_and_official() {
    let a = snli_ve::read(&data("ve/ve_dev.json"), &ReadOptions::new("/f30k"))
        .unwrap()
        .items;
    assert_eq!(a.len(), 4);
    assert_eq!(a[1].label, snli_ve::VeLabel::Contradiction);
    assert_eq!(a[2].label.index(), 1);
    assert_eq!(a[0].image, Path::new("/f30k/2248275918.jpg"));
    let o = snli_ve::read(&data("ve/snli_ve_dev.jsonl"), &ReadOptions::new("/f30k"))
        .unwrap()
        .items;
    assert_eq!(o.len(), 3);
    assert_eq!(o[0].image, a[0].image);
    assert_eq!(o[0].sentence, "Two men are outdoors.");
    assert_eq!(o[2].identifier.as_deref(), Some("2248275918.jpg#1r1n"));
    assert_eq!(
        o.iter().map(|e| e.label.index()).collect::<Vec<_>>(),
        vec![2, 0, 1]
    );

    let bad = data("ve/bad.jsonl");
    let e = snli_ve::read(&bad, &ReadOptions::new("")).unwrap_err();
    let (line, _, field) = where_(&e, "bad.jsonl");
    assert_eq!((line, field.as_str()), (2, "<json>"));
    let l = snli_ve::read(&bad, &ReadOptions::new("").skipping(true)).unwrap();
    assert_eq!(
        (l.report.records, l.report.kept, l.report.skipped_count()),
        (4, 2, 2)
    );
    assert!(l.report.skipped[1].contains("bad.jsonl:3:1: field `gold_label`: expected entailment, neutral or contradiction, found \"maybe\""), "{:?}", l.report.skipped);
}

/// easy-VQA as the PyPI package `easy-vqa` ships it. The counts were obtained once with
/// `python -c "import easy_vqa as e; print(len(e.get_train_questions()[0]), len(e.get_train_image_paths()),
/// len(e.get_test_questions()[0]), len(e.get_test_image_paths()), len(e.get_answers()))"`
/// → 38575 4000 9673 1000 13 (also the package's data/README.md), and the yes/no counts with
/// `collections.Counter` on the answers (train: yes 14229, no 14178; test: yes 3611, no 3525).
#[test]
fn easy_vqa_reads_completely() {
    let ev = easy_vqa::EasyVqa::package().unwrap();
    assert_eq!(ev.answers.len(), 13);
    assert_eq!(ev.answers.answers()[0], "circle");
    assert_eq!(ev.answers.answers()[12], "no");
    for (split, questions, images, yes, no) in [
        (easy_vqa::Split::Train, 38575, 4000, 14229, 14178),
        (easy_vqa::Split::Test, 9673, 1000, 3611, 3525),
    ] {
        let l = ev.read(split, false).unwrap();
        assert_eq!(l.items.len(), questions, "{split:?}");
        assert_eq!(l.report.skipped_count(), 0);
        let files = ev.image_files(split).unwrap();
        assert_eq!(files.len(), images, "{split:?}");
        let ids: std::collections::BTreeSet<u64> = l.items.iter().map(|q| q.image_id).collect();
        assert_eq!(ids.len(), images);
        assert!(ids.iter().copied().eq(files.iter().map(|(id, _)| *id)));
        assert!(l.items.iter().all(|q| q.image.is_file()));
        assert_eq!(l.items.iter().filter(|q| q.answer == "yes").count(), yes);
        assert_eq!(l.items.iter().filter(|q| q.answer == "no").count(), no);
    }
    let first = &ev.read(easy_vqa::Split::Train, false).unwrap().items[0];
    assert_eq!(
        (
            first.question.as_str(),
            first.answer.as_str(),
            first.image_id
        ),
        ("what is the blue shape?", "rectangle", 0)
    );
    assert_eq!(first.label, 7);
    let img = vlp_core::image::load_image(&first.image).unwrap();
    assert_eq!(img.dimensions(), (64, 64));
}

/// Every easy-VQA test question falls in one family of its templates, and each family's answers
/// are of the family's kind (yes/no families: yes or no; colour: a colour; shape: a shape).
#[test]
fn easy_vqa_question_families() {
    use easy_vqa::family_of_text as family;
    for (q, f) in [
        ("what is the blue shape?", Some("shape")),
        ("what color is the triangle?", Some("colour")),
        ("is there a red shape in the image?", Some("yes_no_colour")),
        ("is no gray shape present?", Some("yes_no_colour_not")),
        (
            "does the image not contain a circle",
            Some("yes_no_shape_not"),
        ),
        ("is a rectangle present?", Some("yes_no_shape")),
        ("how many shapes are there?", None),
    ] {
        assert_eq!(family(q), f, "{q}");
    }
    let ev = easy_vqa::EasyVqa::package().unwrap();
    let l = ev.read(easy_vqa::Split::Test, false).unwrap();
    let shapes = ["circle", "rectangle", "triangle"];
    let mut counts = std::collections::BTreeMap::new();
    for q in &l.items {
        let f = family(&q.question).unwrap_or_else(|| panic!("{}: no family", q.question));
        *counts.entry(f).or_insert(0usize) += 1;
        let a = q.answer.as_str();
        let ok = match f {
            "shape" => shapes.contains(&a),
            "colour" => !shapes.contains(&a) && a != "yes" && a != "no",
            _ => a == "yes" || a == "no",
        };
        assert!(ok, "{} -> {a} ({f})", q.question);
    }
    assert!(
        counts.keys().copied().eq(easy_vqa::FAMILIES
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>()),
        "{counts:?}"
    );
    // The negation is read right: an image's colour (from its colour questions) answers its
    // colour yes/no questions, flipped by the negated templates.
    let colour_of: std::collections::BTreeMap<u64, &str> = l
        .items
        .iter()
        .filter(|q| family(&q.question) == Some("colour"))
        .map(|q| (q.image_id, q.answer.as_str()))
        .collect();
    let mut checked = 0;
    for q in &l.items {
        let f = family(&q.question).unwrap();
        if !f.starts_with("yes_no_colour") {
            continue;
        }
        let Some(colour) = colour_of.get(&q.image_id) else {
            continue;
        };
        let asked = q.question.split_whitespace().any(|w| w == *colour);
        let want = if asked != f.ends_with("_not") {
            "yes"
        } else {
            "no"
        };
        assert_eq!(q.answer, want, "{} (image colour {colour})", q.question);
        checked += 1;
    }
    assert!(checked > 4000, "{checked}");
    let yes_no: usize = counts
        .iter()
        .filter(|(k, _)| k.starts_with("yes_no"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(yes_no, 3611 + 3525);
}
