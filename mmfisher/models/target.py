"""Which module of a runner's model is pruned: the one function tracing, masks, fingerprints and export use."""
from torch import nn

__all__ = ['pruned_module', 'unwrap', 'STUDENT_ATTR']

STUDENT_ATTR = 'student'  # a model holding a ``student`` and a ``teacher`` (distillation) prunes the student


def unwrap(model: nn.Module) -> nn.Module:
    """``model`` without DDP / DataParallel / registered mmengine model wrappers."""
    from mmengine.model import is_model_wrapper
    while is_model_wrapper(model) or isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def pruned_module(model: nn.Module) -> nn.Module:
    """The module that is traced, masked, fingerprinted and exported for ``model``.

    DDP / ``MMDistributedDataParallel`` / other registered mmengine model wrappers are unwrapped; a model with a
    ``student`` and a ``teacher`` module (a distillation wrapper such as label-free pruning's) gives its student
    (unwrapped in turn). Anything else is returned as it is.
    """
    model = unwrap(model)
    student = getattr(model, STUDENT_ATTR, None)
    if isinstance(student, nn.Module) and isinstance(getattr(model, 'teacher', None), nn.Module):
        return pruned_module(student)
    return model
