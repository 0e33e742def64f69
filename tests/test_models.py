"""The runtime's model entries (no torch) agree with the reference models they describe."""

from __future__ import annotations

import pytest
import torch

from heke_ref.checkpoint import demo_weights
from heke_ref.registry import BUILDERS, create_model
from heke_runtime.errors import UnknownModelError
from heke_runtime.models import MODELS, POOLINGS, model_entry
from heke_runtime.regressor import RegressorError, stage_channels
from heke_runtime.spec import default_spec


def test_every_entry_has_torch_builders_and_no_more():
    assert set(MODELS) == set(BUILDERS) == {"r2p1d_HEKE_4", "resnet_HEKE_4"}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("tiny", [True, False], ids=["tiny", "full"])
def test_feature_stages_match_the_reference_model(name, tiny):
    entry, model = model_entry(name), create_model(name, tiny=tiny)
    widths = tuple(size // len(POOLINGS) for size in model.feature_sizes)
    assert len(widths) == len(entry.stages)
    assert entry.stage_channels(sum(model.feature_sizes)) == widths
    if not tiny:
        assert entry.feature_dim == sum(model.feature_sizes)
    for backbone in entry.backbones:
        assert isinstance(getattr(model, backbone), torch.nn.Module)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_inputs_run_the_reference_model_and_give_the_output_dims(name):
    entry = model_entry(name)
    model = create_model(name, tiny=True)
    shape = entry.input_shape(2, 32, 48)
    assert shape[0] == 2 and shape[-2:] == (32, 48)
    with torch.no_grad():
        out = model(*(torch.zeros(shape) for _ in entry.inputs))
    dims = entry.output_dims(out.features.shape[1])
    assert list(out.heads.shape) == [2, dims["heads"][1]] == [2, len(entry.heads)]
    assert list(out.features.shape) == [2, dims["features"][1]]
    assert all(d[0] == "B" for d in entry.input_dims().values())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_checkpoint_prefix_recognises_only_its_model(name):
    keys = demo_weights(name, tiny=True).state_dict
    for other in MODELS.values():
        owns = any(k.startswith(other.checkpoint_prefix) for k in keys)
        assert owns == (other.name == name), (name, other.name)


def test_spec_follows_the_entry_and_unknown_names_are_listed():
    for name, entry in MODELS.items():
        spec = default_spec(name)
        assert (spec.num_snippets, spec.frames_per_snippet) == (
            entry.num_snippets,
            entry.frames_per_snippet,
        )
    with pytest.raises(UnknownModelError, match="valid models: r2p1d_HEKE_4, resnet_HEKE_4"):
        model_entry("r3d_HEKE_4")
    with pytest.raises(RegressorError, match="do not split into stages"):
        stage_channels("r2p1d_HEKE_4", 2881)
