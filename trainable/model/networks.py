"""CropNet: a timm backbone (features only) plus the recipe's heads.

- baseline:  Dropout -> Linear(feat, 61)
- multitask: the same plus crop Linear(feat, 10) and severity Linear(feat, 3) on the same
             dropped-out features
- fewshot:   Linear(feat, hidden) -> ReLU -> Dropout -> Linear(hidden, 61)

Optional late-stage heads are built at construction (so the optimizer groups, EMA and
checkpoints never change shape mid-run) and switched on later:
- cosine classifier: replaces the *final* Linear of the 61-class classifier on that
  layer's input. For baseline/multitask that is the (dropped-out) backbone features; for
  fewshot it is the MLP's hidden activation, so the warm start from the final layer's rows
  is exact in dimension and the MLP keeps its capacity (a cosine probe straight on frozen
  features would throw the trained MLP away at the switch).
- center loss: ``model.center_loss`` (a CenterLoss module) on the backbone features.
"""

from __future__ import annotations

import os
import re
import threading
from types import SimpleNamespace
from urllib.parse import urlparse
from urllib.request import Request, urlopen

import timm
import torch
import torch.nn.functional as F
from timm.models import group_parameters
from torch import nn

from trainable.config import weights_file
from trainable.data.taxonomy import NUM_CROPS, SEVERITIES
from trainable.errors import UserError
from trainable.model.losses import CenterLoss

STAGES = ("head", "partial", "full")


class CosineClassifier(nn.Module):
    """``scale * cos(f, w_c)``: L2-normalised features and class weights, no bias."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 30.0):
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.randn(num_classes, in_features) * 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))


def _sync_cosine_flag(module: CropNet, incompatible_keys) -> None:
    # load_state_dict post-hook: the buffer is the persisted truth, the bool is its mirror.
    module._cosine_on = bool(module.cosine_flag)


class CropNet(nn.Module):
    def __init__(self, backbone: nn.Module, feat_dim: int, *, model_type: str, num_classes: int,
                 dropout: float, fewshot_hidden: int = 512, fewshot_dropout: float = 0.5,
                 use_cosine: bool = False, use_center_loss: bool = False):
        super().__init__()
        self.backbone = backbone
        self.feat_dim = feat_dim
        self.model_type = model_type
        self.num_classes = num_classes
        if model_type == "fewshot":
            self.dropout = nn.Identity()
            self.classifier = nn.Sequential(
                nn.Linear(feat_dim, fewshot_hidden), nn.ReLU(inplace=True),
                nn.Dropout(fewshot_dropout), nn.Linear(fewshot_hidden, num_classes))
            cosine_in = fewshot_hidden
        else:
            self.dropout = nn.Dropout(dropout)
            self.classifier = nn.Linear(feat_dim, num_classes)
            cosine_in = feat_dim
        if model_type == "multitask":
            self.crop_head = nn.Linear(feat_dim, NUM_CROPS)
            self.severity_head = nn.Linear(feat_dim, len(SEVERITIES))
        self.cosine_head = CosineClassifier(cosine_in, num_classes) if use_cosine else None
        self.center_loss = CenterLoss(num_classes, feat_dim) if use_center_loss else None
        # A buffer so the switch is in state_dict (and copied into the EMA); forward reads
        # the Python mirror to avoid a device->host sync on every batch.
        self.register_buffer("cosine_flag", torch.zeros((), dtype=torch.bool))
        self._cosine_on = False
        self.register_load_state_dict_post_hook(_sync_cosine_flag)
        self._groups = _backbone_groups(backbone)
        self.stage = "full"
        self._frozen_norms: list[nn.Module] = []

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        dropped = self.dropout(features)
        if self.model_type == "fewshot":
            hidden = self.classifier[2](self.classifier[1](self.classifier[0](dropped)))
            final, final_in = self.classifier[3], hidden
        else:
            final, final_in = self.classifier, dropped
        logits = self.cosine_head(final_in) if self._cosine_on else final(final_in)
        out = {"logits": logits, "features": features}
        if self.model_type == "multitask":
            out["crop_logits"] = self.crop_head(dropped)
            out["severity_logits"] = self.severity_head(dropped)
        return out

    # ------------------------------------------------------------------ cosine head
    @property
    def cosine_active(self) -> bool:
        return self._cosine_on

    @torch.no_grad()
    def activate_cosine(self) -> None:
        """Switch the logits to the cosine head, warm-started from the normalised rows of
        the classifier's final Linear (so accuracy does not restart from chance). Idempotent:
        a second call (or a call after loading an active state) changes nothing."""
        if self.cosine_head is None:
            raise RuntimeError("activate_cosine(): model was built without use_cosine_classifier")
        if self._cosine_on:
            return
        final = self.classifier[3] if self.model_type == "fewshot" else self.classifier
        self.cosine_head.weight.copy_(F.normalize(final.weight, dim=1))
        self.cosine_flag.fill_(True)
        self._cosine_on = True

    # ------------------------------------------------------------------ stages
    def _group_of(self, name: str) -> str:
        if not name.startswith("backbone."):
            return "head"
        return "backbone_last" if name[len("backbone."):] in self._groups["last"] else "backbone_rest"

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Disjoint lists covering every parameter: "head" (classifier, aux heads, cosine
        head, center-loss centers), "backbone_last" (the backbone's last block by timm's
        coarse group matcher, plus a trailing head/norm-only group) and "backbone_rest"."""
        groups: dict[str, list[nn.Parameter]] = {"head": [], "backbone_last": [], "backbone_rest": []}
        for name, param in self.named_parameters():
            groups[self._group_of(name)].append(param)
        return groups

    def set_stage(self, stage: str) -> None:
        """head: only head parameters train; partial: + backbone_last; full: everything.
        Norm layers with running statistics in the frozen part stay in eval mode under
        ``train()`` so their statistics do not drift while their weights are frozen."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        trainable = {"head": {"head"}, "partial": {"head", "backbone_last"},
                     "full": {"head", "backbone_last", "backbone_rest"}}[stage]
        for name, param in self.named_parameters():
            param.requires_grad_(self._group_of(name) in trainable)
        self.stage = stage
        self._frozen_norms = []
        for name, module in self.backbone.named_modules():
            if getattr(module, "track_running_stats", False) and getattr(module, "running_mean", None) is not None:
                in_last = f"{name}.running_mean" in self._groups["last"]
                if stage == "head" or (stage == "partial" and not in_last):
                    self._frozen_norms.append(module)
        self.train(self.training)

    def train(self, mode: bool = True) -> CropNet:
        super().train(mode)
        if mode:
            for module in self._frozen_norms:
                module.eval()
        return self


# ---------------------------------------------------------------------- backbone groups
def _backbone_groups(backbone: nn.Module) -> dict[str, set[str]]:
    """Names (parameters and buffers, relative to the backbone) of its last block.

    timm's coarse group matcher orders the backbone into stem, blocks..., and puts layers no
    pattern matches (the pre-pool head conv of MobileNetV3, ConvNeXt's head.norm) in a final
    group of their own. Such a group is not a block: it is folded into the last block, as
    timm itself does for ViT's final norm, since it sits after that block in the forward
    pass. Models without a group matcher fall back to their last top-level child.
    """
    names = [n for n, _ in backbone.named_parameters()] + [n for n, _ in backbone.named_buffers()]
    try:
        matcher = backbone.group_matcher(coarse=True)
        # group_parameters only reads named_parameters(); hand it buffers too, so that
        # affine-free norm layers (running stats, no weights) are placed as well.
        both = SimpleNamespace(named_parameters=lambda: ((n, n) for n in names))
        layer_of = group_parameters(both, matcher, reverse=True)
    except (AttributeError, NotImplementedError):
        matcher = None
        children = [c for c, m in backbone.named_children() if any(True for _ in m.parameters())]
        layer_of = {n: children.index(n.split(".")[0]) if n.split(".")[0] in children else 0 for n in names}
    by_layer: dict[int, list[str]] = {}
    for name, layer in layer_of.items():
        by_layer.setdefault(layer, []).append(name)
    layers = sorted(by_layer)
    chosen = [layers[-1]]
    if matcher is not None and len(layers) > 1 and all(_unmatched(n, matcher) for n in by_layer[layers[-1]]):
        chosen.append(layers[-2])
    return {"last": {n for layer in chosen for n in by_layer[layer]}}


def _unmatched(name: str, matcher) -> bool:
    """True when no pattern of a timm group matcher claims ``name`` (timm gives it ordinal inf)."""
    if callable(matcher):
        ordinal = matcher(name)
        first = ordinal[0] if isinstance(ordinal, (tuple, list)) else ordinal
        return first == float("inf")
    for spec in matcher.values():
        if spec is None:
            continue
        patterns = [s[0] for s in spec] if isinstance(spec, (tuple, list)) else [spec]
        if any(re.match(p, name) for p in patterns):
            return False
    return True


# ---------------------------------------------------------------------- factory
def build_model(cfg, num_classes: int = 61) -> CropNet:
    """The CropNet of ``cfg`` (model_type, backbone, pretrained/pretrained_path, dropout,
    fewshot_hidden/fewshot_dropout, use_cosine_classifier, use_center_loss), in stage
    "full" (everything trainable) until the loop calls ``set_stage``."""
    backbone = _create_backbone(cfg.backbone)
    if cfg.pretrained and cfg.pretrained_path:
        _load_weights_file(backbone, cfg.backbone, cfg.pretrained_path)
    elif cfg.pretrained:
        backbone = _timm_pretrained(cfg.backbone, backbone)
    # With num_classes=0 timm returns pooled features of head_hidden_size (MobileNetV3 adds
    # a conv after pooling, so num_features alone would be wrong there).
    feat_dim = getattr(backbone, "head_hidden_size", None) or backbone.num_features
    return CropNet(
        backbone, feat_dim, model_type=cfg.model_type, num_classes=num_classes, dropout=cfg.dropout,
        fewshot_hidden=cfg.fewshot_hidden, fewshot_dropout=cfg.fewshot_dropout,
        use_cosine=cfg.use_cosine_classifier, use_center_loss=cfg.use_center_loss,
    )


# ---------------------------------------------------------------------- pretrained weights
_PROBE_TIMEOUT_S = 3.0
_NO_WEIGHTS_HINT = "pass --pretrained-path FILE (a local weights file) or --no-pretrained"


def _create_backbone(name: str, **kwargs) -> nn.Module:
    try:
        return timm.create_model(name, num_classes=0, **kwargs)
    except RuntimeError as exc:
        if str(exc).startswith("Unknown model"):
            raise UserError(f"unknown --backbone {name}: see timm.list_models()") from None
        raise


def _load_weights_file(backbone: nn.Module, name: str, path: str) -> None:
    """Load a local file into the backbone: a timm/torchvision state dict (.pth/.bin/
    .safetensors, optionally under "state_dict"/"model"), or a croptune checkpoint
    ("model_state_dict" with "backbone." keys). Classifier weights (keys the headless
    backbone lacks) are ignored; a missing or mis-shaped backbone weight is an error, since
    it means the file belongs to another architecture."""
    path = weights_file(path)
    if not os.path.isfile(path):
        raise UserError(f"--pretrained-path {path}: no such file")
    try:
        state = timm.models.load_state_dict(path, weights_only=True)  # or safetensors
    except Exception as exc:
        raise UserError(f"--pretrained-path {path}: not a readable weights file ({type(exc).__name__})") from None
    if not isinstance(state, dict):
        raise UserError(f"--pretrained-path {path}: holds no state dict")
    if isinstance(state.get("model_state_dict"), dict):
        state = state["model_state_dict"]
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    own = backbone.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or wrong:
        first = (missing + wrong)[0]
        raise UserError(f"--pretrained-path {path} does not fit --backbone {name}: {len(missing)} weight(s) "
                        f"missing, {len(wrong)} of another shape (first: {first})")
    backbone.load_state_dict({k: state[k] for k in own if k in state}, strict=False)


def _timm_pretrained(name: str, backbone: nn.Module) -> nn.Module:
    """timm's own weights from the local cache, else the network, else a UserError.

    Offline, huggingface_hub retries each candidate file for a long time before it gives up
    (bench/README.md), so: look in the caches first (HF hub cache, then the torch.hub cache of
    URL weights) and load that file; only when nothing is cached and the weights host answers a
    short probe is timm allowed to download."""
    cfg = dict(getattr(backbone, "pretrained_cfg", None) or {})
    if not (cfg.get("hf_hub_id") or cfg.get("url")):
        raise UserError(f"timm has no pretrained weights for --backbone {name}: {_NO_WEIGHTS_HINT}")
    cached = _cached_weights(cfg)
    try:
        if cached:
            return _create_backbone(name, pretrained=True, pretrained_cfg_overlay={"file": cached})
        if _weights_host_reachable(cfg):
            return _create_backbone(name, pretrained=True)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"could not load timm's pretrained weights for --backbone {name} "
                        f"({type(exc).__name__}): {_NO_WEIGHTS_HINT}") from None
    raise UserError(f"pretrained weights for --backbone {name} are not cached and the hub cannot be "
                    f"reached: {_NO_WEIGHTS_HINT}")


def _cached_weights(cfg: dict) -> str | None:
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = hub_id.partition("@")
        names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else ["model.safetensors", "pytorch_model.bin"]
        for filename in names:
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    url = cfg.get("url")
    if url:
        path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))
        if os.path.isfile(path):
            return path
    return None


def _weights_host_reachable(cfg: dict) -> bool:
    """True when a HEAD request for the hub repo (or the weights URL) answers < 400 within a
    few seconds. It runs in a daemon thread joined with a deadline, since DNS resolution has
    no timeout of its own. A bare TCP connect is not enough: intercepting proxies and
    sandboxes accept any connection. False in HF offline mode (HF_HUB_OFFLINE=1)."""
    from huggingface_hub import constants

    if cfg.get("hf_hub_id"):
        if constants.is_offline_mode():
            return False
        url = f"{constants.ENDPOINT}/api/models/{cfg['hf_hub_id'].partition('@')[0]}"
    else:
        url = cfg["url"]
    result: list[bool] = []

    def probe() -> None:
        try:
            with urlopen(Request(url, method="HEAD"), timeout=_PROBE_TIMEOUT_S) as response:
                result.append(response.status < 400)
        except (OSError, ValueError):  # URLError, HTTPError, timeouts, TLS errors are OSErrors
            result.append(False)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(_PROBE_TIMEOUT_S + 2.0)
    return bool(result and result[0])
