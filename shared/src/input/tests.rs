//! `build_input` end to end: the steps together, and hostile requests.

use super::*;
use serde_json::json;

fn request(body: Value) -> GenerationRequest {
    serde_json::from_value(body).unwrap_or_default()
}

fn model(modality: Modality, defaults: Value, capabilities: Value) -> ModelSpec {
    ModelSpec {
        model_key: "fal-ai/test".into(),
        modality,
        input_defaults: defaults,
        capabilities,
        override_capabilities: None,
    }
}

fn image_model() -> ModelSpec {
    model(Modality::Image, json!({}), json!({}))
}

fn video_model() -> ModelSpec {
    model(Modality::Video, json!({}), json!({}))
}

fn build(body: Value, model: &ModelSpec) -> Result<BuiltInput, InputError> {
    build_input(&request(body), model, &HashMap::new())
}

fn input_of(body: Value, model: &ModelSpec) -> Value {
    build(body, model).map(|b| b.input).unwrap_or(Value::Null)
}

fn signed(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn a_missing_or_blank_prompt_is_an_error() {
    assert_eq!(
        build(json!({}), &image_model()),
        Err(InputError::MissingPrompt)
    );
    assert_eq!(
        build(json!({"prompt": " \n\t "}), &image_model()),
        Err(InputError::MissingPrompt)
    );
    assert_eq!(InputError::MissingPrompt.to_string(), "Prompt is required");
}

#[test]
fn only_the_fal_prompt_is_sanitised() {
    let req = request(json!({"prompt": "a  teen   at school"}));
    let built = build_input(&req, &image_model(), &HashMap::new());
    assert_eq!(
        built.map(|b| b.input["prompt"].clone()),
        Ok(json!("a young adult at school"))
    );
    assert_eq!(req.prompt.as_deref(), Some("a  teen   at school"));
}

#[test]
fn text_to_image_is_prompt_defaults_and_safety() {
    let m = model(
        Modality::Image,
        json!({"num_images": 1, "output_format": "png"}),
        json!({}),
    );
    let built = build(json!({"prompt": "a cat"}), &m);
    assert_eq!(
        built,
        Ok(BuiltInput {
            input: json!({"prompt": "a cat", "num_images": 1, "output_format": "png", "enable_safety_checker": false}),
            generation_mode: "txt2img".into(),
            content_mode: "nsfw".into(),
            reference_image_url: None,
        })
    );
}

#[test]
fn content_mode_sfw_is_reported_and_drives_safety_tolerance() {
    let m = model(
        Modality::Image,
        json!({"safety_tolerance": "3"}),
        json!({"safety_checker_param": "safety_tolerance"}),
    );
    let built = build(
        json!({"prompt": "a", "metadata": {"contentType": "sfw"}}),
        &m,
    );
    assert_eq!(built.as_ref().map(|b| b.content_mode.as_str()), Ok("sfw"));
    assert_eq!(
        built.map(|b| b.input["safety_tolerance"].clone()),
        Ok(json!("3"))
    );
}

#[test]
fn generation_mode_for_images_is_i2i_with_any_reference() {
    let mode =
        |input: Value| generation_mode(input.as_object().unwrap_or(&Map::new()), Modality::Image);
    assert_eq!(mode(json!({})), GenerationMode::Txt2Img);
    assert_eq!(mode(json!({"image_url": ""})), GenerationMode::Txt2Img);
    assert_eq!(mode(json!({"image_urls": []})), GenerationMode::Txt2Img);
    assert_eq!(mode(json!({"image_url": "a.png"})), GenerationMode::I2i);
    assert_eq!(mode(json!({"image_urls": ["a.png"]})), GenerationMode::I2i);
    assert_eq!(mode(json!({"video": "v.mp4"})), GenerationMode::I2i);
    assert_eq!(mode(json!({"images": [{}]})), GenerationMode::I2i);
}

#[test]
fn generation_mode_for_video_prefers_extend_then_conditioning_then_i2v() {
    let mode =
        |input: Value| generation_mode(input.as_object().unwrap_or(&Map::new()), Modality::Video);
    assert_eq!(mode(json!({})), GenerationMode::Txt2Vid);
    assert_eq!(
        mode(json!({"image_url": "a", "images": [1], "video": "v"})),
        GenerationMode::V2vExtend
    );
    assert_eq!(
        mode(json!({"image_url": "a", "images": [1]})),
        GenerationMode::MultiConditioning
    );
    assert_eq!(
        mode(json!({"videos": [1]})),
        GenerationMode::MultiConditioning
    );
    assert_eq!(mode(json!({"image_url": "a"})), GenerationMode::I2v);
    assert_eq!(
        GenerationMode::MultiConditioning.as_str(),
        "multi_conditioning"
    );
}

#[test]
fn a_stored_image_reference_is_replaced_by_its_presigned_url() {
    let resolved = signed(&[("user-library/u1/a.png", "https://s3.test/lib/u1/a.png?sig")]);
    let req = request(json!({"prompt": "p", "input": {"image_url": "user-library/u1/a.png"}}));
    let built = build_input(&req, &image_model(), &resolved);
    assert_eq!(
        built.as_ref().map(|b| b.input["image_url"].clone()),
        Ok(json!("https://s3.test/lib/u1/a.png?sig"))
    );
    assert_eq!(
        built.as_ref().map(|b| b.generation_mode.as_str()),
        Ok("i2i")
    );
    assert_eq!(
        built.map(|b| b.reference_image_url),
        Ok(Some("https://s3.test/lib/u1/a.png?sig".into()))
    );
}

#[test]
fn a_single_image_goes_in_a_list_when_the_override_models_schema_takes_image_urls() {
    let reference = json!({"prompt": "p", "input": {"image_url": "https://x.test/a.png"}});
    let asked = json!({"input_schema": {"prompt": {}, "image_url": {}, "image_urls": {}}});
    let mut m = model(Modality::Image, json!({}), asked);
    m.capabilities["input_schema"]
        .as_object_mut()
        .unwrap()
        .remove("image_urls");
    assert_eq!(
        input_of(reference.clone(), &m),
        json!({"prompt": "p", "image_url": "https://x.test/a.png"})
    );
    m.override_capabilities = Some(json!({"input_schema": {"prompt": {}, "image_urls": {}}}));
    assert_eq!(
        input_of(reference.clone(), &m),
        json!({"prompt": "p", "image_urls": ["https://x.test/a.png"]})
    );
    // An override without a schema asks for nothing.
    m.override_capabilities = Some(json!({}));
    assert_eq!(
        input_of(reference, &m),
        json!({"prompt": "p", "image_url": "https://x.test/a.png"})
    );
}

#[test]
fn a_single_image_goes_in_a_list_when_the_schema_takes_image_urls() {
    let m = model(
        Modality::Image,
        json!({}),
        json!({"input_schema": {"prompt": {}, "image_urls": {}}}),
    );
    let input = input_of(
        json!({"prompt": "p", "input": {"image_url": "https://x.test/a.png"}}),
        &m,
    );
    assert_eq!(
        input,
        json!({"prompt": "p", "image_urls": ["https://x.test/a.png"]})
    );
}

#[test]
fn an_unsigned_or_malformed_single_image_is_the_originals_error() {
    let err = |url: &str| {
        build(
            json!({"prompt": "p", "input": {"image_url": url}}),
            &image_model(),
        )
        .err()
    };
    assert_eq!(
        err("u1/a.png"),
        Some(InputError::InvalidReference(
            "I2I request requires a valid reference image URL".into()
        ))
    );
    assert_eq!(
        err("ftp://x/a.png"),
        Some(InputError::InvalidReference(
            "Invalid reference image URL format".into()
        ))
    );
    let wrong_type = build(
        json!({"prompt": "p", "input": {"image_url": 42}}),
        &image_model(),
    )
    .err();
    assert_eq!(
        wrong_type,
        Some(InputError::InvalidReference(
            "Invalid reference image URL format".into()
        ))
    );
}

#[test]
fn multi_references_drop_failures_and_fail_when_none_resolve() {
    let resolved = signed(&[("u1/b.png", "https://s3.test/b")]);
    let body = json!({"prompt": "p", "input": {"image_urls": ["u1/a.png", "u1/b.png", "https://x.test/c.png", 5], "image_url": "https://x.test/z.png"}});
    let built = build_input(&request(body), &image_model(), &resolved);
    assert_eq!(
        built.as_ref().map(|b| b.input["image_urls"].clone()),
        Ok(json!(["https://s3.test/b", "https://x.test/c.png"]))
    );
    assert_eq!(built.map(|b| b.input.get("image_url").cloned()), Ok(None));
    let none = build(
        json!({"prompt": "p", "input": {"image_urls": ["u1/a.png", "ftp://x"]}}),
        &image_model(),
    );
    assert_eq!(
        none,
        Err(InputError::InvalidReference(
            "Multi-reference request requires valid image URLs".into()
        ))
    );
}

#[test]
fn strength_is_set_only_for_i2i_on_models_that_take_it() {
    let caps = json!({"input_schema": {"prompt": {}, "image_url": {}, "strength": {"min": 0.3, "max": 0.9}}});
    let m = model(Modality::Image, json!({}), caps);
    let i2i = input_of(
        json!({"prompt": "p", "input": {"image_url": "https://x.test/a.png", "strength": 2}}),
        &m,
    );
    assert_eq!(i2i["strength"], json!(0.9));
    let t2i = input_of(json!({"prompt": "p", "input": {"strength": 2}}), &m);
    assert_eq!(t2i.get("strength"), None);
}

#[test]
fn fast_video_is_480p_and_high_video_keeps_or_defaults_to_720p() {
    let fast = input_of(
        json!({"prompt": "p", "quality": "fast", "input": {"resolution": "1080p"}}),
        &video_model(),
    );
    assert_eq!(fast["resolution"], json!("480p"));
    let high = input_of(
        json!({"prompt": "p", "input": {"resolution": "1080p"}}),
        &video_model(),
    );
    assert_eq!(high["resolution"], json!("1080p"));
    let default = input_of(json!({"prompt": "p"}), &video_model());
    assert_eq!(default["resolution"], json!("720p"));
}

#[test]
fn video_pass_throughs_are_copied_when_scalar() {
    let body = json!({"prompt": "p", "input": {
        "fps": 24, "reverse_video": true, "constant_rate_factor": 30, "enable_detail_pass": false,
        "temporal_adain_factor": 0.5, "tone_map_compression_ratio": 0, "first_pass_num_inference_steps": 8,
        "second_pass_skip_initial_steps": 5, "frame_rate": {"nested": 1}, "unknown_key": 1
    }});
    let input = input_of(body, &video_model());
    let passed = [
        "fps",
        "reverse_video",
        "constant_rate_factor",
        "enable_detail_pass",
    ];
    let passed_too = ["temporal_adain_factor", "tone_map_compression_ratio"];
    let steps = [
        "first_pass_num_inference_steps",
        "second_pass_skip_initial_steps",
    ];
    for key in passed.iter().chain(&passed_too).chain(&steps) {
        assert!(input.get(*key).is_some(), "{key}");
    }
    assert_eq!(input.get("frame_rate"), None);
    assert_eq!(input.get("unknown_key"), None);
}

#[test]
fn video_duration_becomes_8n_plus_1_frames_for_ltx_models() {
    let mut m = video_model();
    m.model_key = "fal-ai/ltx-video-13b-distilled/image-to-video".into();
    let input = input_of(
        json!({"prompt": "p", "metadata": {"duration": 5}, "input": {"frame_rate": 24}}),
        &m,
    );
    assert_eq!(input["num_frames"], json!(121));
    assert_eq!(input["frame_rate"], json!(24));
}

#[test]
fn video_aspect_ratio_comes_from_metadata_unless_input_says_auto() {
    let meta = json!({"aspectRatio": "9:16"});
    let set = input_of(json!({"prompt": "p", "metadata": meta}), &video_model());
    assert_eq!(set["aspect_ratio"], json!("9:16"));
    let auto = input_of(
        json!({"prompt": "p", "metadata": meta, "input": {"aspect_ratio": "auto"}}),
        &video_model(),
    );
    assert_eq!(auto["aspect_ratio"], json!("auto"));
}

#[test]
fn conditioning_images_force_aspect_ratio_auto() {
    let body = json!({"prompt": "p", "metadata": {"aspectRatio": "16:9"},
        "input": {"images": [{"image_url": "https://x.test/a.png", "start_frame_num": 16}]}});
    let built = build(body, &video_model());
    assert_eq!(
        built.as_ref().map(|b| b.input["aspect_ratio"].clone()),
        Ok(json!("auto"))
    );
    assert_eq!(
        built.as_ref().map(|b| b.generation_mode.as_str()),
        Ok("multi_conditioning")
    );
    assert_eq!(built.map(|b| b.reference_image_url), Ok(None));
}

#[test]
fn extend_gets_the_video_object_and_no_aspect_mapping() {
    let caps = json!({"input_schema": {"prompt": {}, "image_size": {"type": "enum"}}});
    let m = model(Modality::Video, json!({}), caps);
    let resolved = signed(&[("workspace-temp/u1/v.mp4", "https://s3.test/ws/u1/v.mp4")]);
    let body = json!({"prompt": "p", "metadata": {"aspectRatio": "16:9"},
        "input": {"video": "workspace-temp/u1/v.mp4", "image_url": "https://x.test/a.png"}});
    let built = build_input(&request(body), &m, &resolved);
    assert_eq!(
        built.as_ref().map(|b| b.generation_mode.as_str()),
        Ok("v2v_extend")
    );
    let input = built.map(|b| b.input).unwrap_or_default();
    assert_eq!(
        input["video"]["video_url"],
        json!("https://s3.test/ws/u1/v.mp4")
    );
    assert_eq!(input.get("image_size"), None);
    assert_eq!(input.get("image_url"), None);
}

#[test]
fn plain_i2v_sends_the_image_and_reports_it_for_thumbnails() {
    let resolved = signed(&[("u1/a.png", "https://s3.test/u1/a.png")]);
    let body = json!({"prompt": "p", "input": {"image_url": "u1/a.png"}});
    let built = build_input(&request(body), &video_model(), &resolved);
    assert_eq!(
        built.as_ref().map(|b| b.generation_mode.as_str()),
        Ok("i2v")
    );
    assert_eq!(
        built.map(|b| b.reference_image_url),
        Ok(Some("https://s3.test/u1/a.png".into()))
    );
}

#[test]
fn image_aspect_mapping_follows_the_schema() {
    let meta = json!({"aspectRatio": "16:9"});
    let plain = input_of(json!({"prompt": "p", "metadata": meta}), &image_model());
    assert_eq!(plain["image_size"], json!({"width": 1344, "height": 768}));
    let enum_model = model(
        Modality::Image,
        json!({}),
        json!({"input_schema": {"image_size": {"type": "enum"}}}),
    );
    assert_eq!(
        input_of(json!({"prompt": "p", "metadata": meta}), &enum_model)["image_size"],
        json!("landscape_16_9")
    );
    let ratio_model = model(
        Modality::Image,
        json!({}),
        json!({"input_schema": {"aspect_ratio": {}}}),
    );
    assert_eq!(
        input_of(json!({"prompt": "p", "metadata": meta}), &ratio_model)["aspect_ratio"],
        json!("16:9")
    );
    let explicit = input_of(
        json!({"prompt": "p", "metadata": meta, "input": {"image_size": "square"}}),
        &image_model(),
    );
    assert_eq!(explicit["image_size"], json!("square"));
}

#[test]
fn schema_filtering_keeps_schema_fields_and_references_and_drops_nulls() {
    let caps = json!({"input_schema": {"num_inference_steps": {}}});
    let m = model(
        Modality::Image,
        json!({"num_images": 2, "num_inference_steps": 20, "junk": null}),
        caps,
    );
    let input = input_of(
        json!({"prompt": "p", "input": {"image_url": "https://x.test/a.png"}}),
        &m,
    );
    assert_eq!(
        input,
        json!({"prompt": "p", "num_inference_steps": 20, "image_url": "https://x.test/a.png"})
    );
    let unfiltered = input_of(
        json!({"prompt": "p"}),
        &model(Modality::Image, json!({"a": 1, "b": null}), json!({})),
    );
    assert_eq!(
        unfiltered,
        json!({"prompt": "p", "a": 1, "enable_safety_checker": false})
    );
}

#[test]
fn missing_required_fields_are_listed() {
    let caps = json!({"input_schema": {"prompt": {"required": true}, "image_url": {"required": true}, "mask_url": {"required": true}}});
    let m = model(Modality::Image, json!({}), caps);
    let err = build(json!({"prompt": "p"}), &m).err();
    let Some(InputError::MissingFields { mut fields }) = err.clone() else {
        panic!("expected MissingFields, got {err:?}")
    };
    fields.sort_unstable();
    assert_eq!(fields, ["image_url", "mask_url"]);
    let message = InputError::MissingFields {
        fields: vec!["image_url".into(), "mask_url".into()],
    }
    .to_string();
    assert_eq!(message, "This model requires: image_url, mask_url");
    assert!(
        build(
            json!({"prompt": "p", "input": {"image_url": "https://x.test/a.png", "mask_url": "x"}}),
            &m
        )
        .is_err_and(|e| e
            == InputError::MissingFields {
                fields: vec!["mask_url".into()]
            })
    );
}

#[test]
fn the_input_is_flat_and_never_wrapped() {
    let input = input_of(
        json!({"prompt": "p", "input": {"input": {"prompt": "inner"}}}),
        &image_model(),
    );
    assert_eq!(input.get("input"), None);
    assert_eq!(input["prompt"], json!("p"));
}

/// Wrong types and deep nesting everywhere: the result is an error or an input, never a panic.
#[test]
fn a_hostile_request_never_panics() {
    let mut deep = json!("bottom");
    for _ in 0..100 {
        deep = if deep.is_object() {
            json!([deep])
        } else {
            json!({"url": deep, "image_url": "x"})
        };
    }
    let hostile_inputs = [
        json!({"image_url": deep, "image_urls": deep, "video": deep, "images": [deep, deep], "videos": deep}),
        json!({"image_url": [], "image_urls": "x", "video": {"video_url": 5}, "images": "x", "videos": {"a": 1}}),
        json!({"images": [null, 1, "https://x.test/a.png", {"image_url": {}}, {"url": "https://x.test/b.png", "strength": "NaN", "start_frame_num": 1e308}]}),
        json!({"videos": [{"video_url": "https://x.test/v.mp4", "start_frame_num": -1e308, "conditioning_type": {}, "preprocess": "yes"}]}),
        json!({"video": "https://x.test/v.mp4", "source_video_duration": 1e308, "frame_rate": 1e308}),
        json!({"num_frames": -1e308, "num_inference_steps": "1e309", "guidance_scale": [], "seed": 1e300, "guide_scale": {}}),
        json!({"width": 1e308, "height": -1, "image_size": {"width": "x"}, "strength": true, "resolution": null}),
        json!({"image_url": "data:", "image_urls": ["", " ", "\u{0}", "%%%", "/..", "user-library/../x"]}),
    ];
    let hostile_metadata = [
        json!({}),
        json!({"duration": 1e308, "aspectRatio": 16, "contentType": []}),
        json!({"duration": "-5", "aspectRatio": "1:1"}),
    ];
    let hostile_caps = [
        json!({}),
        json!({"input_schema": [], "conditioning_timeline": "x", "safety_checker_param": 6}),
        json!({"input_schema": {"strength": {"min": 5, "max": -5}, "num_frames": {"min": 1e308, "max": -1e308}, "guide_scale": {"min": "x"}, "image_size": {"type": "enum", "required": "yes"}, "image_urls": null}, "conditioning_timeline": {"min": 1e308, "max": -1e308, "multipleOf": 1e-300, "frame_field": ""}, "safety_checker_param": "safety_tolerance"}),
        json!({"input_schema": {"a": {"required": true}}, "conditioning_timeline": {"multipleOf": 1e308}}),
    ];
    let hostile_defaults = [
        json!(null),
        json!({"prompt": 5, "safety_tolerance": {}, "enable_safety_checker": "x", "strength": []}),
        json!([1, 2]),
    ];
    let resolved = signed(&[
        ("", ""),
        ("u1/a.png", "not a url"),
        ("https://x.test/a.png", "javascript:alert(1)"),
    ]);
    for input in &hostile_inputs {
        for metadata in &hostile_metadata {
            for caps in &hostile_caps {
                for defaults in &hostile_defaults {
                    for modality in [Modality::Image, Modality::Video] {
                        for quality in ["fast", "high"] {
                            let req = request(
                                json!({"prompt": "teen\u{0}  p", "quality": quality, "input": input, "metadata": metadata}),
                            );
                            let m = ModelSpec {
                                model_key: "ltx".into(),
                                modality,
                                input_defaults: defaults.clone(),
                                capabilities: caps.clone(),
                                override_capabilities: Some(caps.clone()),
                            };
                            let _ = reference_strings(&req);
                            let _ = stored_references(&req);
                            if let Ok(built) = build_input(&req, &m, &resolved) {
                                assert!(built.input.is_object());
                                assert!(serde_json::to_string(&built.input).is_ok());
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A small deterministic fuzzer: random JSON in every field of the request and the model.
#[test]
fn random_requests_never_panic() {
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'a>(&mut self, items: &'a [&'a str]) -> &'a str {
            items
                .get((self.next() % items.len() as u64) as usize)
                .copied()
                .unwrap_or_default()
        }
    }
    const KEYS: &[&str] = &[
        "image_url",
        "image_urls",
        "video",
        "images",
        "videos",
        "url",
        "video_url",
        "strength",
        "start_frame_num",
        "num_frames",
        "frame_rate",
        "source_video_duration",
        "seed",
        "width",
        "height",
        "image_size",
        "aspect_ratio",
        "min",
        "max",
        "multipleOf",
        "frame_field",
        "required",
        "type",
        "default",
        "input_schema",
        "duration",
        "aspectRatio",
        "contentType",
        "conditioning_timeline",
        "safety_checker_param",
        "guide_scale",
        "resolution",
    ];
    const STRINGS: &[&str] = &[
        "",
        "auto",
        "enum",
        "16:9",
        "sfw",
        "safety_tolerance",
        "u1/a.png",
        "workspace-temp/u1/v.mp4",
        "ftp://x",
        "https://x.test/a.png",
        "data:image/png;base64,AA",
        "é日本",
        "../..",
        "-1",
        "1e400",
        "NaN",
    ];
    fn value(rng: &mut Rng, depth: u32) -> Value {
        match rng.next() % if depth > 4 { 5 } else { 7 } {
            0 => Value::Null,
            1 => Value::Bool(rng.next().is_multiple_of(2)),
            2 => json!((rng.next() as i64) >> (rng.next() % 64)),
            3 => json!(f64::from_bits(rng.next()).clamp(-1e300, 1e300)),
            4 => json!(rng.pick(STRINGS)),
            5 => Value::Array((0..rng.next() % 4).map(|_| value(rng, depth + 1)).collect()),
            _ => Value::Object(
                (0..rng.next() % 5)
                    .map(|_| (rng.pick(KEYS).to_owned(), value(rng, depth + 1)))
                    .collect(),
            ),
        }
    }
    fn object(rng: &mut Rng) -> Map<String, Value> {
        (0..rng.next() % 8)
            .map(|_| (rng.pick(KEYS).to_owned(), value(rng, 1)))
            .collect()
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let resolved = signed(&[
        ("u1/a.png", "https://s3.test/a"),
        ("workspace-temp/u1/v.mp4", "https://s3.test/v"),
    ]);
    for _ in 0..3000 {
        let req = GenerationRequest {
            prompt: Some(rng.pick(STRINGS).to_owned() + " p"),
            quality: Some(rng.pick(&["fast", "high"]).to_owned()),
            input: Some(object(&mut rng)),
            metadata: Some(object(&mut rng)),
            ..Default::default()
        };
        let mut caps = object(&mut rng);
        caps.insert("input_schema".into(), Value::Object(object(&mut rng)));
        let m = ModelSpec {
            model_key: rng.pick(&["fal-ai/ltx", "fal-ai/wan"]).to_owned(),
            modality: if rng.next().is_multiple_of(2) {
                Modality::Image
            } else {
                Modality::Video
            },
            input_defaults: Value::Object(object(&mut rng)),
            capabilities: Value::Object(caps),
            override_capabilities: None,
        };
        let _ = reference_strings(&req);
        if let Ok(built) = build_input(&req, &m, &resolved) {
            assert!(built.input.get("prompt").is_some_and(Value::is_string));
        }
    }
}
