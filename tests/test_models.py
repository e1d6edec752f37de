"""Loading: local folders through the real transformers path, clear errors when weights are missing."""

from __future__ import annotations

import pytest
import torch

from bridge.engine import Engine, GenerationSpec
from bridge.engine.decoding import Sampling
from bridge.engine.models import build_random, load_model, pick_device, pick_dtype
from bridge.errors import ModelError


def _save_tiny_checkpoint(folder):
    """A tiny-random checkpoint saved as a real one: weights, config and a Hugging Face tokenizer."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    model, _ = build_random("tiny-random")
    model.save_pretrained(folder)
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(["dusty", "lofi", "keys"])}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>")
    tokenizer.save_pretrained(folder)
    return model


def test_local_folder_loads_through_transformers(tmp_path):
    original = _save_tiny_checkpoint(tmp_path / "ckpt")
    loaded = load_model(str(tmp_path / "ckpt"))
    assert loaded.num_codebooks == 4 and loaded.sample_rate == 32000 and not loaded.is_melody
    for name, tensor in original.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    codes = Engine(loaded).generate_codes(GenerationSpec(prompt="dusty lofi keys", frames=10,
                                                         sampling=Sampling(greedy=True)))
    assert codes.shape == (1, 4, 10)


def test_offline_hub_id_names_the_ways_out(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as info:
        load_model("facebook/musicgen-small")
    message = info.value.message
    assert "facebook/musicgen-small" in message and "local folder" in message and "tiny-random" in message


def test_folder_without_a_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="tiny-random"):
        load_model(str(tmp_path / "empty"))


def test_unknown_builtin_lists_the_builtins():
    with pytest.raises(ModelError, match="small-arch-random"):
        load_model("tiny-randomm")


def test_device_and_precision_choices():
    assert pick_device("cpu").type == "cpu"
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cuda")) == torch.float16
    with pytest.raises(ModelError, match="unknown device"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no CUDA GPU"):
            pick_device("cuda")
    with pytest.raises(ModelError, match="precision"):
        pick_dtype(torch.device("cpu"), "fp8")
