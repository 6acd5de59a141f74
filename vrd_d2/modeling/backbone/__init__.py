from .vgg import VGG16, build_vgg16_backbone, convert_torchvision_vgg16

__all__ = ["VGG16", "build_vgg16_backbone", "convert_torchvision_vgg16"]
