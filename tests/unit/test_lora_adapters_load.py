"""Loading a stored adapter (an adapter-cache miss): the cached layers take it without PEFT's model walk,
it answers exactly as the adapter it was exported from, and a broken one leaves nothing behind."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from soma.algo import config
from soma.algo.lora_train import SessionAdapters
from soma.models.chat_backend import TransformersChatBackend
from soma.models.testing import build_tiny_chat_model

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
IDS = torch.tensor([[5, 6, 7, 8, 9]])


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "chat")


def _adapters(model_path, targets=None) -> SessionAdapters:
    cfg = config.preset("tiny").lora
    if targets:
        cfg = cfg.model_copy(update={"target_modules": targets})
    return SessionAdapters(TransformersChatBackend(str(model_path), name="tiny").model, cfg)


def _exported(adapters: SessionAdapters, name: str = "src") -> tuple[bytes, bytes]:
    """A non-trivial adapter (B != 0, so it changes the answers), exported as the store keeps it."""
    adapters.new(name, _wrapped_cfg(adapters))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in adapters.trainable(name):
            p.normal_(0, 0.5)
    return adapters.export(name)


def _wrapped_cfg(adapters: SessionAdapters):
    """The LoRA settings of the layers `adapters` wraps."""
    targets = sorted(adapters.peft.peft_config["soma-idle"].target_modules)
    return config.preset("tiny").lora.model_copy(update={"target_modules": targets})


def _logits(adapters: SessionAdapters, name: str | None) -> torch.Tensor:
    with torch.no_grad(), adapters.using(name) as model:
        return model(input_ids=IDS).logits


def test_a_loaded_adapter_answers_as_the_exported_one_without_peft_add_adapter(model_path, monkeypatch):
    adapters = _adapters(model_path)
    weights, cfg = _exported(adapters)

    def walk(*args, **kwargs):
        raise AssertionError("load walked the model through PEFT's add_adapter")

    monkeypatch.setattr(adapters.peft, "add_adapter", walk)
    adapters.load("copy", weights, cfg)
    assert "copy" in adapters.names
    assert torch.allclose(_logits(adapters, "copy"), _logits(adapters, "src"))
    assert not torch.allclose(_logits(adapters, "copy"), _logits(adapters, None))
    assert adapters.state_dict("copy").keys() == adapters.state_dict("src").keys()
    adapters.load("copy", weights, cfg)  # loading the same name again replaces it
    assert torch.allclose(_logits(adapters, "copy"), _logits(adapters, "src"))
    adapters.delete("copy")
    assert "copy" not in adapters.names and "copy" not in adapters.peft.peft_config


def test_an_attention_only_adapter_loads_into_layers_that_wrap_all_seven(model_path, monkeypatch):
    source = _adapters(model_path, ATTENTION)
    weights, cfg = _exported(source)
    adapters = _adapters(model_path)  # the default: all seven projections wrapped
    monkeypatch.setattr(adapters.peft, "add_adapter", lambda *a, **k: pytest.fail("took PEFT's path"))
    adapters.load("attn", weights, cfg)
    assert torch.allclose(_logits(adapters, "attn"), _logits(source, "src"), atol=1e-6)
    mlp = [m for n, m in adapters.peft.named_modules() if n.endswith("gate_proj") and hasattr(m, "lora_A")]
    assert mlp and all("attn" not in m.lora_A for m in mlp)


def test_an_adapter_for_modules_no_cached_layer_wraps_takes_peft_s_path(model_path):
    source = _adapters(model_path)  # all seven
    weights, cfg = _exported(source)
    adapters = _adapters(model_path, ATTENTION)  # wraps attention only
    adapters.load("all", weights, cfg)
    assert torch.allclose(_logits(adapters, "all"), _logits(source, "src"), atol=1e-6)
    assert "all" in adapters.names


def test_an_older_peft_without_update_layer_config_takes_peft_s_path(model_path, monkeypatch):
    """PEFT before 0.21 has no `update_layer(..., config=)`; pyproject allows it, so load must still work."""
    from peft.tuners.lora import layer as lora_layer

    def old_update_layer(self, adapter_name, r, lora_alpha, lora_dropout, init_lora_weights, use_rslora, **kw):
        raise AssertionError("the direct path called update_layer")

    adapters = _adapters(model_path)
    weights, cfg = _exported(adapters)
    assert adapters._direct_load is True
    monkeypatch.setattr(lora_layer.Linear, "update_layer", old_update_layer)
    adapters._refresh_layers()  # what a SessionAdapters built on such a PEFT finds
    monkeypatch.undo()  # PEFT's own path (add_adapter) needs the real method
    assert adapters._direct_load is False
    monkeypatch.setattr(adapters, "_add_to_layers", lambda *a, **k: pytest.fail("direct path on an older PEFT"))
    adapters.load("copy", weights, cfg)
    assert torch.allclose(_logits(adapters, "copy"), _logits(adapters, "src"))


@pytest.mark.parametrize("path", ["direct", "peft"])
@pytest.mark.parametrize("damage", ["missing", "wrong_shape", "rank"])
def test_a_broken_adapter_is_refused_and_leaves_nothing_behind(model_path, damage, path):
    adapters = _adapters(model_path)
    weights, cfg = _exported(adapters)
    adapters._direct_load = path == "direct"
    if damage == "rank":  # tensors of rank 4 under a config that says 8: alpha / r would be wrong
        raw = json.loads(cfg)
        cfg = json.dumps({**raw, "r": raw["r"] * 2}).encode()
    state = safetensors_load(weights)
    key = next(k for k in state if k.endswith("lora_B.weight"))
    if damage == "missing":
        del state[key]
    elif damage == "wrong_shape":
        state[key] = torch.zeros(state[key].shape[0] + 1, state[key].shape[1])
    base, src = _logits(adapters, None), _logits(adapters, "src")
    with pytest.raises(RuntimeError, match="missing|size|shape|rank"):
        adapters.load("bad", safetensors_save(state), cfg)
    assert "bad" not in adapters.names and "bad" not in adapters.peft.peft_config
    assert all("bad" not in m.lora_A and "bad" not in m.lora_B for m in adapters._lora_layers)
    assert torch.allclose(_logits(adapters, None), base)
    assert torch.allclose(_logits(adapters, "src"), src)  # the resident adapter is untouched
    adapters.load("good", *adapters.export("src"))  # the name is free for a sound adapter afterwards
    assert torch.allclose(_logits(adapters, "good"), _logits(adapters, "src"))
