"""The offline demo: synthetic leaf images (dataset, leaves) and its pretrained backbone (pretrain)."""
