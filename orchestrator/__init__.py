"""Attention sweep orchestrator: Hydra grid -> Ray cells, one GPU each -> one parquet dataset."""
