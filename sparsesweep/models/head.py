"""model.head: which input head (stem) a model gets for the data's resolution."""
from sparsesweep.errors import ConfigError

# head: auto picks the ImageNet head from this input size up (ImageNet's 224 px) and the small-input head below
# it (CIFAR's 32, Tiny-ImageNet's 64 px).
IMAGENET_HEAD_MIN_RESOLUTION = 128


def resolve_head(head: str, resolution: int | None) -> str:
    """'cifar' or 'imagenet' for model.head (auto | cifar | imagenet); resolution: the input's side (None: small)."""
    if head == "auto":
        return "imagenet" if resolution is not None and resolution >= IMAGENET_HEAD_MIN_RESOLUTION else "cifar"
    if head not in ("cifar", "imagenet"):
        raise ConfigError(f"model.head must be auto, cifar or imagenet, got '{head}'")
    return head
