"""The micro zoo: formats on disk, cache round-trip, corruption recovery, and the regime."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPVisionModel

from nufilt.backbones import get_backbone
from nufilt.backbones.tiny_vit import make_backbone
from nufilt.cache import CacheWarning, check_integrity
from nufilt.statedict import PAPER_NUFILT_PATTERNS, select_keys
from nufilt.zoo import PRESETS, build
from nufilt.zoo.build import finetuned_root, heads_folder, pretrained_folder

MICRO = PRESETS["micro"]


def test_registered_as_tiny_vit(micro_zoo_dir):
    backbone = get_backbone("tiny-vit", preset="micro", cache_dir=micro_zoo_dir)
    assert backbone.family == "clip" and backbone.name == "tiny-vit"
    assert [t.name for t in backbone.tasks] == list(MICRO.tasks)
    assert [t.paper_id for t in backbone.tasks] == [1, 2, 3]
    state = backbone.pretrained_state()
    assert select_keys(state, "paper", PAPER_NUFILT_PATTERNS, True)  # CLIP layer names
    assert "nufilt" in backbone.recommended_options


def test_saved_in_real_formats(micro_zoo_dir):
    pre = pretrained_folder(MICRO, micro_zoo_dir)
    model = CLIPVisionModel.from_pretrained(pre / "encoder")
    assert model.config.hidden_size == MICRO.width
    heads = load_file(heads_folder(MICRO, micro_zoo_dir) / "heads.safetensors")
    assert {f"{task}.weight" for task in MICRO.tasks} <= set(heads)
    manifest = json.loads((finetuned_root(MICRO, micro_zoo_dir) / "manifest.json").read_text())
    assert [t["name"] for t in manifest["tasks"]] == list(MICRO.tasks)
    for task in manifest["tasks"]:
        assert {"classes", "pretrained_accuracy", "individual_accuracy"} <= set(task)
        assert (finetuned_root(MICRO, micro_zoo_dir) / task["name"] / "encoder" / "model.safetensors").is_file()
    assert manifest["config"]["width"] == MICRO.width


def test_individual_beats_pretrained_head_on_every_task(micro_zoo):
    pretrained = micro_zoo.evaluate(micro_zoo.pretrained_state(), [t.name for t in micro_zoo.tasks])
    for task in micro_zoo.tasks:
        individual = micro_zoo.evaluate(micro_zoo.finetuned_state(task.name), [task.name])[task.name]
        assert individual > pretrained[task.name] + 5, task.name


def test_reference_matches_a_fresh_evaluation(micro_zoo):
    reference = micro_zoo.reference()
    names = [t.name for t in micro_zoo.tasks]
    fresh = micro_zoo.evaluate(micro_zoo.pretrained_state(), names)
    assert reference["pretrained"] == pytest.approx(fresh, abs=1e-6)
    assert all(0 <= v <= 100 for row in reference.values() for v in row.values())


def test_second_load_reuses_the_cache(micro_zoo_dir, monkeypatch):
    first = make_backbone(preset="micro", cache_dir=micro_zoo_dir)
    expected = first.finetuned_state("blob-quadrant")

    def no_training(*args, **kwargs):
        raise AssertionError("a cached zoo must not be trained again")

    monkeypatch.setattr(build, "pretrain", no_training)
    monkeypatch.setattr(build, "finetune", no_training)
    second = make_backbone(preset="micro", cache_dir=micro_zoo_dir)
    second.prepare()
    loaded = second.finetuned_state("blob-quadrant")
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_corrupt_task_model_is_detected_reported_and_rebuilt(micro_zoo_dir, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(micro_zoo_dir, cache)
    folder = finetuned_root(MICRO, cache) / "ring-count"
    weights = folder / "encoder" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100:] = bytes(100)  # same size, damaged tensor bytes
    weights.write_bytes(bytes(data))
    assert check_integrity(folder) is not None
    backbone = make_backbone(preset="micro", cache_dir=cache)
    with pytest.warns(CacheWarning, match="ring-count"):
        state = backbone.finetuned_state("ring-count")
    assert check_integrity(folder) is None
    assert load_file(weights).keys() == state.keys()
    accuracy = backbone.evaluate(state, ["ring-count"])["ring-count"]
    assert accuracy > backbone.reference()["pretrained"]["ring-count"]


def test_interrupted_pretraining_folder_is_never_used(micro_zoo_dir, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(micro_zoo_dir, cache)
    (pretrained_folder(MICRO, cache) / "integrity.json").unlink()  # as if killed before the end
    backbone = make_backbone(preset="micro", cache_dir=cache)
    with pytest.warns(CacheWarning, match="interrupted"):
        backbone.pretrained_state()
    assert check_integrity(pretrained_folder(MICRO, cache)) is None


def test_cache_key_follows_the_config(tmp_path):
    tuned = MICRO.replace(finetune_lr=1e-3)
    assert pretrained_folder(tuned, tmp_path) == pretrained_folder(MICRO, tmp_path)
    assert heads_folder(tuned, tmp_path) == heads_folder(MICRO, tmp_path)
    assert finetuned_root(tuned, tmp_path) != finetuned_root(MICRO, tmp_path)
    other_heads = MICRO.replace(head_shots=8)
    assert pretrained_folder(other_heads, tmp_path) == pretrained_folder(MICRO, tmp_path)
    assert heads_folder(other_heads, tmp_path) != heads_folder(MICRO, tmp_path)
    assert finetuned_root(other_heads, tmp_path) != finetuned_root(MICRO, tmp_path)
    assert pretrained_folder(MICRO.replace(width=64), tmp_path) != pretrained_folder(MICRO, tmp_path)


def test_bad_arguments_are_rejected(micro_zoo):
    with pytest.raises(ValueError, match="unknown task"):
        micro_zoo.finetuned_state("imagenet")
    with pytest.raises(ValueError, match="unknown task"):
        micro_zoo.evaluate(micro_zoo.pretrained_state(), ["imagenet"])
    with pytest.raises(ValueError, match="n_tasks"):
        make_backbone(preset="micro", n_tasks=4)
    with pytest.raises(ValueError, match="preset"):
        make_backbone(preset="huge")
    with pytest.raises(ValueError, match="unknown ZooConfig fields"):
        make_backbone(preset="micro", depth=3)
    with pytest.raises(ValueError, match="divisible"):
        MICRO.replace(width=33)
    with pytest.raises(ValueError, match="head_kind"):
        MICRO.replace(head_kind="zero-shot")
    with pytest.raises(ValueError, match="differ"):
        MICRO.replace(pretrain_tasks=("bar-position",))


def test_activation_batches_feed_the_encoder(micro_zoo):
    encoder = micro_zoo.build_encoder(micro_zoo.pretrained_state())
    batches = list(micro_zoo.activation_batches("bar-position", 10))
    assert sum(len(b["pixel_values"]) for b in batches) == 10
    with torch.no_grad():
        out = encoder(**batches[0])
    assert out.pooler_output.shape == (10, MICRO.width)


def test_manifest_file_lists_every_built_task(micro_zoo_dir, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(micro_zoo_dir, cache)
    returned = build.build_zoo(MICRO, ["ring-count"], cache)
    assert [t["name"] for t in returned["tasks"]] == ["ring-count"]
    on_disk = json.loads((finetuned_root(MICRO, cache) / "manifest.json").read_text())
    assert [t["name"] for t in on_disk["tasks"]] == list(MICRO.tasks)


def test_the_zoo_does_not_depend_on_the_callers_thread_count(tmp_path):
    """Multi-threaded kernels sum in another order: without the build's own thread setting the
    weights differ between one and two threads (checked when this test was written)."""
    config = MICRO.replace(pretrain_steps=20, finetune_steps=5, tasks=MICRO.tasks[:1])
    before = torch.get_num_threads()
    states = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            folder = build.ensure_task(config, config.tasks[0], tmp_path / f"threads-{threads}")
            states.append(build.load_state(folder / "encoder"))
            assert torch.get_num_threads() == threads  # the caller's setting is restored
    finally:
        torch.set_num_threads(before)
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])


def test_fine_tuning_in_processes_gives_the_serial_models(micro_zoo_dir, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(micro_zoo_dir, cache)
    tasks = list(MICRO.tasks[:2])
    root = finetuned_root(MICRO, cache)
    for task in tasks:
        shutil.rmtree(root / task)  # keep the pre-trained encoder and heads, drop the task models
    messages = []
    manifest = build.build_zoo(MICRO, tasks, cache, lambda message, fraction: messages.append(message), workers=2)
    assert [t["name"] for t in manifest["tasks"]] == tasks
    assert any("2 processes" in message for message in messages)
    for task in tasks:
        assert check_integrity(root / task) is None
        rebuilt = build.load_state(root / task / "encoder")
        serial = build.load_state(finetuned_root(MICRO, micro_zoo_dir) / task / "encoder")
        assert all(torch.equal(rebuilt[key], serial[key]) for key in serial)


def test_build_workers_setting(monkeypatch):
    monkeypatch.delenv("NUFILT_BUILD_WORKERS", raising=False)
    assert build.build_workers(MICRO, 3) == 1  # a seconds-to-build zoo stays in one process
    assert build.build_workers(PRESETS["default"], 1) == 1  # never more processes than tasks
    monkeypatch.setenv("NUFILT_BUILD_WORKERS", "3")
    assert build.build_workers(MICRO, 8) == 3
    monkeypatch.setenv("NUFILT_BUILD_WORKERS", "zero")
    with pytest.raises(ValueError, match="NUFILT_BUILD_WORKERS"):
        build.build_workers(MICRO, 8)


def test_an_unguarded_script_falls_back_to_building_in_its_own_process(micro_zoo_dir, tmp_path):
    """Spawned workers re-run a caller's main script; without a `__main__` guard they die. The build
    then warns and fine-tunes the missing models itself instead of failing."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    cache = tmp_path / "cache"
    shutil.copytree(micro_zoo_dir, cache)
    tasks = list(MICRO.tasks[:2])
    for task in tasks:
        shutil.rmtree(finetuned_root(MICRO, cache) / task)
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import sys, warnings\n"
        "from nufilt.zoo import PRESETS, build\n"
        "warnings.simplefilter('always')\n"
        f"build.build_zoo(PRESETS['micro'], {tasks!r}, sys.argv[1], workers=2)\n"
        "print('built')\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, str(script), str(cache)], capture_output=True, text=True,
                            cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "built" in result.stdout
    assert "worker processes failed" in result.stderr
    for task in tasks:
        assert check_integrity(finetuned_root(MICRO, cache) / task) is None


def test_progress_weights_the_stages_by_their_measured_cost():
    """Pre-training was a quarter of the bar but about half (20 tasks) to 70% (8 tasks) of the time:
    bench/zoo_build.py measured 2 min 36 s of pre-training against 3 min 11 s for 20 fine-tunings
    of 400 steps in two processes (2026-12-05)."""
    from nufilt.zoo.build import pretrain_share
    from nufilt.zoo.config import PRESETS

    default = PRESETS["default"]
    assert pretrain_share(default, True, 20, 2) == pytest.approx(156 / (156 + 191), abs=0.03)
    assert pretrain_share(default, True, 8, 2) > pretrain_share(default, True, 20, 2) > 0.25
    assert pretrain_share(default, False, 8, 2) == 0.0  # cached: only fine-tuning is left
    assert pretrain_share(default, True, 0, 1) == 1.0


def test_the_build_job_estimates_the_time_left():
    import time

    from nufilt.appstate import PrepareJob

    job = PrepareJob.__new__(PrepareJob)
    job.state, job.fraction, job._started = "running", 0.25, time.perf_counter() - 10.0
    assert job.eta_seconds() == pytest.approx(30.0, rel=0.05)
    job.fraction = 0.01
    assert job.eta_seconds() is None  # too early to say
    job.state, job.fraction = "ready", 1.0
    assert job.eta_seconds() is None


@pytest.mark.parametrize("width, layers, heads, patch", [(32, 2, 2, 4), (64, 3, 4, 8), (48, 1, 3, 2)])
def test_features_equal_the_encoders_own_pooled_output(width, layers, heads, patch):
    """`features` skips the last block's work on the patch tokens; its result must be the
    transformers model's own `pooler_output` (several shapes, 5 to 65 tokens, one block too)."""
    config = MICRO.replace(width=width, layers=layers, attention_heads=heads, patch_size=patch)
    torch.manual_seed(width + layers)
    encoder = build.new_encoder(config)
    with torch.no_grad():  # random weights are too tame: spread the attention and the residual stream
        for parameter in encoder.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    images = torch.rand(37, 1, 16, 16)
    with torch.no_grad():
        expected = encoder(pixel_values=images).pooler_output
    got = build.features(encoder, images, batch=16)
    assert got.shape == expected.shape == (37, width)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5), (got - expected).abs().max()
    assert not torch.allclose(got[:, :1], got[:1, :1].expand(37, 1))  # the images give different features


def test_fine_tuning_gradients_through_the_cls_path_equal_the_full_forwards():
    """`finetune` trains through `_cls_features` in train mode: the loss and every parameter's
    gradient must be those of the transformers forward (the skipped patch-token work of the last
    block has no gradient), including the last block's query and MLP weights."""
    config = MICRO.replace(width=32, layers=2, attention_heads=2, patch_size=4)
    torch.manual_seed(3)
    encoder = build.new_encoder(config).train()
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    images, labels = torch.rand(12, 1, 16, 16), torch.randint(0, 3, (12,))
    head = (torch.randn(3, config.width), torch.randn(3))
    grads = []
    for forward in (lambda: encoder(pixel_values=images).pooler_output,
                    lambda: build._cls_features(encoder, images)):
        encoder.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(build.head_logits(forward(), head), labels)
        loss.backward()
        grads.append({name: p.grad.clone() for name, p in encoder.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name, expected in grads[0].items():
        assert torch.allclose(grads[1][name], expected, rtol=1e-4, atol=1e-6), name
    last = [name for name in grads[0]
            if "layers.1.self_attn.q_proj.weight" in name or "layers.1.mlp.fc1.weight" in name]
    assert len(last) == 2 and all(grads[0][name].abs().sum() > 0 for name in last)


def test_features_of_the_micro_zoo_give_the_recorded_accuracies(micro_zoo):
    """The trained micro zoo scored through `features` agrees with its full forward on every test image."""
    name = micro_zoo.tasks[0].name
    encoder = build.encoder_from_state(micro_zoo.config, micro_zoo.finetuned_state(name))
    images, _ = build.TaskData(micro_zoo.config).get(name, "test")
    with torch.no_grad():
        expected = encoder(pixel_values=images).pooler_output
    head = micro_zoo.heads()[name]
    assert torch.equal(build.head_logits(build.features(encoder, images), head).argmax(1),
                       build.head_logits(expected, head).argmax(1))


def test_a_split_asked_for_by_several_threads_at_once_is_generated_once(monkeypatch):
    import threading
    import time

    made = []
    real = build.make_split

    def slow(spec, split, size, seed):
        made.append((spec.name, split))
        time.sleep(0.2)  # the other threads ask while this one generates
        return real(spec, split, size, seed)

    for thread in threading.enumerate():  # a run opened by an earlier test may still make its inputs
        if thread.name == "nufilt-warm":
            thread.join(60)
    monkeypatch.setattr(build, "make_split", slow)
    data = build.TaskData(MICRO)
    results = []
    threads = [threading.Thread(target=lambda: results.append(data.get(MICRO.tasks[0], "test"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert made == [(MICRO.tasks[0], "test")]
    assert len(results) == 4 and all(images is results[0][0] for images, _ in results)


def test_colour_channels_give_each_task_its_own_mix_and_leave_grey_keys_alone(micro_zoo):
    import dataclasses

    from nufilt.analysis.activations import _backbone_identity
    from nufilt.cache import config_hash
    from nufilt.zoo.build import pretrain_key

    # caches and shipped encoders made before the field existed keep their keys: at 1 it is in no key
    # (tests/zoo/test_shipped.py checks the default key against the shipped encoder's name)
    for stage in ("pretrain", "heads", "finetune"):
        assert "channels" not in MICRO.stage_fields(stage)
        assert MICRO.replace(channels=4).stage_fields(stage)["channels"] == 4
    assert pretrain_key(MICRO.replace(channels=4)) != pretrain_key(MICRO)
    without = {name: value for name, value in dataclasses.asdict(MICRO).items() if name != "channels"}
    assert _backbone_identity(micro_zoo)["config"] == config_hash(without)  # activation statistics too
    coloured = build.TaskData(MICRO.replace(channels=4))
    grey = build.TaskData(MICRO)
    mixes = []
    for task in MICRO.tasks[:2]:
        images, labels = coloured.get(task, "test")
        plain, plain_labels = grey.get(task, "test")
        assert images.shape == (len(plain), 4, 16, 16) and torch.equal(labels, plain_labels)
        assert images.min() >= -1 and images.max() <= 1
        # every channel is the grey image scaled by the image's weight for that channel
        weights = (images * plain).flatten(2).sum(-1) / (plain * plain).flatten(2).sum(-1)
        assert torch.allclose(images, plain * weights[:, :, None, None], atol=1e-5)
        assert weights.min() >= 0 and torch.allclose(weights.max(1).values, torch.ones(len(images)))
        mixes.append(weights.mean(0))
    assert not torch.allclose(mixes[0], mixes[1], atol=0.1)  # two tasks, two different mixes
    pretraining, _ = coloured.get(MICRO.pretrain_tasks[0], "train")
    spread = pretraining.abs().flatten(2).sum(-1)
    assert (spread / spread.sum(1, keepdim=True)).std(0).min() > 0.05  # pre-training: a mix per image
    with pytest.raises(ValueError, match="channels"):
        MICRO.replace(channels=0)
