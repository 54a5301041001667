"""Flan-T5 backbone: hub-format folders -> load -> merge -> evaluate -> export -> reload."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr
from transformers import AutoTokenizer, T5ForConditionalGeneration

from nufilt.backbones import get_backbone
from nufilt.backbones.hub import HubUnavailableError, quiet_transformers
from nufilt.backbones.t5 import glue_task_specs, prompt_and_target, score_answers, spearman_rho
from nufilt.export import save_merged
from nufilt.merge import continual_merge
from tests.backbones.builders import glue_rows, write_jsonl


def one_by_one_answers(folder, prompts, state=None, tokenizer_folder=None) -> list[str]:
    """Greedy one-token answers, one prompt at a time (no padding): the reference path."""
    with quiet_transformers():
        model = T5ForConditionalGeneration.from_pretrained(folder).eval()
    if state is not None:
        model.load_state_dict(dict(state), strict=False)
        model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder or folder)
    answers = []
    with torch.no_grad():
        for prompt in prompts:
            out = model.generate(**tokenizer([prompt], return_tensors="pt"), max_new_tokens=1)
            answers.append(tokenizer.decode(out[0], skip_special_tokens=True))
    return answers


@pytest.fixture(scope="module")
def glue_data(t5_hub, tmp_path_factory):
    """CoLA rows labelled against the pre-trained answers (two in three agree); STS-B scores
    that rank like the STS-B model's numeric answers. Returns (data_dir, reference answers)."""
    data = tmp_path_factory.mktemp("glue")
    specs = glue_task_specs()
    cola = glue_rows("cola", 30, seed=1)
    answers = one_by_one_answers(t5_hub["pretrained"], [prompt_and_target(specs["cola"], r)[0] for r in cola])
    for i, (row, answer) in enumerate(zip(cola, answers, strict=True)):
        if answer in ("acceptable", "unacceptable"):
            row["label"] = int((answer == "acceptable") != (i % 3 == 0))
    stsb = glue_rows("stsb", 30, seed=2)
    stsb_answers = one_by_one_answers(
        t5_hub["stsb"], [prompt_and_target(specs["stsb"], r)[0] for r in stsb], tokenizer_folder=t5_hub["pretrained"]
    )
    for i, (row, answer) in enumerate(zip(stsb, stsb_answers, strict=True)):
        if answer.replace(".", "").isdigit():
            row["label"] = float(answer) + 0.01 * i
    write_jsonl(data / "cola" / "test.jsonl", cola)
    write_jsonl(data / "stsb" / "test.jsonl", stsb)
    return data, {"cola": (cola, answers), "stsb": (stsb, stsb_answers)}


def make(t5_hub, data_dir, **kwargs):
    return get_backbone(
        "flan-t5-base",
        model_id=str(t5_hub["pretrained"]),
        finetuned_pattern=str(t5_hub["root"] / "flan-t5-tiny_glue-{task}"),
        tasks=["cola", "stsb"],
        data_dir=data_dir,
        device="cpu",
        max_new_tokens=1,
        batch_size=8,
        **kwargs,
    )


def test_glue_prompts_and_metrics():
    specs = glue_task_specs()
    assert [s["paper_name"] for s in specs.values()] == ["CoLA", "MNLI", "MRPC", "QNLI", "QQP", "RTE", "SST2", "STSB"]
    prompt, target = prompt_and_target(specs["mnli"], {"premise": "P", "hypothesis": "H", "label": 2})
    assert "'P'" in prompt and "'H'" in prompt and target == "contradiction"
    assert prompt_and_target(specs["stsb"], {"sentence1": "a", "sentence2": "b", "label": 3.84})[1] == "3.8"
    assert score_answers("accuracy", ["yes ", "no", "yes"], ["yes", "yes", "yes"]) == pytest.approx(200 / 3)
    x, y = [0.1, 2.0, 2.0, 5.0, 3.3], [1.0, 4.0, 3.0, 9.0, 2.0]
    assert spearman_rho(x, y) == pytest.approx(spearmanr(x, y)[0])
    assert spearman_rho([1.0, 1.0], [1.0, 2.0]) == 0.0
    assert score_answers("spearman", ["1.0", "oops", "3.0"], ["1.0", "2.0", "3.0"]) == pytest.approx(50.0)


def test_states_hold_every_weight_once(t5_hub):
    backbone = get_backbone("flan-t5-base", model_id=str(t5_hub["pretrained"]), finetuned_pattern="{task}")
    pre = backbone.pretrained_state()
    assert "shared.weight" in pre and "lm_head.weight" not in pre and "encoder.embed_tokens.weight" not in pre
    assert backbone.family == "t5"
    with quiet_transformers():
        reference = T5ForConditionalGeneration.from_pretrained(t5_hub["pretrained"]).state_dict()
    assert all(torch.equal(pre[k], reference[k]) for k in pre)


def test_evaluation_matches_one_by_one_generation(t5_hub, glue_data):
    data_dir, reference = glue_data
    backbone = make(t5_hub, data_dir)
    cola, answers = reference["cola"]
    targets = [prompt_and_target(glue_task_specs()["cola"], r)[1] for r in cola]
    expected_cola = 100.0 * sum(a == t for a, t in zip(answers, targets, strict=True)) / len(cola)
    assert 50.0 < expected_cola < 90.0
    assert backbone.evaluate(backbone.pretrained_state(), ["cola"])["cola"] == pytest.approx(expected_cola)
    stsb, stsb_answers = reference["stsb"]
    parsed = [float(a) if a.replace(".", "").isdigit() else 0.0 for a in stsb_answers]
    expected = 100.0 * spearmanr(parsed, [float(f"{r['label']:.1f}") for r in stsb])[0]
    score = backbone.evaluate(backbone.finetuned_state("stsb"), ["stsb"])["stsb"]
    assert score == pytest.approx(expected, abs=1e-6) and score > 50.0


def test_merge_evaluate_export_reload(t5_hub, glue_data, tmp_path):
    data_dir, _ = glue_data
    backbone = make(t5_hub, data_dir)
    pre = backbone.pretrained_state()
    *_, merged = continual_merge(pre, [backbone.finetuned_state(t) for t in ("cola", "stsb")], "task_arithmetic")
    scores = backbone.evaluate(merged, ["cola", "stsb"])
    prompts = [prompt_and_target(glue_task_specs()["cola"], r)[0] for r in backbone._rows("cola", "test")]
    out = save_merged(backbone, merged, tmp_path / "t5", {"method": "task_arithmetic", "scores": scores})
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert one_by_one_answers(out, prompts) == one_by_one_answers(t5_hub["pretrained"], prompts, merged)
    with quiet_transformers():
        reloaded = T5ForConditionalGeneration.from_pretrained(out).state_dict()
    assert all(torch.equal(reloaded[k], merged[k]) for k in merged)


def test_activation_batches_feed_the_encoder_decoder(t5_hub, glue_data):
    backbone = make(t5_hub, glue_data[0])
    batch = next(backbone.activation_batches("cola", 4))
    assert set(batch) == {"input_ids", "attention_mask", "decoder_input_ids"}
    assert batch["input_ids"].shape[0] == 4 and (batch["decoder_input_ids"][:, 0] == 0).all()
    with torch.no_grad():
        backbone.build_encoder(backbone.pretrained_state())(**batch)


def test_hub_ids_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backbone = get_backbone("flan-t5-base", tasks=8, cache_dir=tmp_path)
    assert [t.name for t in backbone.tasks][-1] == "stsb" and backbone.task("stsb").metric == "spearman"
    with pytest.raises(HubUnavailableError, match="google/flan-t5-base"):
        backbone.pretrained_state()
    with pytest.raises(HubUnavailableError, match="tanganke/flan-t5-base_glue-rte"):
        backbone.finetuned_state("rte")


def test_flan_t5_files_keep_their_own_output_layer(t5_hub, tmp_path):
    """Flan-T5 checkpoints hold `lm_head.weight` apart from `shared.weight` (tie_word_embeddings
    false); the merged state must carry it, and the exported model must load with it."""
    from safetensors.torch import save_file
    from transformers import T5Config

    config = T5Config.from_pretrained(t5_hub["pretrained"], tie_word_embeddings=False)
    with quiet_transformers():
        base = T5ForConditionalGeneration.from_pretrained(t5_hub["pretrained"])
    weights = {k: v.clone().contiguous() for k, v in base.state_dict().items() if k != "lm_head.weight"}
    weights["lm_head.weight"] = torch.randn(weights["shared.weight"].shape, generator=torch.Generator().manual_seed(0))
    flan = tmp_path / "flan"
    flan.mkdir()
    save_file(weights, str(flan / "model.safetensors"), metadata={"format": "pt"})
    config_dict = config.to_dict()
    config_dict["tie_word_embeddings"] = False
    (flan / "config.json").write_text(__import__("json").dumps(config_dict))
    AutoTokenizer.from_pretrained(t5_hub["pretrained"]).save_pretrained(flan)

    backbone = get_backbone("flan-t5-base", model_id=str(flan), finetuned={"cola": str(t5_hub["cola"])}, tasks=["cola"])
    pre = backbone.pretrained_state()
    assert torch.equal(pre["lm_head.weight"], weights["lm_head.weight"])
    task = backbone.finetuned_state("cola")  # saved with a tied output layer: lm_head reads shared
    assert torch.equal(task["lm_head.weight"], task["shared.weight"])
    with quiet_transformers():
        reference = T5ForConditionalGeneration.from_pretrained(flan).eval()
    ids, decoder_ids = torch.randint(0, 40, (2, 9)), torch.randint(0, 40, (2, 3))
    with torch.no_grad():
        expected = reference(input_ids=ids, decoder_input_ids=decoder_ids).logits
        assert torch.equal(backbone.build_encoder(pre)(input_ids=ids, decoder_input_ids=decoder_ids).logits, expected)
    out = save_merged(backbone, pre, tmp_path / "exported")
    with quiet_transformers(), torch.no_grad():
        reloaded = T5ForConditionalGeneration.from_pretrained(out).eval()
        assert torch.equal(reloaded(input_ids=ids, decoder_input_ids=decoder_ids).logits, expected)
