"""The model side: networks (timm backbones + heads), losses, the per-batch objective, EMA, serving."""
