"""Image classification (digits, CIFAR-10/100, ImageNet) with gsparse's own CNNs (ResNet-50,
CIFAR ResNet-50 and VGG-19, a small ResNet), on the generic runner."""
from gsparse.tasks.vision.train import VisionConfig, train_image_classifier

__all__ = ["VisionConfig", "train_image_classifier"]
