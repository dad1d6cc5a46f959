"""Online learning: reward joining, River segments and context features."""
