"""Attention sweep orchestrator: Hydra grid -> Ray cells, one GPU each -> one parquet dataset."""

import time

imported_at = time.time()  # when Python reached this package: where a command's clock starts if /proc cannot say
