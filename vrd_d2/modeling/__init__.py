from .backbone import VGG16, build_vgg16_backbone, convert_torchvision_vgg16
from .box_head import VGG16FCHead
from .meta_arch import VRDRCNN
from .relation_predictor import RELATION_PREDICTOR_REGISTRY, CPRelationPredictor, build_relation_predictor
from .roi_heads import VRDROIHeads
