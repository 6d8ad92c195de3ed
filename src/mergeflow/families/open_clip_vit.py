"""open_clip ``VisionTransformer``: the image encoders of the vision suites (algorithms.md §1).

``attn.in_proj_weight`` packs q, k and v (three row blocks reading one input); ``proj`` is stored
input-major and ``conv1`` is a linear map on unfolded patches, both linear units only when a method lists
them. Statistics are keyed by the weight's own name. Parameters of other open_clip ViT variants (layer-scale
gammas, attention pooling) are ``other``: every method's fallback rule, as before this adapter existed.
"""

from __future__ import annotations

from mergeflow.families import Family, Rule, register_family


def _statistics(visual, batches, **options):
    from mergeflow.features.collect import collect_stats

    return collect_stats(visual, batches, **options)


def _build(config):
    from mergeflow.models.factory import create_model

    return create_model(config).visual


def _load(folder):
    from mergeflow.models.factory import load_base

    return load_base(folder)[0].visual


RULES = (
    Rule(r"(^|\.)attn\.in_proj_weight$", "linear", site_is_key=True, blocks=3),
    Rule(r"(attn\.out_proj|mlp\.c_fc|mlp\.c_proj)\.weight$", "linear", site_is_key=True),
    Rule(r"conv1\.weight$", "linear", site_is_key=True, option="conv1"),
    Rule(r"(^|\.)proj$", "linear", site_is_key=True, input_major=True, option="proj"),
    Rule(r"(^|\.)(ln_pre|ln_post|ln_1|ln_2)\.weight$", "scale", site_is_key=True),
    Rule(r"(\.bias$|^bias$|in_proj_bias$|(^|\.)class_embedding$)", "shift"),
    Rule(r"(^|\.)positional_embedding$", "other"),
    Rule(r".", "other"),
)

OPEN_CLIP = register_family(Family(
    "open_clip", "open_clip VisionTransformer image encoders (ViT-B/32, ViT-L/14, the mf-vit-* bases)", RULES,
    statistics=_statistics, build=_build, load=_load))
