from .backbone import VGG16, build_vgg16_backbone, convert_torchvision_vgg16
from .box_head import VGG16FCHead
from .roi_heads import VRDROIHeads
from .meta_arch import VRDRCNN
