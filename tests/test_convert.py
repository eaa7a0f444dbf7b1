"""`megatron-elo convert`: HF -> sharded Megatron -> HF is bit-exact; bad input is refused cleanly."""

from __future__ import annotations

import pytest
import torch

from megatron_elo.cli import EXIT_BAD_CONFIG, main
from megatron_elo.config.schema import ArchConfig
from megatron_elo.models.hf_io import load_hf_state_dict
from megatron_elo.models.tiny import make_tiny_hf_model

ARCH = ArchConfig(family="qwen2", num_layers=4, hidden_size=64, ffn_hidden_size=96, num_attention_heads=2, num_kv_heads=2,
                  head_dim=32, vocab_size=90, max_position_embeddings=64)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return make_tiny_hf_model(ARCH, tmp_path_factory.mktemp("conv") / "hf", seed=5)


def test_hf_to_megatron_to_hf_is_bit_exact(hf_dir, tmp_path, capsys):
    assert main(["convert", "--from", "hf", "--to", "megatron", str(hf_dir), str(tmp_path / "mg"), "--tp", "2", "--pp", "2",
                 "--pad-vocab-to-multiple-of", "16"]) == 0
    assert sorted(p.name for p in (tmp_path / "mg").iterdir()) == [
        "meta.json", "model_tp0_pp0.pt", "model_tp0_pp1.pt", "model_tp1_pp0.pt", "model_tp1_pp1.pt"]
    shard = torch.load(tmp_path / "mg" / "model_tp1_pp1.pt")["model"]
    assert shard["output_layer.weight"].shape == (48, 64)  # 90 padded to 96, split over 2
    assert main(["convert", "--from", "megatron", "--to", "hf", str(tmp_path / "mg"), str(tmp_path / "back")]) == 0
    original, back = load_hf_state_dict(hf_dir), load_hf_state_dict(tmp_path / "back")
    assert original.keys() == back.keys() and all(torch.equal(original[k], back[k]) for k in original)
    transformers = pytest.importorskip("transformers")
    transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "back"))
    assert "wrote" in capsys.readouterr().out


def test_convert_refuses_bad_input_and_writes_nothing(hf_dir, tmp_path, capsys):
    assert main(["convert", "--from", "hf", "--to", "megatron", str(hf_dir), str(tmp_path / "x"), "--tp", "4"]) == EXIT_BAD_CONFIG
    assert "do not divide heads=2" in capsys.readouterr().err and not (tmp_path / "x").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert main(["convert", "--from", "hf", "--to", "megatron", str(hf_dir), str(tmp_path / "full")]) == EXIT_BAD_CONFIG
    assert "is not empty" in capsys.readouterr().err and (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert main(["convert", "--from", "megatron", "--to", "hf", str(tmp_path / "nowhere"), str(tmp_path / "y")]) == EXIT_BAD_CONFIG
    assert "no meta.json" in capsys.readouterr().err
    assert main(["convert", "--from", "hf", "--to", "hf", str(hf_dir), str(tmp_path / "z")]) == EXIT_BAD_CONFIG
