import os

# Before anything imports huggingface_hub (open_clip would wait ~46 s for the network otherwise).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["DVC_NO_ANALYTICS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def micro_visual():
    """A 2-layer open_clip ViT (our mf-vit-micro), random init."""
    from mergeflow.models import create_model

    return create_model("mf-vit-micro", None, seed=0).visual


@pytest.fixture(scope="session")
def micro_state(micro_visual):
    return {k: v.clone() for k, v in micro_visual.state_dict().items()}


def perturbed(state, seed, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
            for k, v in state.items()}
