from .optim_wrapper import FiniteCheckOptimWrapper

__all__ = ['FiniteCheckOptimWrapper']
