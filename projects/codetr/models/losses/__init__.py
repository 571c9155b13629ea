from .bar_loss import BARLoss, generate_block_target

__all__ = ['BARLoss', 'generate_block_target']
