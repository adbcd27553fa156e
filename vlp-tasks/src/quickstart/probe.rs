//! A zero-shot **grounding probe** of a pre-trained ALBEF: does pre-training tie the words of a
//! caption to what the image shows?
//!
//! For every easy-VQA test image whose colour and shape its questions state
//! ([`easy_vqa_attributes`]), the model picks one of a few captions that differ in one word only:
//! "a {colour} {s}" for each of the shapes (the *shape* probe, chance one in three) and
//! "a {c} {shape}" for each of the colours (the *colour* probe, chance one in eight). The pick
//! is made twice, with no training: by ITM (the fusion encoder's match probability, what ITM
//! teaches) and by ITC (the cosine similarity of the unimodal features). A yes/no question such
//! as "is there a circle?" needs the shape probe's skill: a model that cannot pick "a red
//! circle" over "a red triangle" answers such questions from the text alone.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};
use vlp_core::image::ImageTransform;
use vlp_core::{Result, VlpError};
use vlp_models::albef::retrieval::AlbefRetrieval;
use vlp_models::VlpModel;

use super::runner::{easy_vqa_answer_type, easy_vqa_attributes};
use crate::data::easy_vqa::EasyVqaQuestion;
use crate::data::loader::stack_images;
use crate::pipeline::albef::TextEncoder;

/// One probe question: an image, the captions to choose from, the index of the true one.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeItem {
    /// The image file.
    pub image: PathBuf,
    /// Candidate captions (at least two).
    pub captions: Vec<String>,
    /// Index of the caption that describes the image.
    pub truth: usize,
}

/// What the probe measured (accuracies in percent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroundingProbe {
    /// easy-VQA test images probed.
    pub images: usize,
    /// Shape probe, picked by ITM.
    pub shape_itm: f64,
    /// Shape probe, picked by ITC.
    pub shape_itc: f64,
    /// Chance level of the shape probe (100 / number of shapes).
    pub shape_chance: f64,
    /// Colour probe, picked by ITM.
    pub colour_itm: f64,
    /// Colour probe, picked by ITC.
    pub colour_itc: f64,
    /// Chance level of the colour probe (100 / number of colours).
    pub colour_chance: f64,
}

/// The shape and colour probe items of easy-VQA questions (`answers`: the answer list, whose
/// shape and colour answers are the candidates); images whose colour or shape is unknown are
/// left out. Returns `(shape items, colour items)`.
pub fn easy_vqa_probe_items(
    questions: &[EasyVqaQuestion],
    answers: &[String],
) -> (Vec<ProbeItem>, Vec<ProbeItem>) {
    let of_type = |t: &str| -> Vec<&str> {
        answers
            .iter()
            .map(String::as_str)
            .filter(|a| easy_vqa_answer_type(a) == t)
            .collect()
    };
    let (shapes, colours) = (of_type("shape"), of_type("color"));
    let mut by_shape = Vec::new();
    let mut by_colour = Vec::new();
    for (image, (colour, shape)) in easy_vqa_attributes(questions, answers) {
        let (Some(c), Some(s)) = (colour, shape) else {
            continue;
        };
        let item = |names: &[&str], truth: &str, caption: &dyn Fn(&str) -> String| {
            names.iter().position(|n| *n == truth).map(|t| ProbeItem {
                image: image.clone(),
                captions: names.iter().map(|n| caption(n)).collect(),
                truth: t,
            })
        };
        by_shape.extend(item(&shapes, &s, &|x| format!("a {c} {x}")));
        by_colour.extend(item(&colours, &c, &|x| format!("a {x} {s}")));
    }
    (by_shape, by_colour)
}

/// Percent of `items` whose true caption the model ranks first, `(by ITM, by ITC)`; images are
/// encoded `batch` at a time. Call on a model in evaluation mode.
pub fn score_items(
    m: &AlbefRetrieval,
    enc: &TextEncoder,
    transform: &ImageTransform,
    items: &[ProbeItem],
    batch: usize,
) -> Result<(f64, f64)> {
    if items.is_empty() {
        return Err(VlpError::Msg("grounding probe: no items".into()));
    }
    let dev = m.var_store().device();
    let mut rng = StdRng::seed_from_u64(0);
    let (mut itm_right, mut itc_right) = (0usize, 0usize);
    tch::no_grad(|| -> Result<()> {
        for chunk in items.chunks(batch.max(1)) {
            let imgs = chunk
                .iter()
                .map(|it| transform.apply_path(&it.image, &mut rng))
                .collect::<Result<Vec<_>>>()?;
            let (img_emb, img_feat) = m.image_features(&stack_images(imgs)?.to_device(dev))?;
            let mut texts: Vec<&str> = Vec::new();
            let mut rows: Vec<i64> = Vec::new();
            for (i, it) in chunk.iter().enumerate() {
                for c in &it.captions {
                    texts.push(c);
                    rows.push(i as i64);
                }
            }
            let (ids, mask) = enc.encode(&texts)?;
            let (ids, mask) = (ids.to_device(dev), mask.to_device(dev));
            let (txt_emb, txt_feat) = m.text_features(&ids, &mask)?;
            let rows_t = Tensor::from_slice(&rows).to_device(dev);
            let itm = m
                .itm_logits(&txt_emb, &mask, &img_emb.index_select(0, &rows_t))
                .softmax(-1, Kind::Float)
                .select(1, 1);
            let itc = (img_feat.index_select(0, &rows_t) * &txt_feat).sum_dim_intlist(
                -1,
                false,
                Kind::Float,
            );
            let itm = Vec::<f32>::try_from(itm.to_device(tch::Device::Cpu))?;
            let itc = Vec::<f32>::try_from(itc.to_device(tch::Device::Cpu))?;
            let mut at = 0;
            for it in chunk {
                let n = it.captions.len();
                let best =
                    |xs: &[f32]| (0..n).max_by(|&a, &b| xs[a].total_cmp(&xs[b])).unwrap_or(0);
                itm_right += usize::from(best(&itm[at..at + n]) == it.truth);
                itc_right += usize::from(best(&itc[at..at + n]) == it.truth);
                at += n;
            }
        }
        Ok(())
    })?;
    let pct = |k: usize| 100.0 * k as f64 / items.len() as f64;
    Ok((pct(itm_right), pct(itc_right)))
}

/// Runs both probes on easy-VQA's test split (`easy`: its data directory).
pub fn easy_vqa_probe(
    m: &AlbefRetrieval,
    enc: &TextEncoder,
    transform: &ImageTransform,
    easy: &Path,
) -> Result<GroundingProbe> {
    let ds = crate::data::easy_vqa::EasyVqa::open(easy)?;
    let questions = ds.read(crate::data::easy_vqa::Split::Test, false)?.items;
    let (shape, colour) = easy_vqa_probe_items(&questions, ds.answers.answers());
    let (shape_itm, shape_itc) = score_items(m, enc, transform, &shape, 32)?;
    let (colour_itm, colour_itc) = score_items(m, enc, transform, &colour, 32)?;
    let chance =
        |items: &[ProbeItem]| 100.0 / items.first().map_or(1, |it| it.captions.len()).max(1) as f64;
    let images: BTreeMap<&Path, ()> = shape.iter().map(|it| (it.image.as_path(), ())).collect();
    Ok(GroundingProbe {
        images: images.len(),
        shape_itm,
        shape_itc,
        shape_chance: chance(&shape),
        colour_itm,
        colour_itc,
        colour_chance: chance(&colour),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quickstart::runner::tests::q;

    #[test]
    fn probe_items_vary_one_word_and_mark_the_truth() {
        let answers: Vec<String> = ["yes", "no", "circle", "triangle", "red", "blue", "green"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let qs = vec![
            q("a.png", "what shape is this?", "triangle"),
            q("a.png", "what color is the shape?", "blue"),
            // Only the shape is known: no item.
            q("b.png", "what shape is this?", "circle"),
        ];
        let (shape, colour) = easy_vqa_probe_items(&qs, &answers);
        assert_eq!(shape.len(), 1);
        assert_eq!(shape[0].captions, ["a blue circle", "a blue triangle"]);
        assert_eq!(shape[0].truth, 1);
        assert_eq!(colour.len(), 1);
        assert_eq!(
            colour[0].captions,
            ["a red triangle", "a blue triangle", "a green triangle"]
        );
        assert_eq!(colour[0].truth, 1);
        assert_eq!(colour[0].image, PathBuf::from("a.png"));
    }
}
