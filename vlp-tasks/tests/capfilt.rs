//! CapFilt on the tiny BLIP fixtures: output format, threshold semantics checked against
//! independently recomputed ITM scores, and generated captions equal to the captioner's own.
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tch::{Device, Kind};
use vlp_core::text::EncodeOptions;
use vlp_models::blip::caption::GenerateOptions;
use vlp_tasks::capfilt::{
    capfilt, read_annotations, summary_path, write_output, CapfiltModels, CapfiltOptions,
    CaptionMode, ITM_MAX_LENGTH,
};
use vlp_tasks::data::karpathy;
use vlp_tasks::data::ReadOptions;

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/blip")
        .join(case)
}

fn models() -> CapfiltModels {
    let c = fixture("captioning_1");
    let r = fixture("retrieval_1");
    CapfiltModels::load(
        &c.join("config.json"),
        &c.join("checkpoint.pth"),
        &r.join("config.json"),
        &r.join("checkpoint.pth"),
        &c.join("vocab.txt"),
        None,
        Device::Cpu,
    )
    .unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vlp-capfilt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("img")).unwrap();
    d
}

/// Four small images and an annotation file with two captions per image (records with one
/// caption each, and one record with a list of two), extra fields included.
fn write_data(dir: &Path) -> PathBuf {
    for k in 0..4u32 {
        let img = image::RgbImage::from_fn(40, 30, |x, y| {
            image::Rgb([
                ((x * 6 + k * 50) % 256) as u8,
                ((y * 8 + k * 70) % 256) as u8,
                ((x * y + k * 30) % 256) as u8,
            ])
        });
        img.save(dir.join(format!("img/{k}.png"))).unwrap();
    }
    let ann = json!([
        {"image": "img/0.png", "caption": "a dog on the grass", "image_id": "i0", "extra": 1},
        {"image": "img/0.png", "caption": "a cat on the sofa", "image_id": "i0", "extra": 2},
        {"image": "img/1.png", "caption": "a man riding a horse", "image_id": "i1"},
        {"image": "img/1.png", "caption": "two people in the park", "image_id": "i1"},
        {"image": "img/2.png", "caption": ["a red car on the street", "a black and white dog"]},
        {"image": "img/3.png", "caption": "a woman holding a ball", "image_id": 3},
        {"image": "img/3.png", "caption": "a small tree next to the water", "image_id": 3},
    ]);
    let p = dir.join("ann.json");
    std::fs::write(&p, serde_json::to_string(&ann).unwrap()).unwrap();
    p
}

fn opts(threshold: f64) -> CapfiltOptions {
    CapfiltOptions {
        mode: CaptionMode::Beam {
            num_beams: 3,
            max_length: 20,
            min_length: 5,
        },
        prompt: "a picture of ".into(),
        threshold,
        batch: 3,
        progress: false,
    }
}

/// ITM probability of `caption` against an image file, through the model API only.
fn independent_score(m: &CapfiltModels, image: &Path, caption: &str) -> f64 {
    let img = m
        .filter_transform
        .apply_path(image, &mut rand::thread_rng())
        .unwrap()
        .unsqueeze(0);
    let b = m
        .tokenizer
        .encode_batch(&[caption], &EncodeOptions::longest(ITM_MAX_LENGTH))
        .unwrap();
    let logits = tch::no_grad(|| {
        m.filter
            .itm_cls(&img, &b.input_ids, &b.attention_mask)
            .unwrap()
    });
    logits.softmax(-1, Kind::Float).double_value(&[0, 1])
}

#[test]
fn capfilt_on_fixture_models() {
    let dir = temp_dir("main");
    let ann = write_data(&dir);
    let (entries, raw) = read_annotations(&ann, &dir).unwrap();
    let mut m = models();

    // threshold 0 keeps everything: 8 originals + 1 synthetic per image
    let all = capfilt(&mut m, &entries, &raw, &opts(0.0)).unwrap();
    assert_eq!(all.summary.images, 4);
    assert_eq!(all.records.len(), 8 + 4);
    assert_eq!(all.summary.originals_kept, 8);
    assert_eq!(all.summary.synthetic_kept, 4);
    assert_eq!(
        all.summary.originals_removed + all.summary.synthetic_removed,
        0
    );

    // the synthetic captions are the captioner's own generate
    let prompt = m
        .captioner
        .prompt_ids(&m.tokenizer, "a picture of ")
        .unwrap();
    let gopts = GenerateOptions {
        num_beams: 3,
        max_length: 20,
        min_length: 5,
        ..m.captioner.generate_options()
    };
    for (k, (rel, cap)) in all.synthetic.iter().enumerate() {
        assert_eq!(rel, &format!("img/{k}.png"));
        let img = m
            .captioner_transform
            .apply_path(dir.join(rel), &mut rand::thread_rng())
            .unwrap()
            .unsqueeze(0);
        let ids = tch::no_grad(|| m.captioner.generate(&img, &prompt, &gopts).unwrap());
        let want = m.captioner.captions(&m.tokenizer, &ids).unwrap();
        assert_eq!(cap, &want[0], "image {rel}");
    }

    // a threshold between the scores so that some captions are kept and some removed
    let mut scores: Vec<f64> = all.scored.iter().map(|s| s.score).collect();
    scores.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mid = scores.len() / 2;
    assert!(scores[mid - 1] < scores[mid], "scores tie: {scores:?}");
    let thr = (scores[mid - 1] + scores[mid]) / 2.0;
    let out = capfilt(&mut m, &entries, &raw, &opts(thr)).unwrap();
    let kept: Vec<_> = out.scored.iter().filter(|s| s.kept).collect();
    let removed: Vec<_> = out.scored.iter().filter(|s| !s.kept).collect();
    assert!(!kept.is_empty() && !removed.is_empty());
    assert!(kept.iter().all(|s| s.score >= thr));
    assert!(removed.iter().all(|s| s.score < thr));
    assert_eq!(out.records.len(), kept.len());
    let s = &out.summary;
    assert_eq!(s.originals_kept + s.synthetic_kept, kept.len());
    assert_eq!(s.originals_removed + s.synthetic_removed, removed.len());
    assert_eq!(s.originals_kept + s.originals_removed, 8);
    assert_eq!(s.synthetic_kept + s.synthetic_removed, 4);
    for sc in [kept[0], removed[0]] {
        let got = independent_score(&m, &entries[sc.record].image, &sc.caption);
        assert!(
            (got - sc.score).abs() < 1e-5,
            "{}: {got} vs {}",
            sc.caption,
            sc.score
        );
        assert_eq!(got >= thr, sc.kept);
    }

    // the output parses in the same format, other fields kept
    let path = dir.join("out.json");
    write_output(&path, &out).unwrap();
    let back = karpathy::read(&path, &ReadOptions::new(&dir))
        .unwrap()
        .items;
    assert_eq!(back.len(), kept.len());
    for (e, sc) in back.iter().zip(&kept) {
        assert_eq!(e.captions, vec![sc.caption.clone()]);
        assert_eq!(e.image_rel, entries[sc.record].image_rel);
        assert_eq!(e.image_id, entries[sc.record].image_id);
    }
    let recs: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (r, sc) in recs.iter().zip(&kept) {
        let src = raw[sc.record].as_object().unwrap();
        for (k, v) in src {
            if k != "caption" {
                assert_eq!(&r[k], v, "field {k}");
            }
        }
    }
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(summary_path(&path)).unwrap()).unwrap();
    assert_eq!(summary["images"], 4);
    assert_eq!(summary["originals_kept"], s.originals_kept);
    assert_eq!(summary["synthetic_removed"], s.synthetic_removed);

    // threshold above 1 keeps nothing
    let none = capfilt(&mut m, &entries, &raw, &opts(1.01)).unwrap();
    assert!(none.records.is_empty());
    assert_eq!(none.summary.originals_removed, 8);
    assert_eq!(none.summary.synthetic_removed, 4);
    // the synthetic captions do not depend on the batch size
    let one = capfilt(
        &mut m,
        &entries,
        &raw,
        &CapfiltOptions {
            batch: 1,
            ..opts(1.01)
        },
    )
    .unwrap();
    assert_eq!(one.synthetic, none.synthetic);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_image_is_named() {
    let dir = temp_dir("missing");
    let ann = write_data(&dir);
    std::fs::remove_file(dir.join("img/2.png")).unwrap();
    let (entries, raw) = read_annotations(&ann, &dir).unwrap();
    let mut m = models();
    let err = capfilt(&mut m, &entries, &raw, &opts(0.5))
        .unwrap_err()
        .to_string();
    assert!(err.contains("2.png"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_annotation_is_named() {
    let dir = temp_dir("bad");
    let p = dir.join("bad.json");
    std::fs::write(&p, r#"[{"image": "img/0.png", "caption": ""}]"#).unwrap();
    let err = read_annotations(&p, &dir).unwrap_err().to_string();
    assert!(err.contains("bad.json") && err.contains("caption"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
