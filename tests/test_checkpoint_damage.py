"""Damaged checkpoints: found by their manifest (sizes, then checksums), named, and passed over for the newest
complete one; never a raw traceback, never deleted (issue 26: survive, round two)."""

from __future__ import annotations

import json

import pytest
from conftest import write_recipe

from grpo.errors import UserError
from grpo.recipe import load_recipe
from grpo.rundir import MANIFEST_FILE, STATE_FILE
from grpo.train.checkpoint import damage, load_trainer_state, write_manifest
from grpo.train.disk import is_disk_full


def folder_with_manifest(tmp_path):
    folder = tmp_path / "step-000001"
    (folder / "adapter").mkdir(parents=True)
    (folder / STATE_FILE).write_bytes(b"state" * 100)
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (folder / "adapter" / "a.bin").write_bytes(b"a" * 10)
    write_manifest(folder)
    return folder


def test_the_manifest_finds_missing_truncated_and_changed_files(tmp_path):
    folder = folder_with_manifest(tmp_path)
    assert set(json.loads((folder / MANIFEST_FILE).read_text())["files"]) == {
        STATE_FILE, "model.safetensors", "adapter/a.bin"}
    assert damage(folder) is None
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, one bit changed
    assert damage(folder) == "model.safetensors does not match the checksum written with it (its bytes changed)"
    assert damage(folder, checksums=False) is None  # the cheap check cannot see it; rank 0 reads every byte
    weights.write_bytes(data[:1000])
    assert damage(folder, checksums=False).startswith("model.safetensors holds 1,000 bytes where 16,384 were")
    (folder / "adapter" / "a.bin").unlink()
    assert damage(folder) == "adapter/a.bin is missing"
    (folder / MANIFEST_FILE).write_text("{not json")
    assert damage(folder) == f"its {MANIFEST_FILE} is unreadable"
    (folder / STATE_FILE).unlink()
    assert damage(folder) == f"it has no {STATE_FILE}"


def test_a_checkpoint_from_before_manifests_is_trusted_when_its_state_is_there(tmp_path):
    folder = folder_with_manifest(tmp_path)
    (folder / MANIFEST_FILE).unlink()
    assert damage(folder) is None


def test_safetensors_disk_full_is_recognised():
    from safetensors import SafetensorError

    assert is_disk_full(SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                        'message: "No space left on device" })'))
    assert not is_disk_full(SafetensorError("Error while deserializing header: HeaderTooLarge"))


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "damage_rewards.py").write_text("def length(prompts, completions, **kw):\n"
                                                "    return [len(c) / 10.0 for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_is_passed_over_for_the_newest_complete_one(tmp_path, tiny_model_dir, sums_file,
                                                                               reward_module, capsys):
    from grpo.train.trainer import train

    recipe = write_recipe(tmp_path, tiny_model_dir, sums_file, "damage_rewards:length", steps=3,
                          checkpoint="{every: 1, keep_last: 3}")
    out = train(load_recipe(recipe))
    latest = out / "checkpoints" / "step-000003"
    state = latest / STATE_FILE
    state.write_bytes(b"\0" * state.stat().st_size)  # garbled in place: same size, other bytes
    capsys.readouterr()
    with pytest.raises(UserError) as info:  # named explicitly: refused, with the complete one to use instead
        load_trainer_state(latest)
    assert f"{latest} cannot be resumed: {STATE_FILE} does not match the checksum" in str(info.value)
    assert f"checkpoint.resume={out / 'checkpoints' / 'step-000002'}" in str(info.value)

    train(load_recipe(recipe, ["train.steps=4"]))  # auto: passes over step 3, resumes from step 2
    err = capsys.readouterr().err
    assert f"note: checkpoint {latest}: {STATE_FILE} does not match the checksum" in err
    assert f"resuming from {out / 'checkpoints' / 'step-000002'}, the newest complete checkpoint" in err
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # step 3 trained again from step 2's state, its old line replaced
    assert damage(out / "checkpoints" / "step-000004") is None  # the new checkpoint is whole, with a manifest


def test_weights_of_another_shape_are_a_user_error_naming_the_checkpoint(tmp_path, tiny_model_dir):
    import torch
    from conftest import build_tiny_model

    from grpo.config import ModelConfig
    from grpo.modeling import load_policy
    from grpo.train.checkpoint import restore_policy_weights

    other = tmp_path / "wider"
    build_tiny_model(other, hidden=96)
    policy = load_policy(ModelConfig(path=str(tiny_model_dir)), tiny_model_dir, torch.device("cpu"))
    with pytest.raises(UserError) as info:
        restore_policy_weights(policy, other)
    assert f"checkpoint {other}: its weights do not fit the model being trained" in str(info.value)
    assert "model.path the checkpoint was trained from" in str(info.value)
