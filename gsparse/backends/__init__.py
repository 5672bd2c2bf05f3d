"""Where the weights live: plain PyTorch (here) or a DeepSpeed ZeRO engine."""
from gsparse.backends.base import Backend
from gsparse.backends.pytorch import TorchBackend

__all__ = ["Backend", "TorchBackend"]
