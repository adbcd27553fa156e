//! BLIP: parity with the official code on the fixture cases, and the behaviours the fixtures do
//! not cover (batch of one, resolution change at load time, strict-load errors, the tied
//! pretraining decoder, NLVR2's key duplication, incremental decoding).
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};
use vlp_core::checkpoint::{
    load_state_dict, read_state_dict, LoadMode, ReadOptions, StateDict, Wrapper,
};
use vlp_core::generation::IncrementalDecoder;
use vlp_core::layers::vit::interpolate_pos_embed;
use vlp_models::blip::caption::{GenerateOptions, MedDecoder};
use vlp_models::blip::pretrain::PretrainBatch;
use vlp_models::blip::{
    BlipConfig, BlipDecoder, BlipItm, BlipNlvr, BlipPretrain, BlipRetrieval, BlipTokens, BlipVqa,
};
use vlp_models::parity::{run_case, ParityOptions};
use vlp_models::{Tensors, VlpModel};

fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/blip")
        .join(case)
}

fn config_json(case: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(case_dir(case).join("config.json")).unwrap())
        .unwrap()
}

fn config(case: &str) -> BlipConfig {
    BlipConfig::from_json(&config_json(case)).unwrap()
}

fn manifest(case: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(case_dir(case).join("MANIFEST.json")).unwrap())
        .unwrap()
}

fn checkpoint(case: &str) -> StateDict {
    let opts = ReadOptions {
        wrapper: Wrapper::Key("model".into()),
        ..Default::default()
    };
    read_state_dict(&case_dir(case).join("checkpoint.pth"), &opts).unwrap()
}

fn tensors(case: &str, file: &str) -> Tensors {
    Tensor::read_safetensors(case_dir(case).join(file))
        .unwrap()
        .into_iter()
        .collect()
}

fn load(model: &mut dyn VlpModel, sd: StateDict) {
    let sd = model.adapt_state_dict(sd).unwrap();
    load_state_dict(model.var_store_mut(), &sd, LoadMode::Strict, "test").unwrap();
}

fn assert_case_passes(case: &str) {
    let out = run_case(&case_dir(case), &ParityOptions::default());
    assert!(out.skipped.is_none(), "{case} skipped: {:?}", out.skipped);
    assert_eq!(out.probes.len(), out.num_probes);
    let mut worst = 0f64;
    for p in &out.probes {
        assert!(
            p.ok,
            "{case}: probe {} failed: {} (max diff {:?})",
            p.probe, p.note, p.max_abs_diff
        );
        worst = worst.max(p.max_abs_diff.unwrap_or(0.0));
    }
    println!(
        "{case}: {} probes, max abs diff {worst:.3e}",
        out.probes.len()
    );
}

#[test]
fn parity_pretrain_1() {
    assert_case_passes("pretrain_1");
}

#[test]
fn parity_retrieval_1() {
    assert_case_passes("retrieval_1");
}

#[test]
fn parity_nlvr2_1() {
    assert_case_passes("nlvr2_1");
}

#[test]
fn parity_vqa_1() {
    assert_case_passes("vqa_1");
}

#[test]
fn parity_captioning_1() {
    assert_case_passes("captioning_1");
}

/// The first row of every named tensor whose first dimension is `b` (other tensors kept).
fn first_rows(t: &Tensors, names: &[&str], n: i64) -> Tensors {
    t.iter()
        .map(|(k, v)| {
            let v = if names.contains(&k.as_str()) {
                v.narrow(0, 0, n)
            } else {
                v.shallow_clone()
            };
            (k.clone(), v)
        })
        .collect()
}

fn close(a: &Tensor, b: &Tensor, tol: f64) -> bool {
    a.size() == b.size()
        && (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[])
            <= tol
}

#[test]
fn batch_of_one_matches_the_first_row_of_the_batch() {
    // retrieval: BLIP_ITM heads per row
    let mut r = BlipRetrieval::new(&config("retrieval_1"), Device::Cpu).unwrap();
    load(&mut r, checkpoint("retrieval_1"));
    let inp = tensors("retrieval_1", "inputs.safetensors");
    let full = r.forward_named(&inp, &manifest("retrieval_1")).unwrap();
    let one = first_rows(
        &inp,
        &["image", "input_ids", "attention_mask", "itm_enc_input_ids"],
        1,
    );
    let one: Tensors = one
        .into_iter()
        .filter(|(k, _)| !k.starts_with("itm_pair") && !k.starts_with("gallery"))
        .collect();
    let o = r.forward_named(&one, &serde_json::json!({})).unwrap();
    assert!(close(
        &o["itm_logits_cls"],
        &full["itm_logits_cls"].narrow(0, 0, 1),
        1e-5
    ));
    assert!(close(
        &o["itc_sim"],
        &full["itc_sim"].narrow(0, 0, 1).narrow(1, 0, 1),
        1e-5
    ));

    // captioning: loss of one caption, generation of one image
    let mut c = BlipDecoder::new(&config("captioning_1"), Device::Cpu).unwrap();
    load(&mut c, checkpoint("captioning_1"));
    let inp = tensors("captioning_1", "inputs.safetensors");
    let man = manifest("captioning_1");
    let want = tensors("captioning_1", "outputs.safetensors");
    let one = first_rows(
        &inp,
        &[
            "image",
            "input_ids",
            "attention_mask",
            "labels",
            "generate_input_ids",
        ],
        1,
    );
    let o = c.forward_named(&one, &man).unwrap();
    assert!(close(
        &o["decoder_logits"],
        &want["decoder_logits"].narrow(0, 0, 1),
        1e-4
    ));
    let g = &o["generated_ids"];
    let w = want["generated_ids"].narrow(0, 0, 1);
    // a row of the batch may be padded further than the same row alone
    assert!(g.equal(&w.narrow(1, 0, g.size()[1])), "{g:?} vs {w:?}");

    // VQA ranking of one question
    let mut v = BlipVqa::new(&config("vqa_1"), Device::Cpu).unwrap();
    load(&mut v, checkpoint("vqa_1"));
    let inp = tensors("vqa_1", "inputs.safetensors");
    let want = tensors("vqa_1", "outputs.safetensors");
    let mut one = first_rows(
        &inp,
        &["image", "question_input_ids", "question_attention_mask"],
        1,
    );
    for k in [
        "answer_input_ids",
        "answer_attention_mask",
        "answer_weights",
        "answers_per_question",
    ] {
        one.remove(k);
    }
    let o = v.forward_named(&one, &manifest("vqa_1")).unwrap();
    assert!(o["rank_max_ids"].equal(&want["rank_max_ids"].narrow(0, 0, 1)));
    assert!(close(
        &o["rank_answer_loss"],
        &want["rank_answer_loss"].narrow(0, 0, 1),
        1e-4
    ));

    // pretraining with one pair: no negative exists; the ITM loss keeps the positive row only
    let mut p = BlipPretrain::new(&config("pretrain_1"), Device::Cpu).unwrap();
    load(&mut p, checkpoint("pretrain_1"));
    let inp = tensors("pretrain_1", "inputs.safetensors");
    let (image, ids, mask) = (
        inp["image"].narrow(0, 0, 1),
        inp["input_ids"].narrow(0, 0, 1),
        inp["attention_mask"].narrow(0, 0, 1),
    );
    let batch = PretrainBatch {
        image: &image,
        input_ids: &ids,
        attention_mask: &mask,
        encoder_input_ids: None,
        decoder_input_ids: None,
    };
    let out = tch::no_grad(|| p.forward(&batch, 0.4, None)).unwrap();
    for l in [&out.loss_ita, &out.loss_itm, &out.loss_lm] {
        assert!(l.double_value(&[]).is_finite());
    }
    assert!(!out.negatives.all_valid());
    assert_eq!(
        p.queue_ptr.int64_value(&[0]),
        3,
        "pointer 2 advanced by one"
    );
}

#[test]
fn strict_load_names_the_offending_key() {
    let mut m = BlipPretrain::new(&config("pretrain_1"), Device::Cpu).unwrap();
    let mut sd = checkpoint("pretrain_1");
    let key = "text_decoder.bert.encoder.layer.1.attention.self.query.weight";
    let _ = sd.remove(key).unwrap();
    sd.insert(
        "text_decoder.bert.pooler.dense.weight",
        Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)),
    );
    let sd = m.adapt_state_dict(sd).unwrap();
    let err = load_state_dict(m.var_store_mut(), &sd, LoadMode::Strict, "ckpt")
        .unwrap_err()
        .to_string();
    assert!(err.contains(key), "{err}");
    assert!(
        err.contains("text_decoder.bert.pooler.dense.weight"),
        "{err}"
    );

    // a tied copy that differs from the encoder's is refused, naming both
    let mut sd = checkpoint("pretrain_1");
    let k = "text_decoder.bert.encoder.layer.0.crossattention.self.key.weight";
    let t = sd.get(k).unwrap() + 1.0;
    sd.insert(k, t);
    let err = m.adapt_state_dict(sd).unwrap_err().to_string();
    assert!(
        err.contains(k)
            && err.contains("text_encoder.encoder.layer.0.crossattention.self.key.weight"),
        "{err}"
    );
}

#[test]
fn pretrain_decoder_is_tied_to_the_encoder_except_self_attention() {
    let mut m = BlipPretrain::new(&config("pretrain_1"), Device::Cpu).unwrap();
    load(&mut m, checkpoint("pretrain_1"));
    let vars = m.var_store().variables();
    let same = |a: &str, b: &str| vars[a].data_ptr() == vars[b].data_ptr();
    for rest in [
        "embeddings.word_embeddings.weight",
        "embeddings.LayerNorm.bias",
        "encoder.layer.1.crossattention.self.value.weight",
        "encoder.layer.1.crossattention.output.LayerNorm.weight",
        "encoder.layer.0.intermediate.dense.weight",
        "encoder.layer.0.output.LayerNorm.bias",
    ] {
        assert!(
            same(
                &format!("text_encoder.{rest}"),
                &format!("text_decoder.bert.{rest}")
            ),
            "{rest} not tied"
        );
    }
    for rest in [
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.1.attention.output.dense.bias",
        "embeddings.position_ids",
    ] {
        assert!(
            !same(
                &format!("text_encoder.{rest}"),
                &format!("text_decoder.bert.{rest}")
            ),
            "{rest} tied"
        );
    }
    assert!(same(
        "text_encoder.embeddings.word_embeddings.weight",
        "text_decoder.cls.predictions.decoder.weight"
    ));
    assert!(same(
        "text_decoder.cls.predictions.bias",
        "text_decoder.cls.predictions.decoder.bias"
    ));
    // each tensor is trainable once
    let trainable = m.var_store().trainable_variables();
    let ptrs: std::collections::HashSet<usize> =
        trainable.iter().map(|t| t.data_ptr() as usize).collect();
    assert_eq!(ptrs.len(), trainable.len());
    // gradients of the LM loss reach the encoder's (shared) cross-attention
    let inp = tensors("pretrain_1", "inputs.safetensors");
    let batch = PretrainBatch {
        image: &inp["image"],
        input_ids: &inp["input_ids"],
        attention_mask: &inp["attention_mask"],
        encoder_input_ids: None,
        decoder_input_ids: None,
    };
    let neg = vlp_objectives::itm::NegativeDraws::from_indices(
        inp["itm_neg_image_idx"].copy(),
        inp["itm_neg_text_idx"].copy(),
    );
    let out = m.forward(&batch, 0.4, Some(neg)).unwrap();
    out.loss_lm.backward();
    let g = vars["text_encoder.encoder.layer.1.crossattention.self.value.weight"].grad();
    assert!(g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0);
}

#[test]
fn checkpoint_at_32px_loads_into_a_48px_model() {
    let mut j = config_json("retrieval_1");
    j["vision"]["img_size"] = 48.into();
    j["image_size"] = 48.into();
    let mut m = BlipRetrieval::new(&BlipConfig::from_json(&j).unwrap(), Device::Cpu).unwrap();
    let sd = checkpoint("retrieval_1");
    let pe = sd.get("visual_encoder.pos_embed").unwrap().copy();
    let pe_m = sd.get("visual_encoder_m.pos_embed").unwrap().copy();
    assert_eq!(pe.size(), [1, 5, 64]);
    load(&mut m, sd);
    let vars = m.var_store().variables();
    for (k, src) in [
        ("visual_encoder.pos_embed", &pe),
        ("visual_encoder_m.pos_embed", &pe_m),
    ] {
        assert_eq!(vars[k].size(), [1, 10, 64]);
        assert!(
            close(&vars[k], &interpolate_pos_embed(src, 1, (3, 3)), 0.0),
            "{k}"
        );
    }
    // reference: torch F.interpolate(bicubic, align_corners=False) as models/vit.py calls it
    let got = &vars["visual_encoder.pos_embed"];
    assert!((got.sum(Kind::Double).double_value(&[]) - -1.4535202980041504).abs() < 1e-5);
    assert!((got.abs().sum(Kind::Double).double_value(&[]) - 16.513545989990234).abs() < 1e-5);
    let row = Tensor::from_slice(&[0.008_973_641f32, 0.040_485_688, -0.012_971_778]);
    assert!(close(&got.get(0).get(4).narrow(0, 0, 3), &row, 1e-6));
    assert!(
        close(
            &vars["visual_encoder.pos_embed"].narrow(1, 0, 1),
            &pe.narrow(1, 0, 1),
            0.0
        ),
        "class token kept"
    );
    let img = Tensor::randn([2, 3, 48, 48], (Kind::Float, Device::Cpu));
    let (emb, feat) = tch::no_grad(|| m.image_features(&img)).unwrap();
    assert_eq!(emb.size(), [2, 10, 64]);
    assert_eq!(feat.size(), [2, 16]);
}

#[test]
fn nlvr2_duplicates_plain_cross_attention_keys_of_a_pretraining_checkpoint() {
    // an NLVR2 model of the pretraining case's sizes (2 layers: no merge_layer; cls_head keeps
    // its initial values, as the official strict=False load leaves it)
    let mut j = config_json("pretrain_1");
    j["med"]["vocab_size"] = 66.into();
    j["med"]["num_hidden_layers"] = 2.into();
    let j = serde_json::json!({"med": j["med"], "vision": j["vision"]});
    let mut m = BlipNlvr::new(&BlipConfig::from_json(&j).unwrap(), Device::Cpu).unwrap();
    let sd = checkpoint("pretrain_1");
    let src = sd
        .get("text_encoder.encoder.layer.1.crossattention.self.key.weight")
        .unwrap()
        .copy();
    let dense = sd
        .get("text_encoder.encoder.layer.0.crossattention.output.dense.bias")
        .unwrap()
        .copy();
    load(&mut m, sd);
    let vars = m.var_store().variables();
    for tw in ["self0", "self1"] {
        assert!(
            vars[&format!("text_encoder.encoder.layer.1.crossattention.{tw}.key.weight")]
                .equal(&src)
        );
    }
    for tw in ["dense0", "dense1"] {
        assert!(
            vars[&format!("text_encoder.encoder.layer.0.crossattention.output.{tw}.bias")]
                .equal(&dense)
        );
    }
    let inp = tensors("nlvr2_1", "inputs.safetensors");
    let img = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    let out = tch::no_grad(|| m.forward(&img, &inp["input_ids"], &inp["attention_mask"])).unwrap();
    assert_eq!(out.logits.size(), [2, 2]);
}

#[test]
fn incremental_decoding_matches_the_full_decoder() {
    let mut c = BlipDecoder::new(&config("captioning_1"), Device::Cpu).unwrap();
    load(&mut c, checkpoint("captioning_1"));
    let inp = tensors("captioning_1", "inputs.safetensors");
    let ids = &inp["input_ids"];
    let ones = ids.ones_like();
    tch::no_grad(|| {
        let img = c.visual_encoder.forward_t(&inp["image"], false);
        let full = c.text_decoder.logits(ids, &ones, &img, None, false);
        let mut dec = MedDecoder::new(&c.text_decoder, &img, None);
        let first = dec.step(&ids.narrow(1, 0, 4)).unwrap();
        assert!(close(&first, &full.select(1, 3), 1e-5));
        for t in 4..ids.size()[1] {
            let l = dec.step(&ids.narrow(1, t, 1)).unwrap();
            assert!(close(&l, &full.select(1, t), 1e-5), "step {t}");
        }
        // reordering swaps the rows of everything cached
        let mut dec = MedDecoder::new(&c.text_decoder, &img, None);
        let _ = dec.step(&ids.narrow(1, 0, 5)).unwrap();
        dec.reorder(&Tensor::from_slice(&[1i64, 0])).unwrap();
        let l = dec.step(&ids.narrow(1, 5, 1).flip([0])).unwrap();
        assert!(close(&l, &full.select(1, 5).flip([0]), 1e-5));
    });
}

#[test]
fn greedy_captioning_is_the_argmax_of_the_full_decoder() {
    let mut c = BlipDecoder::new(&config("captioning_1"), Device::Cpu).unwrap();
    load(&mut c, checkpoint("captioning_1"));
    let inp = tensors("captioning_1", "inputs.safetensors");
    let prompt = &inp["generate_input_ids"];
    let opts = GenerateOptions {
        num_beams: 1,
        max_length: 9,
        min_length: 0,
        repetition_penalty: 1.0,
        eos: -1,
        pad: 0,
    };
    tch::no_grad(|| {
        let got = c.generate(&inp["image"], prompt, &opts).unwrap();
        let img = c.visual_encoder.forward_t(&inp["image"], false);
        let mut seq = prompt.copy();
        while seq.size()[1] < 9 {
            let logits = c
                .text_decoder
                .logits(&seq, &seq.ones_like(), &img, None, false);
            let next = logits.select(1, seq.size()[1] - 1).argmax(1, true);
            seq = Tensor::cat(&[seq, next], 1);
        }
        assert!(got.equal(&seq), "{got:?} vs {seq:?}");
    });
}

#[test]
fn vqa_generates_from_dec() {
    let mut v = BlipVqa::new(&config("vqa_1"), Device::Cpu).unwrap();
    load(&mut v, checkpoint("vqa_1"));
    let inp = tensors("vqa_1", "inputs.safetensors");
    let ids = tch::no_grad(|| {
        let (_, states) = v
            .encode(
                &inp["image"],
                &inp["question_input_ids"],
                &inp["question_attention_mask"],
            )
            .unwrap();
        v.generate(&states, &v.generate_options()).unwrap()
    });
    assert_eq!(ids.size()[0], 2);
    assert!(ids.size()[1] <= 10);
    assert!(ids.select(1, 0).eq(v.tokens.bos).all().int64_value(&[]) == 1);
}

#[test]
fn config_defaults_are_blip_base_and_unknown_keys_fail() {
    let c = BlipConfig::default();
    assert_eq!(c.vit_for("retrieval", false).img_size, 384);
    assert_eq!(c.vit_for("pretrain", false).embed_dim, 768);
    assert_eq!(c.vit_for("vqa", false).drop_path_rate, 0.1);
    assert_eq!(
        (c.embed_dim, c.queue_size, c.text_vocab(false)),
        (256, 57600, 30524)
    );
    assert_eq!(
        c.tokens(false),
        BlipTokens {
            pad: 0,
            cls: 101,
            sep: 102,
            bos: 30522,
            enc: 30523
        }
    );
    let large =
        BlipConfig::from_json(&serde_json::json!({"vit": "large", "image_size": 384})).unwrap();
    let v = large.vit_for("captioning", false);
    assert_eq!(
        (v.embed_dim, v.depth, v.num_heads, v.drop_path_rate),
        (1024, 24, 16, 0.1)
    );
    let err = BlipConfig::from_json(&serde_json::json!({"queue_szie": 3})).unwrap_err();
    assert!(err.to_string().contains("queue_szie"), "{err}");
    let tok = BlipTokens::from_vocab_file(&case_dir("captioning_1").join("vocab.txt")).unwrap();
    assert_eq!(
        tok,
        BlipTokens {
            pad: 0,
            cls: 2,
            sep: 3,
            bos: 64,
            enc: 65
        }
    );
    assert_eq!(config("captioning_1").tokens(false), tok);
}

#[test]
fn parity_hf_retrieval_1() {
    assert_case_passes("hf_retrieval_1");
}

#[test]
fn parity_hf_captioning_1() {
    assert_case_passes("hf_captioning_1");
}

#[test]
fn blip_itm_loads_a_retrieval_checkpoint_and_matches_its_probes() {
    // blip_itm(pretrained=<retrieval checkpoint>): the momentum copies and queues are dropped
    let mut m = BlipItm::new(&config("retrieval_1"), Device::Cpu).unwrap();
    load(&mut m, checkpoint("retrieval_1"));
    let out = m
        .forward_named(
            &tensors("retrieval_1", "inputs.safetensors"),
            &manifest("retrieval_1"),
        )
        .unwrap();
    let want = tensors("retrieval_1", "outputs.safetensors");
    for (k, w) in &want {
        assert!(close(&out[k], w, 1e-4), "{k}");
    }
}

#[test]
fn hf_checkpoint_loads_into_the_original_layout_and_back() {
    use vlp_models::blip::hf::{original_key_to_hf, HfBlipRetrieval};
    let dir = case_dir("hf_retrieval_1");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let mut m = HfBlipRetrieval::from_hf_config(&cfg, Device::Cpu).unwrap();
    // the HF defaults the config relies on
    assert_eq!(m.inner.visual_encoder.cfg.layer_norm_eps, 1e-5);
    assert_eq!(m.inner.text_encoder.cfg.num_attention_heads, 8);
    let sd = read_state_dict(&dir.join("model.safetensors"), &ReadOptions::default()).unwrap();
    let n = sd.len();
    let hf = sd
        .get("vision_model.encoder.layers.1.self_attn.projection.weight")
        .unwrap()
        .copy();
    load(&mut m, sd);
    let vars = m.var_store().variables();
    assert!(vars["visual_encoder.blocks.1.attn.proj.weight"].equal(&hf));
    // every variable but the position_ids buffer maps back to an HF key
    let mapped = vars.keys().filter_map(|k| original_key_to_hf(k)).count();
    assert_eq!(mapped, n);
}

#[test]
fn a_pretraining_checkpoint_loads_into_vqa_and_captioning() {
    // model_base.pth-style: the fine-tuning classes keep the ViT, encoder and/or decoder
    let mut j = config_json("pretrain_1");
    j["med"]["vocab_size"] = 66.into();
    let j = serde_json::json!({"med": j["med"], "vision": j["vision"]});
    let cfg = BlipConfig::from_json(&j).unwrap();
    let sd = checkpoint("pretrain_1");
    let dec_q = sd
        .get("text_decoder.bert.encoder.layer.0.attention.self.query.weight")
        .unwrap()
        .copy();
    let mut v = BlipVqa::new(&cfg, Device::Cpu).unwrap();
    load(&mut v, checkpoint("pretrain_1"));
    let vars = v.var_store().variables();
    assert!(vars["text_decoder.bert.encoder.layer.0.attention.self.query.weight"].equal(&dec_q));
    let mut c = BlipDecoder::new(&cfg, Device::Cpu).unwrap();
    load(&mut c, sd);
    let vars = c.var_store().variables();
    assert!(vars["text_decoder.bert.encoder.layer.0.attention.self.query.weight"].equal(&dec_q));
}
