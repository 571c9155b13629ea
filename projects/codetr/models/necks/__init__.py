from .sfp import SFP

__all__ = ['SFP']
