"""open_clip backbone: a task-vector-style checkpoint folder -> merge -> evaluate -> export -> reload."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from safetensors.torch import save_file
from torch.nn import functional as F

from nufilt.backbones import get_backbone
from nufilt.backbones.clip import clip_task_specs
from nufilt.backbones.openclip import discover, task_for
from nufilt.export import save_merged
from nufilt.io import UnsafeCheckpointError
from nufilt.merge import continual_merge
from nufilt.statedict import select_keys
from tests.backbones.builders import OPEN_CLIP_CONFIG, random_images, write_image_folder

TASKS = ["sun397", "stanford-cars"]


@pytest.fixture(scope="module")
def open_clip_data(open_clip_folder, tmp_path_factory):
    """Images labelled by the pre-trained open_clip model itself, through open_clip's own API."""
    data = tmp_path_factory.mktemp("open_clip_data")
    model = open_clip.CLIP(**OPEN_CLIP_CONFIG["model_cfg"]).eval()
    model.load_state_dict(torch.load(open_clip_folder["pretrained"], weights_only=True))
    tokenizer = open_clip.get_tokenizer(f"local-dir:{open_clip_folder['root']}")
    transform = open_clip.image_transform(
        32, is_train=False, **{k: OPEN_CLIP_CONFIG["preprocess_cfg"][k] for k in ("mean", "std")}
    )
    for i, task in enumerate(TASKS):
        spec = clip_task_specs()[task]
        images = random_images(40, seed=20 + i)
        with torch.no_grad():
            text = F.normalize(
                model.encode_text(tokenizer([t.replace("{}", c) for c in spec["classes"] for t in spec["templates"]])),
                dim=-1,
            )
            head = F.normalize(text.reshape(len(spec["classes"]), len(spec["templates"]), -1).mean(1), dim=-1)
            logits = F.normalize(model.encode_image(torch.stack([transform(im) for im in images])), dim=-1) @ head.T
        top2 = logits.topk(2, dim=-1).values
        keep = [j for j in range(len(images)) if top2[j, 0] - top2[j, 1] > 1e-3][:16]
        write_image_folder(data / task / "test", [images[j] for j in keep], logits.argmax(-1)[keep].tolist())
    return data


def make(open_clip_folder, data_dir=None, **kwargs):
    return get_backbone(f"openclip:{open_clip_folder['root']}", data_dir=data_dir, device="cpu", **kwargs)


def test_discovers_the_task_vector_layout(open_clip_folder):
    pretrained, found = discover(open_clip_folder["root"])
    assert pretrained == open_clip_folder["pretrained"]
    assert found == {"sun397": open_clip_folder["SUN397"], "stanford-cars": open_clip_folder["Cars"]}
    assert task_for("Cars") == "stanford-cars" and task_for("EuroSAT") == "eurosat" and task_for("notes") is None
    backbone = make(open_clip_folder)
    assert backbone.family == "openclip" and [t.name for t in backbone.tasks] == TASKS


def test_vision_tower_states_and_fused_attention_layers(open_clip_folder):
    backbone = make(open_clip_folder)
    pre, task = backbone.pretrained_state(), backbone.finetuned_state("stanford-cars")
    expected = {
        k.removeprefix("visual."): v for k, v in torch.load(open_clip_folder["Cars"], weights_only=True).items()
    }
    assert list(task) == list(pre) and all(torch.equal(task[k], expected[k]) for k in task)
    assert not any(k.startswith(("token_embedding", "ln_final")) for k in pre)
    from nufilt.methods import get_method

    nufilt = get_method("nufilt")
    selected = select_keys(pre, "paper", nufilt.paper_layers, nufilt.matrix_rule)
    assert "transformer.resblocks.0.attn.in_proj_weight" in selected
    assert "transformer.resblocks.0.mlp.c_fc.weight" in selected
    assert "transformer.resblocks.0.mlp.c_proj.weight" not in selected


def test_evaluation_merge_export_reload(open_clip_folder, open_clip_data, tmp_path):
    backbone = make(open_clip_folder, open_clip_data)
    pre = backbone.pretrained_state()
    assert backbone.evaluate(pre, TASKS) == {t: 100.0 for t in TASKS}
    tasks = [backbone.finetuned_state(t) for t in TASKS]
    *_, merged = continual_merge(pre, tasks, "nufilt", r_p=8, r_l=4, r_v=4, steps=5, device="cpu")
    scores = backbone.evaluate(merged, TASKS)
    out = save_merged(backbone, merged, tmp_path / "merged", {"method": "nufilt", "scores": scores})
    assert json.loads((out / "open_clip_config.json").read_text()) == OPEN_CLIP_CONFIG
    reloaded = open_clip.create_model(f"local-dir:{out}").eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(reloaded.visual(pixels), backbone.build_encoder(merged)(pixels))
        text = open_clip.get_tokenizer(f"local-dir:{out}")(["a photo of a cat."])
        original = open_clip.CLIP(**OPEN_CLIP_CONFIG["model_cfg"]).eval()
        original.load_state_dict(torch.load(open_clip_folder["pretrained"], weights_only=True))
        assert torch.equal(reloaded.encode_text(text), original.encode_text(text))  # text tower kept


def test_stored_heads_replace_a_missing_text_tower(open_clip_folder, open_clip_data, tmp_path):
    root = tmp_path / "vision_only"
    root.mkdir()
    (root / "open_clip_config.json").write_text(json.dumps(OPEN_CLIP_CONFIG))
    full = torch.load(open_clip_folder["pretrained"], weights_only=True)
    save_file(
        {k: v.contiguous() for k, v in full.items() if k.startswith("visual.")}, str(root / "zeroshot.safetensors")
    )
    (root / "SUN397.safetensors").symlink_to(open_clip_folder["SUN397"])
    backbone = get_backbone(f"openclip:{root}", data_dir=open_clip_data, device="cpu")
    with pytest.raises(FileNotFoundError, match="heads/sun397.safetensors"):
        backbone.evaluate(backbone.pretrained_state(), ["sun397"])
    reference = make(open_clip_folder, open_clip_data)
    (root / "heads").mkdir()
    save_file({"weight": reference.head("sun397") * 3.0}, str(root / "heads" / "sun397.safetensors"))
    assert backbone.evaluate(backbone.pretrained_state(), ["sun397"]) == {"sun397": 100.0}


def test_pickled_modules_are_refused(open_clip_folder, tmp_path):
    root = tmp_path / "pickled"
    root.mkdir()
    (root / "open_clip_config.json").write_text(json.dumps(OPEN_CLIP_CONFIG))
    (root / "pretrained.pt").symlink_to(open_clip_folder["pretrained"])
    torch.save(open_clip.CLIP(**OPEN_CLIP_CONFIG["model_cfg"]).visual, root / "DTD.pt")
    backbone = get_backbone(f"openclip:{root}")
    with pytest.raises(UnsafeCheckpointError, match="will not unpickle"):
        backbone.finetuned_state("dtd")
